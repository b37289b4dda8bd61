"""Named namespaces: nslib.named versus raw C, pyroute2 and `ip netns`.

    python -m benchmarks.bench_named [--quick]

Groups:
- "named create+delete": one create (handle closed) + delete per op, in the
  same loop shape for every implementation: nslib, the raw C sequence
  (``csrc/raw_named.c``, the limit), raw C redoing iproute2's run-dir setup
  on every create (info), pyroute2 ``netns.create``/``remove`` and
  ``ip netns add``/``del`` subprocesses.
- the scale run: 1,000 names; create and delete per operation, the median
  of the first 100 and of the last 100; ``list()`` and ``identify()`` per
  call with 100 names and with 1,000 names; nslib and raw C.
- the run-dir check each create makes: nslib's statmount probe versus
  repeating iproute2's locked setup, with 1,000 names mounted.

Fairness: a deleted namespace is torn down later by the kernel's
``cleanup_net`` worker, which competes for the same two cores.  Every batch
therefore starts only once the count of live namespaces (``net_namespace``
in /proc/slabinfo) has settled, the implementations take turns within each
round (rotating the order), and the median of the rounds is reported.
nslib, raw C and pyroute2 use private run directories; ``ip netns`` (which
has no run-dir option) uses /run/netns with unique names, removed after.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

from benchmarks._harness import Result, Target, main, per_op, run_c
from nslib import NsHandle, named
from nslib._procfs import read_mountinfo
from nslib.names import DEFAULT_RUN_DIR

PREFIX = f"nslb{os.getpid() % 100000}x"


def live_namespaces() -> int | None:
    """Network namespaces the kernel still holds, torn-down ones included."""
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                if line.startswith("net_namespace "):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


_unsettled = 0


def settle(timeout: float) -> None:
    """Wait until the kernel has finished tearing deleted namespaces down.

    "Finished" means the live count has not changed for 0.3 s; other work on
    the machine can keep it moving, hence the timeout (counted and reported).
    """
    global _unsettled
    if live_namespaces() is None:
        time.sleep(0.5)
        return
    deadline = time.monotonic() + timeout
    last, stable_since = live_namespaces(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = live_namespaces()
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= 0.3:
            return
    _unsettled += 1


def timed(fn: Callable[[], object], n: int) -> float:
    gc_was = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n
    finally:
        if gc_was:
            gc.enable()


# -- one batch of create+delete per implementation ---------------------------


def nslib_batch(run_dir: str, n: int) -> float:
    names = iter([f"c{i}" for i in range(n)])

    def op() -> None:
        name = next(names)
        named.create(name, run_dir=run_dir).close()
        named.delete(name, run_dir=run_dir)

    return timed(op, n)


def raw_batch(run_dir: str, n: int) -> float:
    return run_c("raw_named", "cycle", run_dir, str(n))["cycle"]


def raw_dance_batch(run_dir: str, n: int) -> float:
    return run_c("raw_named", "dance", run_dir, str(n))["cycle_dance"]


def pyroute2_batch(run_dir: str, n: int) -> float:
    from pyroute2 import netns as pr2

    names = iter([os.path.join(run_dir, f"c{i}") for i in range(n)])

    def op() -> None:
        path = next(names)  # a name with a '/' is a path to pyroute2
        pr2.create(path)
        pr2.remove(path)

    return timed(op, n)


def ip_batch(n: int) -> float:
    names = iter([f"{PREFIX}{i}" for i in range(n)])

    def op() -> None:
        name = next(names)
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "netns", "del", name], check=True)

    return timed(op, n)


# -- the scale run ---------------------------------------------------------------


def nslib_scale(run_dir: str, n: int) -> dict[str, float]:
    out: dict[str, float] = {}

    def identify_first(h: NsHandle | None) -> None:
        assert h is not None
        assert len(named.identify(h, run_dir=run_dir)) == 1

    create_t: list[float] = []
    names = [f"s{i:05d}" for i in range(n)]
    first = None
    try:
        for i, name in enumerate(names):
            t0 = time.perf_counter()
            h = named.create(name, run_dir=run_dir)
            create_t.append(time.perf_counter() - t0)
            if first is None:
                first = h
            else:
                h.close()
            if i in (99, n - 1):
                suffix = "100" if i == 99 else "last"
                out[f"list_{suffix}"] = timed(lambda: named.list(run_dir=run_dir), 20)
                out[f"identify_{suffix}"] = timed(functools.partial(identify_first, first), 20)
        # With every name mounted: the check each create() makes, versus
        # redoing iproute2's locked setup (what `ip netns add` does).
        out["probe"] = per_op(lambda: named._ensure_run_dir(run_dir), number=200, repeat=5)
        out["dance"] = per_op(lambda: named._prepare_run_dir(run_dir), number=200, repeat=5)
    finally:
        if first is not None:
            first.close()
        delete_t: list[float] = []
        for name in names:
            t0 = time.perf_counter()
            with contextlib.suppress(FileNotFoundError):
                named.delete(name, run_dir=run_dir)
            delete_t.append(time.perf_counter() - t0)
    # Medians: robust to the odd operation preempted on a shared machine.
    out["create_first100"] = statistics.median(create_t[:100])
    out["create_last100"] = statistics.median(create_t[-100:])
    out["delete_first100"] = statistics.median(delete_t[:100])
    out["delete_last100"] = statistics.median(delete_t[-100:])
    return out


# -- the run -------------------------------------------------------------------------


def _cleanup(base: str) -> None:
    host = os.listdir(DEFAULT_RUN_DIR) if os.path.isdir(DEFAULT_RUN_DIR) else []
    for name in host:
        if name.startswith(PREFIX):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    raw = os.fsencode(base)
    points = {m.mount_point for m in read_mountinfo("/proc/self/mountinfo")}
    for point in sorted({p for p in points if p.startswith(raw)}, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    shutil.rmtree(base, ignore_errors=True)


def run(quick: bool) -> tuple[list[Result], list[Target]]:
    global _unsettled
    _unsettled = 0
    n, rounds, scale_n = (30, 3, 1000) if quick else (100, 5, 1000)
    wait, long_wait = (1.5, 6.0) if quick else (5.0, 20.0)
    base = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    dirs = {k: os.path.join(base, k, "netns") for k in ("nslib", "raw", "dance", "pr2", "scale")}
    for d in dirs.values():
        os.makedirs(os.path.dirname(d))
    batches: dict[str, Callable[[], float]] = {
        "nslib": lambda: nslib_batch(dirs["nslib"], n),
        "raw": lambda: raw_batch(dirs["raw"], n),
        "dance": lambda: raw_dance_batch(dirs["dance"], n),
        "pyroute2": lambda: pyroute2_batch(dirs["pr2"], n),
        "ip": lambda: ip_batch(n),
    }
    samples: dict[str, list[float]] = {k: [] for k in batches}
    try:
        # Warm up: first-time run-dir setup, imports, page cache.
        nslib_batch(dirs["nslib"], 3)
        raw_batch(dirs["raw"], 3)
        raw_dance_batch(dirs["dance"], 3)
        pyroute2_batch(dirs["pr2"], 3)
        ip_batch(3)
        order = list(batches)
        for r in range(rounds):
            for key in order[r % len(order) :] + order[: r % len(order)]:
                settle(wait)
                samples[key].append(batches[key]())
        settle(long_wait)
        scale_nslib = nslib_scale(dirs["scale"], scale_n)
        settle(long_wait)
        scale_raw = run_c("raw_named", "scale", dirs["raw"], str(scale_n))
        settle(long_wait)
    finally:
        _cleanup(base)

    med = {k: statistics.median(v) for k, v in samples.items()}
    g = "named create+delete"
    note = f"median of {rounds} rounds x {n}"
    if _unsettled:
        note += f"; teardown still running at {_unsettled} batch starts"
    results = [
        Result(g, "nslib.named create + delete", med["nslib"], "nslib", note),
        Result(g, "raw C, same syscalls", med["raw"], "limit", note),
        Result(g, "raw C, iproute2 run-dir setup on every create", med["dance"], "info", note),
        Result(g, "pyroute2 netns.create + remove", med["pyroute2"], "alt", note),
        Result(g, "ip netns add + del (subprocesses)", med["ip"], "alt", note),
    ]
    for key, label in (
        ("create_first100", f"create, first 100 of {scale_n}"),
        ("create_last100", f"create, last 100 of {scale_n}"),
        ("delete_first100", f"delete, first 100 (of {scale_n} names)"),
        ("delete_last100", f"delete, last 100 (of {scale_n} names)"),
        ("list_100", "list() at 100 names"),
        ("list_last", f"list() at {scale_n} names"),
        ("identify_100", "identify() at 100 names"),
        ("identify_last", f"identify() at {scale_n} names"),
    ):
        group = f"named scale: {label}"
        how = "median of those 100" if key.startswith(("create", "delete")) else "mean of 20"
        results.append(Result(group, "nslib.named", scale_nslib[key], "nslib", how))
        results.append(Result(group, "raw C", scale_raw[key], "limit", how))
    g2 = f"named run-dir check per create ({scale_n} names mounted)"
    results.append(Result(g2, "nslib: statx + statmount probe", scale_nslib["probe"], "nslib"))
    results.append(
        Result(g2, "iproute2's setup: flock + MS_SHARED|MS_REC", scale_nslib["dance"], "alt")
    )

    vs_raw = med["nslib"] / med["raw"]
    vs_pr2 = med["pyroute2"] / med["nslib"]
    vs_ip = med["ip"] / med["nslib"]
    grow = scale_nslib["create_last100"] / scale_nslib["create_first100"]
    grow_raw = scale_raw["create_last100"] / scale_raw["create_first100"]
    targets = [
        Target(g, "within 1.2x of the raw C sequence", vs_raw <= 1.2, f"{vs_raw:.2f}x"),
        Target(g, "at least 4x faster than pyroute2", vs_pr2 >= 4, f"{vs_pr2:.2f}x"),
        Target(g, "at least 2.5x faster than ip netns", vs_ip >= 2.5, f"{vs_ip:.2f}x"),
        Target(
            "named scale",
            "create: last-100 cost within 1.5x of first-100, or growing no faster "
            "than raw C's (10% noise allowance)",
            grow <= 1.5 or grow <= grow_raw * 1.1,
            f"nslib {grow:.2f}x, raw C {grow_raw:.2f}x",
        ),
    ]
    return results, targets


if __name__ == "__main__":
    main(run)
