"""Spawning a process inside a namespace: nslib.run versus the alternatives.

Two groups, each measured in one run with the implementations interleaved
round by round (so drift on a shared machine hits them all alike):

* ``spawn in netns (etc=False)``: join only the network namespace.  The
  floor is a plain ``subprocess.run(["true"])`` with no namespace at all;
  the alternatives are util-linux ``nsenter --net=...`` and pyroute2's
  ``NSPopen`` (which forks a helper process).
* ``spawn, ip netns exec semantics``: private mount namespace and a fresh
  ``/sys`` (and ``/etc/netns`` binds, none here).  The alternative is
  ``ip netns exec NAME true`` as a subprocess.

The named namespace is created by the benchmark under a unique name in
``/run/netns`` (``ip netns exec`` needs it there) and deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable

import nslib
from benchmarks._harness import Result, Target, main
from nslib import named

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


def run(quick: bool) -> tuple[list[Result], list[Target]]:
    # Many short rounds: on a shared machine a burst of load then spoils a
    # few rounds of every implementation rather than one implementation.
    number, repeat = (5, 8) if quick else (10, 30)
    name = f"nsbench{os.getpid()}-{uuid.uuid4().hex[:6]}"
    path = f"/run/netns/{name}"
    results: list[Result] = []
    targets: list[Target] = []
    with named.create(name) as h:
        try:
            ref = nslib.NetNamespace.named(name)

            def nslib_join() -> None:
                nslib.run(h, [TRUE], etc=False, check=True)

            def plain() -> None:
                subprocess.run([TRUE], check=True)

            def nsenter() -> None:
                subprocess.run(["nsenter", f"--net={path}", TRUE], check=True)

            impls: dict[str, Callable[[], object]] = {
                "nslib": nslib_join,
                "plain": plain,
                "nsenter": nsenter,
            }
            t = interleaved(impls, number=number, repeat=repeat)

            # pyroute2's NSPopen forks a helper per call: ~10x slower, so fewer runs.
            nspopen = _nspopen(name)
            if nspopen is not None:
                t.update(interleaved({"pyroute2": nspopen}, number=2, repeat=5))

            g = "spawn in netns (etc=False)"
            results += [
                Result(g, "nslib.run(ns, ['true'], etc=False)", t["nslib"], "nslib"),
                Result(
                    g, "subprocess.run(['true']) (no namespace)", t["plain"], "limit", "the floor"
                ),
                Result(g, "nsenter --net=PATH true", t["nsenter"]),
            ]
            if "pyroute2" in t:
                results.append(Result(g, "pyroute2 NSPopen(name, ['true'])", t["pyroute2"]))
            ratio = t["nslib"] / t["plain"]
            targets.append(
                Target(
                    g,
                    "within 1.3x of a plain subprocess.run(['true'])",
                    ratio <= 1.3,
                    f"{ratio:.2f}x the plain spawn",
                )
            )

            def nslib_exec() -> None:
                nslib.run(ref, [TRUE], check=True)

            def ip_exec() -> None:
                subprocess.run(["ip", "netns", "exec", name, TRUE], check=True)

            t = interleaved({"nslib": nslib_exec, "ip": ip_exec}, number=number, repeat=repeat)
            g = "spawn, ip netns exec semantics"
            results += [
                Result(g, "nslib.run(name, ['true'])", t["nslib"], "nslib"),
                Result(g, "ip netns exec NAME true", t["ip"]),
            ]
            ratio = t["ip"] / t["nslib"]
            targets.append(
                Target(
                    g,
                    "no slower than `ip netns exec NAME true`",
                    ratio >= 1.0,
                    f"ip netns exec takes {ratio:.2f}x nslib's time",
                )
            )
        finally:
            h.close()
            named.delete(name)
    return results, targets


def _nspopen(name: str) -> Callable[[], None] | None:
    try:
        from pyroute2 import NSPopen
    except ImportError:
        return None

    def spawn() -> None:
        p = NSPopen(name, [TRUE])
        try:
            p.wait()
        finally:
            p.release()

    try:
        spawn()
    except Exception:
        return None
    return spawn


if __name__ == "__main__":
    main(run)
