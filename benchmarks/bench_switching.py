"""Switching benchmark: nslib against raw C and the Python alternatives.

    python -m benchmarks.bench_switching [--quick]

Two groups, all measured in one run on the main thread (pyroute2 and
``netns`` save ``/proc/self/ns/net``, which is only right there):

* ``switch pair (enter+leave)``: move the thread into a namespace and back.
* ``socket in namespace``: get a socket created in a namespace (and close it).

Every implementation switches into the same existing namespace, given the
way it accepts fastest.  Times are the switching thread's CPU time, round
by round with the raw-C loop (which counts the same): on a shared machine
wall time mostly measures the wait for a core.  The best round of each
counts.  Two rows explain the gap to the C loop: two bare cffi calls
(what any Python caller pays to reach ``setns``) and the C loop with the
``fstat`` of the home fd that nslib makes before every move back (a home
fd closed and reused behind its back is never trusted).  Nothing here
ever creates a named namespace: pyroute2 gets an fd, or a path with
``flags=0`` (its default ``O_CREAT`` would create one).
"""

from __future__ import annotations

import ctypes
import gc
import os
import socket
import threading
import time
from collections.abc import Callable

import nslib
from benchmarks._harness import Result, Target, main, run_c

PAIR = "switch pair (enter+leave)"
SOCK = "socket in namespace"
CLONE_NEWNET = 0x40000000


def _best(samples: list[float]) -> float:
    # Interleaved rounds on a shared machine: the quietest round is the
    # closest to the real cost of every implementation alike.
    return min(samples)


def _cpu_per_op(fn: Callable[[], object], number: int) -> float:
    """CPU seconds of the calling thread per call of *fn* (garbage collector off)."""
    for _ in range(max(1, number // 10)):
        fn()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        t0 = time.thread_time_ns()
        for _ in range(number):
            fn()
        return (time.thread_time_ns() - t0) / number / 1e9
    finally:
        if gc_was:
            gc.enable()


def run(quick: bool) -> tuple[list[Result], list[Target]]:
    """Measure both groups; return the results and the targets."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("bench_switching must run on the main thread")
    n = 3000 if quick else 20000
    rounds = 3 if quick else 8
    n_fork = 10 if quick else 50

    with nslib.NsHandle.new() as ns, nslib.NsHandle.current() as home:
        return _run(ns, home, n, rounds, n_fork)


def _run(
    ns: nslib.NsHandle, home: nslib.NsHandle, n: int, rounds: int, n_fork: int
) -> tuple[list[Result], list[Target]]:
    fd = ns.fileno()
    path = f"/proc/{os.getpid()}/fd/{fd}"
    results: list[Result] = []

    # -- the contenders ---------------------------------------------------------
    entered = nslib.entered

    def nslib_pair() -> None:
        with entered(ns):
            pass

    def nslib_pair_path() -> None:
        with entered(path):
            pass

    def nslib_switch_to() -> None:
        nslib.switch_to(ns)()

    from nslib import _syscalls

    raw_setns = _syscalls.lib.nslib_setns  # the C core's bare setns shim

    def cffi_pair() -> None:
        # Two bare cffi calls, no checks: what any Python caller pays.
        raw_setns(fd, CLONE_NEWNET)
        raw_setns(home_fd, CLONE_NEWNET)

    libc = ctypes.CDLL(None, use_errno=True)
    setns = libc.setns
    setns.argtypes = [ctypes.c_int, ctypes.c_int]
    home_fd = home.fileno()

    def ctypes_pair() -> None:
        # With the error checks any correct caller needs.
        if setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        if setns(home_fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back")

    from pyroute2 import netns as pr_netns

    def pyroute2_pair_fd() -> None:
        pr_netns.pushns(fd)
        pr_netns.popns()

    def pyroute2_pair_path() -> None:
        pr_netns.pushns(path)
        pr_netns.popns()

    import netns as pypi_netns

    def netns_pair() -> None:
        with pypi_netns.NetNS(nspath=path):
            pass

    socket_in = nslib.socket_in
    af, dgram = socket.AF_INET, socket.SOCK_DGRAM

    def nslib_socket() -> None:
        socket_in(ns, af, dgram).close()

    def pyroute2_socket() -> None:
        pr_netns.create_socket(netns=path, flags=0, family=af, socket_type=dgram).close()

    def netns_socket() -> None:
        pypi_netns.socket(path, af, dgram).close()

    # Sanity: every contender really lands in the namespace and comes back.
    where = ns.ns_id

    def here() -> tuple[int, int]:
        st = os.stat("/proc/thread-self/ns/net")
        return (st.st_dev, st.st_ino)

    start = here()
    for enter, leave in (
        (lambda: pr_netns.pushns(fd), pr_netns.popns),
        (lambda: setns(fd, CLONE_NEWNET), lambda: setns(home_fd, CLONE_NEWNET)),
    ):
        enter()
        assert here() == where
        leave()
        assert here() == start
    with pypi_netns.NetNS(nspath=path):
        assert here() == where
    with nslib.entered(ns):
        assert here() == where
    assert here() == start

    # -- measure, interleaved -----------------------------------------------------
    pair_fns = {
        "nslib entered(handle)": nslib_pair,
        "nslib entered(path)": nslib_pair_path,
        "nslib switch_to(handle) + revert()": nslib_switch_to,
        "cffi pair": cffi_pair,
        "ctypes libc.setns pair": ctypes_pair,
        "pyroute2 pushns(fd)/popns()": pyroute2_pair_fd,
        "pyroute2 pushns(path)/popns()": pyroute2_pair_path,
        "netns NetNS(nspath=...)": netns_pair,
    }
    sock_fns = {
        "nslib socket_in(handle)": nslib_socket,
        "netns.socket(nspath, ...)": netns_socket,
    }
    samples: dict[str, list[float]] = {
        k: [] for k in [*pair_fns, *sock_fns, "raw C", "raw C check"]
    }
    raw_socket: list[float] = []
    few = ("nslib", "cffi")  # the fast ones get the full count
    for _ in range(rounds):
        c = run_c("raw_switch", str(n), "3")
        samples["raw C"].append(c["pair"])
        samples["raw C check"].append(c["pair_check"])
        raw_socket.append(c["socket"])
        for name, fn in pair_fns.items():
            samples[name].append(_cpu_per_op(fn, n if name.startswith(few) else n // 4))
        for name, fn in sock_fns.items():
            samples[name].append(_cpu_per_op(fn, n if name.startswith(few) else n // 4))
    pyroute2_sock = min(_cpu_per_op(pyroute2_socket, n_fork) for _ in range(3))
    assert here() == start

    # -- results ----------------------------------------------------------------
    results += [
        Result(PAIR, "nslib entered(handle)", _best(samples["nslib entered(handle)"]), "nslib"),
        Result(PAIR, "raw C setns pair", _best(samples["raw C"]), "limit", "C loop"),
        Result(
            PAIR,
            "raw C setns pair + fstat(home)",
            _best(samples["raw C check"]),
            "info",
            "C loop with nslib's home identity check",
        ),
        Result(
            PAIR,
            "two bare cffi setns calls",
            _best(samples["cffi pair"]),
            "info",
            "Python loop, no checks: the floor for any Python caller",
        ),
        Result(
            PAIR,
            "nslib entered(path)",
            _best(samples["nslib entered(path)"]),
            "info",
            "opens and checks the path every time",
        ),
        Result(
            PAIR,
            "nslib switch_to(handle) + revert()",
            _best(samples["nslib switch_to(handle) + revert()"]),
            "info",
        ),
        Result(
            PAIR,
            "ctypes libc.setns pair",
            _best(samples["ctypes libc.setns pair"]),
            "alt",
            "pre-opened fds, errno checked",
        ),
        Result(
            PAIR,
            "pyroute2 pushns/popns",
            _best(samples["pyroute2 pushns(fd)/popns()"]),
            "alt",
            "target as an fd; opens /proc/self/ns/net each time",
        ),
        Result(
            PAIR,
            "pyroute2 pushns/popns (path)",
            _best(samples["pyroute2 pushns(path)/popns()"]),
            "alt",
            "flags=O_CREAT default, path exists so nothing is created",
        ),
        Result(
            PAIR,
            "netns (PyPI) NetNS",
            _best(samples["netns NetNS(nspath=...)"]),
            "alt",
            "opens both paths each time",
        ),
        Result(SOCK, "nslib socket_in(handle)", _best(samples["nslib socket_in(handle)"]), "nslib"),
        Result(SOCK, "raw C setns+socket+setns", _best(raw_socket), "limit", "C loop, + close"),
        Result(
            SOCK,
            "netns (PyPI) socket()",
            _best(samples["netns.socket(nspath, ...)"]),
            "alt",
            "switches the calling thread",
        ),
        Result(
            SOCK,
            "pyroute2 create_socket",
            pyroute2_sock,
            "alt",
            f"forks a child per socket (its CPU time only); {n_fork} calls",
        ),
    ]

    # -- targets ----------------------------------------------------------------
    nslib_pair_t = _best(samples["nslib entered(handle)"])
    raw_pair_t = _best(samples["raw C"])
    nslib_sock_t = _best(samples["nslib socket_in(handle)"])
    raw_sock_t = _best(raw_socket)
    check_t = _best(samples["raw C check"]) - raw_pair_t
    cffi_t = _best(samples["cffi pair"])
    targets = [
        Target(
            PAIR,
            "entered() pair within 1.5x of the raw C setns pair",
            nslib_pair_t <= 1.5 * raw_pair_t,
            f"{nslib_pair_t / raw_pair_t:.2f}x (identity check {check_t / raw_pair_t:+.2f}x, "
            f"two bare cffi calls {cffi_t / raw_pair_t:.2f}x)",
        ),
        Target(
            SOCK,
            "socket_in within 1.5x of raw C setns+socket+setns",
            nslib_sock_t <= 1.5 * raw_sock_t,
            f"{nslib_sock_t / raw_sock_t:.2f}x",
        ),
        Target(
            SOCK,
            "socket_in at least 50x faster than pyroute2 create_socket",
            pyroute2_sock >= 50 * nslib_sock_t,
            f"{pyroute2_sock / nslib_sock_t:.0f}x",
        ),
    ]
    return results, targets


if __name__ == "__main__":
    main(run)
