"""Every kind of namespace: spawning into all of a process's, and listing them all.

Two groups, implementations interleaved round by round (so drift on a
shared machine hits them all alike):

* ``spawn in all namespaces of a target``: ``nslib.spawn.run(Target(pid),
  ["true"])`` against ``nsenter -a -t PID true`` and a plain
  ``subprocess.run(["true"])`` with no namespace at all (the floor a
  Python caller can reach).  A small C program does it nsenter's way
  without nsenter's start-up: vfork, six setns from fds opened once, vfork
  again, exec, and the middle process waits for the last.  The target is
  ``unshare -fmuinpC --mount-proc sleep``.
* ``list every namespace of every kind``: ``nslib.lsns.namespaces()``
  (with bind mounts, fds, threads and nsids) against the ``lsns``
  command, and the same scan without the extras (what ``lsns`` looks at).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks._harness import Result, Target, main, run_c
from nslib import lsns
from nslib.kinds import Target as NsTarget
from nslib.spawn import run as spawn_run

TRUE = shutil.which("true") or "/bin/true"


def interleaved(
    impls: dict[str, Callable[[], object]], *, number: int, repeat: int
) -> dict[str, float]:
    """Median seconds per call of each impl; every round runs each impl *number* times."""
    for fn in impls.values():  # warm-up
        for _ in range(max(1, number // 10)):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in impls}
    for _ in range(repeat):
        for key, fn in impls.items():
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            samples[key].append((time.perf_counter() - t0) / number)
    return {k: statistics.median(v) for k, v in samples.items()}


def _target() -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [
            "unshare", "-fmuinpC", "--mount-proc", "--kill-child",
            "sh", "-c", "echo ok; exec >/dev/null; exec sleep 3600",
        ],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    with proc.stdout:
        if proc.stdout.readline() != b"ok\n":
            raise RuntimeError("the unshare target did not start")
    (child,) = (
        Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        .read_text(errors="surrogateescape")
        .split()
    )
    return proc, int(child)


def run(quick: bool) -> tuple[list[Result], list[Target]]:
    number, repeat = (5, 6) if quick else (10, 30)
    results: list[Result] = []
    targets: list[Target] = []
    proc, pid = _target()
    try:
        target = NsTarget(pid)

        def nslib_spawn() -> None:
            spawn_run(target, [TRUE], check=True)

        def nsenter() -> None:
            subprocess.run(["nsenter", "-a", "-t", str(pid), TRUE], check=True)

        def plain() -> None:
            subprocess.run([TRUE], check=True)

        t = interleaved(
            {"nslib": nslib_spawn, "nsenter": nsenter, "plain": plain},
            number=number,
            repeat=repeat,
        )
        raw = run_c("raw_spawn_all", str(pid), TRUE, str(number * 10), str(max(5, repeat // 3)))
        g = "spawn `true` in all namespaces of a target"
        results += [
            Result(g, "nslib.spawn.run(Target(pid), ['true'])", t["nslib"], "nslib"),
            Result(g, "C, nsenter's way without its start-up", raw["spawn"], "alt", "raw C"),
            Result(g, "nsenter -a -t PID true", t["nsenter"]),
            Result(g, "subprocess.run(['true']) (no namespace)", t["plain"], "limit", "the floor"),
        ]
        ratio = t["nsenter"] / t["nslib"]
        targets.append(
            Target(
                g,
                "faster than `nsenter -a -t PID true`",
                ratio > 1.0,
                f"nsenter takes {ratio:.2f}x nslib's time",
            )
        )
    finally:
        proc.kill()
        proc.wait()

    results += _switch_pairs(quick, targets)

    def nslib_all() -> None:
        lsns.namespaces()

    def nslib_bare() -> None:
        lsns.namespaces(mounts=False, fds=False, nsid=False)

    def lsns_cmd() -> None:
        # lsns exits 1 when a process vanishes under it; the time still counts.
        subprocess.run(["lsns"], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    n2, r2 = (3, 5) if quick else (5, 20)
    t = interleaved({"all": nslib_all, "bare": nslib_bare, "lsns": lsns_cmd}, number=n2, repeat=r2)
    count = len(lsns.namespaces())
    g = "list every namespace of every kind"
    results += [
        Result(g, f"nslib.lsns.namespaces() ({count} namespaces)", t["all"], "nslib"),
        Result(g, "the same, without mounts/fds/nsids", t["bare"], "info", "lsns's work"),
        Result(g, "lsns", t["lsns"]),
    ]
    ratio = t["lsns"] / t["all"]
    targets.append(
        Target(
            g,
            "no slower than `lsns`, while reporting more",
            ratio >= 1.0,
            f"lsns takes {ratio:.2f}x nslib's time",
        )
    )
    return results, targets


def _cpu_per_op(fn: Callable[[], object], number: int) -> float:
    """CPU seconds of the calling thread per call (raw_kinds measures the same)."""
    for _ in range(max(1, number // 10)):
        fn()
    t0 = time.thread_time_ns()
    for _ in range(number):
        fn()
    return (time.thread_time_ns() - t0) / number / 1e9


def _switch_pairs(quick: bool, targets: list[Target]) -> list[Result]:
    """``with entered(h): pass`` for UTS and MNT handles against the raw-C setns pairs.

    Both sides count the switching thread's CPU time, round by round: on a
    shared machine wall time mostly measures the wait for a core.
    """
    import threading

    import nslib

    proc, pid = _target()
    out: list[Result] = []
    try:
        n = 2000 if quick else 10000
        rounds = 5 if quick else 15
        # Round by round, C and Python alternately: load on a shared machine
        # then hits both alike.
        samples: dict[str, list[float]] = {
            k: [] for k in ("uts", "mnt", "mnt_cwd", "py_uts", "py_mnt")
        }
        handles = {k: nslib.NsHandle.from_pid(pid, kind=k) for k in ("uts", "mnt")}

        def body() -> None:
            # A thread of its own: the mount switch gives it its own cwd and root.
            pairs = {}
            for kind, h in handles.items():

                def pair(h: nslib.NsHandle = h) -> None:
                    with nslib.entered(h):
                        pass

                pairs[kind] = pair
            for _ in range(rounds):
                raw = run_c("raw_kinds", str(pid), str(n), "1")
                for key in ("uts", "mnt", "mnt_cwd"):
                    samples[key].append(raw[key])
                samples["py_uts"].append(_cpu_per_op(pairs["uts"], n))
                samples["py_mnt"].append(_cpu_per_op(pairs["mnt"], n // 2))

        t = threading.Thread(target=body)
        t.start()
        t.join()
        for h in handles.values():
            h.close()
        med = {k: statistics.median(v) for k, v in samples.items()}
        raw = {k: med[k] for k in ("uts", "mnt", "mnt_cwd")}
        got = {"uts": med["py_uts"], "mnt": med["py_mnt"]}
        for kind, limit in (("uts", raw["uts"]), ("mnt", raw["mnt"])):
            g = f"switch a thread into a {kind} namespace and back (entered)"
            out += [
                Result(g, f"with nslib.entered(NsHandle.from_pid(pid, kind='{kind}'))",
                       got[kind], "nslib"),
                Result(g, "C: setns(target) + setns(home)", limit, "limit", "raw C"),
            ]  # fmt: skip
            if kind == "mnt":
                out.append(
                    Result(g, "C: the same, root and cwd put back", raw["mnt_cwd"], "alt", "raw C")
                )
            ratio = got[kind] / limit
            targets.append(
                Target(g, "a pair within 1.5x of the raw C setns pair", ratio <= 1.5,
                       f"{ratio:.2f}x the raw C pair")
            )  # fmt: skip
        ratio = got["mnt"] / raw["mnt_cwd"]
        targets.append(
            Target(
                "switch a thread into a mnt namespace and back (entered)",
                "within 1.5x of the raw C pair that also puts root and cwd back",
                ratio <= 1.5,
                f"{ratio:.2f}x",
            )
        )
    finally:
        proc.kill()
        proc.wait()
    return out


if __name__ == "__main__":
    main(run)
