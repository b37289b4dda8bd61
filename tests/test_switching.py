"""Thread-correct switching: entered, switch_to, run_in, pinned, socket_in.

Everything runs against the real kernel as root.  Where a thread should be is
always checked through ``/proc/thread-self/ns/net``, and fd counts through
``/proc/self/fd``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from caps import CAP_SYS_ADMIN, drop_effective, set_effective_cap
from helpers import open_fds, thread_ns
from hypothesis import given, settings
from hypothesis import strategies as st

import nslib
from nslib import (
    ClosedHandleError,
    InvalidReference,
    NamespaceRestoreError,
    NetNamespace,
    NotANamespace,
    NsHandle,
    entered,
    pinned,
    run_in,
    run_in_async,
    socket_in,
    switch_depth,
    switch_to,
    switching,
    thread_poisoned,
)
from nslib import _syscalls as sys_

pytestmark = pytest.mark.root

NsId = tuple[int, int]

# -- helpers -------------------------------------------------------------------


def in_thread(fn: Callable[[], Any]) -> Any:
    """Run *fn* on a fresh plain thread; return its result or raise its error."""
    box: list[tuple[bool, Any]] = []

    def body() -> None:
        try:
            box.append((True, fn()))
        except BaseException as e:
            box.append((False, e))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


def settle_fds(baseline: set[int], timeout: float = 5.0) -> set[int]:
    """Wait until no fd beyond *baseline* is open; return any that stay.

    A thread's cached home fd is closed by a pthread key destructor, which
    runs just *after* Python's ``Thread.join()`` has returned.
    """
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        extra = open_fds() - baseline
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.01)


def main_thread_ns() -> NsId:
    st_ = os.stat(f"/proc/{os.getpid()}/task/{threading.main_thread().native_id}/ns/net")
    return (st_.st_dev, st_.st_ino)


@pytest.fixture(scope="module")
def spaces() -> Iterator[list[NsHandle]]:
    """Three fresh namespaces plus the main thread's own, shared by the module."""
    hs = [NsHandle.new() for _ in range(3)]
    hs.append(NsHandle.current())
    try:
        yield hs
    finally:
        for h in hs:
            h.close()


@pytest.fixture
def a(spaces: list[NsHandle]) -> NsHandle:
    return spaces[0]


@pytest.fixture
def b(spaces: list[NsHandle]) -> NsHandle:
    return spaces[1]


# -- entered -------------------------------------------------------------------


def test_entered_moves_and_returns(a: NsHandle, home_ns: NsId, fd_baseline: set[int]) -> None:
    with entered(a) as h:
        assert h is a
        assert thread_ns() == a.ns_id
        assert switch_depth() == 1
        assert main_thread_ns() == a.ns_id  # we *are* the main thread here
    assert thread_ns() == home_ns
    assert switch_depth() == 0


def test_entered_nests(a: NsHandle, b: NsHandle, home_ns: NsId, fd_baseline: set[int]) -> None:
    with entered(a):
        with entered(b):
            assert thread_ns() == b.ns_id
            with entered(a):
                assert thread_ns() == a.ns_id
                assert switch_depth() == 3
            assert thread_ns() == b.ns_id
        assert thread_ns() == a.ns_id
    assert thread_ns() == home_ns


@pytest.mark.parametrize("exc", [ValueError, KeyboardInterrupt, SystemExit, GeneratorExit])
def test_entered_restores_on_exceptions(
    exc: type[BaseException], a: NsHandle, b: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    with pytest.raises(exc), entered(a), entered(b):
        raise exc()
    assert thread_ns() == home_ns
    assert switch_depth() == 0


@pytest.mark.parametrize("form", ["handle", "path", "pathlike", "fd", "reference"])
def test_entered_accepts_every_form(
    form: str, a: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    path = f"/proc/{os.getpid()}/fd/{a.fileno()}"
    ns: Any = {
        "handle": a,
        "path": path,
        "pathlike": __import__("pathlib").Path(path),
        "fd": a.fileno(),
        "reference": NetNamespace.path(path),
    }[form]
    with entered(ns) as h:
        assert thread_ns() == a.ns_id
        # The handle given comes back; any other reference gives None: the
        # fd entered() opened belongs to the switch, closed when it ends.
        assert h is (a if form == "handle" else None)
    assert thread_ns() == home_ns  # and fd_baseline: nothing left open


def test_entered_object_nests_in_itself(a: NsHandle, b: NsHandle, home_ns: NsId) -> None:
    cm = entered(a)
    with cm:
        with entered(b), cm:  # the block's state is the thread's, not the object's
            assert thread_ns() == a.ns_id
            assert switch_depth() == 3
        assert thread_ns() == a.ns_id
    assert thread_ns() == home_ns
    with cm:  # and reusable
        assert thread_ns() == a.ns_id
    assert thread_ns() == home_ns


def test_one_entered_object_shared_by_threads(
    a: NsHandle, b: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    """Eight threads use one entered() object at once; each ends at home."""
    cm = entered(a)
    start = threading.Barrier(8)
    results: list[Any] = []

    def worker() -> None:
        home = thread_ns()
        start.wait()
        ok = True
        for _ in range(200):
            with cm:
                ok = ok and thread_ns() == a.ns_id
                with entered(b):
                    ok = ok and thread_ns() == b.ns_id
                ok = ok and thread_ns() == a.ns_id
            ok = ok and thread_ns() == home
        results.append((ok, thread_ns() == home, switch_depth(), thread_poisoned()))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [(True, True, 0, False)] * 8
    assert thread_ns() == home_ns


def test_entered_depth_limit(a: NsHandle, home_ns: NsId, fd_baseline: set[int]) -> None:
    with contextlib.ExitStack() as stack:
        while True:
            try:
                stack.enter_context(entered(a))
            except OSError as e:
                assert e.errno == errno.EOVERFLOW
                break
        assert switch_depth() == 64
        assert thread_ns() == a.ns_id
    assert switch_depth() == 0
    assert thread_ns() == home_ns


def test_entered_refused_on_event_loop_thread(
    a: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    path = f"/proc/{os.getpid()}/fd/{a.fileno()}"

    async def main() -> None:
        for ns in (a, path, a.fileno()):
            with pytest.raises(RuntimeError, match="event loop"), entered(ns):
                pytest.fail("the body ran on the loop thread")
            assert thread_ns() == home_ns
        with pytest.raises(RuntimeError, match="event loop"):
            switch_to(a)
        with pytest.raises(RuntimeError, match="event loop"):
            switch_to(path)
        assert switch_depth() == 0
        # socket_in never runs Python in the namespace, so it is fine here.
        socket_in(a, socket.AF_INET, socket.SOCK_DGRAM).close()

    asyncio.run(main())
    assert thread_ns() == home_ns


def test_home_follows_moves_outside_a_switch(
    a: NsHandle, b: NsHandle, fd_baseline: set[int]
) -> None:
    """The C core caches each thread's home fd; a move for good must reset it."""

    def body() -> list[bool]:
        ok = []
        with entered(a):  # caches this thread's home
            pass
        for move in (
            lambda: sys_.setns(b.fileno(), sys_.CLONE_NEWNET, "b"),
            lambda: sys_.unshare(sys_.CLONE_NEWNET, "new"),
            lambda: sys_.join(a.fileno(), "a"),
        ):
            move()
            now = thread_ns()
            with entered(b if now != b.ns_id else a):
                pass
            ok.append(thread_ns() == now)  # back where it was, not the old home
        return ok

    assert in_thread(body) == [True, True, True]
    assert not settle_fds(fd_baseline)


# -- bad input -----------------------------------------------------------------


def closed_handle() -> NsHandle:
    h = NsHandle.current()
    h.close()
    return h


BAD_INPUTS: list[tuple[str, Callable[[], Any], type[BaseException]]] = [
    ("negative fd", lambda: -1, OSError),
    ("huge fd", lambda: 2**40, OSError),
    ("closed fd", lambda: _closed_fd(), OSError),
    ("pipe fd", lambda: _pipe_fd(), NotANamespace),
    ("mnt ns fd", lambda: _mnt_fd(), NotANamespace),
    ("file path", lambda: "/etc/hostname", NotANamespace),
    ("mnt ns path", lambda: "/proc/self/ns/mnt", NotANamespace),
    ("missing path", lambda: "/nonexistent/nslib", FileNotFoundError),
    ("NUL path", lambda: "/proc/self/ns/net\0x", InvalidReference),
    ("closed handle", closed_handle, ClosedHandleError),
    ("bool", lambda: True, InvalidReference),
    ("None", lambda: None, InvalidReference),
    ("float", lambda: 3.5, InvalidReference),
    ("undefined ref", lambda: NetNamespace.parse("undefined:"), InvalidReference),
]

_keep: list[int] = []


def _closed_fd() -> int:
    # A high number, so nothing the operation opens first can reuse it.
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 900)
    os.close(fd)
    os.close(high)
    return high


def _pipe_fd() -> int:
    r, w = os.pipe()
    _keep.extend((r, w))
    return r


def _mnt_fd() -> int:
    fd = os.open("/proc/thread-self/ns/mnt", os.O_RDONLY)
    _keep.append(fd)
    return fd


@pytest.fixture
def bad_input_fds() -> Iterator[None]:
    yield
    while _keep:
        os.close(_keep.pop())


OPERATIONS: list[tuple[str, Callable[[Any], Any]]] = [
    ("entered", lambda ns: entered(ns).__enter__()),
    ("switch_to", switch_to),
    ("socket_in", lambda ns: socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)),
    ("run_in", lambda ns: run_in(ns, thread_ns)),
    ("pinned", pinned),
    ("run_in_async", lambda ns: asyncio.run(run_in_async(ns, thread_ns))),
]


@pytest.mark.parametrize(("op_name", "op"), OPERATIONS, ids=[o[0] for o in OPERATIONS])
@pytest.mark.parametrize(("what", "make", "exc"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input(
    op_name: str,
    op: Callable[[Any], Any],
    what: str,
    make: Callable[[], Any],
    exc: type[BaseException],
    fd_baseline: set[int],
    bad_input_fds: None,  # after fd_baseline, so its teardown runs first
    home_ns: NsId,
) -> None:
    ns = make()
    before_threads = threading.active_count()
    with pytest.raises(exc) as info:
        op(ns)
    if isinstance(info.value, OSError) and not isinstance(info.value, FileNotFoundError):
        assert info.value.errno in (errno.EBADF, None), info.value
    assert switch_depth() == 0
    assert not thread_poisoned()
    assert thread_ns() == home_ns
    assert threading.active_count() <= before_threads


# -- switch_to / Revert ----------------------------------------------------------


def test_switch_to_and_revert(a: NsHandle, home_ns: NsId, fd_baseline: set[int]) -> None:
    revert = switch_to(a)
    assert not revert.done
    assert thread_ns() == a.ns_id
    revert()
    assert revert.done
    assert thread_ns() == home_ns
    revert()  # idempotent
    revert()
    assert thread_ns() == home_ns


def test_revert_as_context_manager(
    a: NsHandle, b: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    with switch_to(a) as r:
        assert thread_ns() == a.ns_id
        with switch_to(f"/proc/{os.getpid()}/fd/{b.fileno()}"):
            assert thread_ns() == b.ns_id
        assert thread_ns() == a.ns_id
    assert r.done
    assert thread_ns() == home_ns


def test_revert_out_of_order_changes_nothing(
    a: NsHandle, b: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    outer = switch_to(a)
    inner = switch_to(b)
    with pytest.raises(RuntimeError, match="out of order"):
        outer()
    assert not outer.done
    assert thread_ns() == b.ns_id
    assert switch_depth() == 2
    inner()
    assert thread_ns() == a.ns_id
    outer()
    assert thread_ns() == home_ns


def test_revert_from_another_thread_changes_nothing(
    a: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    revert = switch_to(a)
    try:
        with pytest.raises(RuntimeError, match="thread that switched"):
            in_thread(revert)
        assert not revert.done
        assert thread_ns() == a.ns_id
    finally:
        revert()
    assert thread_ns() == home_ns


def test_unreverted_switch_is_reverted_when_collected(a: NsHandle, home_ns: NsId) -> None:
    revert = switch_to(a)
    del revert  # an interrupt dropped it before anyone could call it
    assert switch_depth() == 0
    assert thread_ns() == home_ns


def test_with_block_unwinds_an_unreverted_inner_switch(
    a: NsHandle, b: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    with pytest.raises(RuntimeError, match="never reverted"), entered(a):
        stale = switch_to(b)
    assert thread_ns() == home_ns
    assert switch_depth() == 0
    # The abandoned switch's revert is a no-op, even once its depth is reused.
    with entered(a), entered(b):
        stale()
        assert stale.done
        assert thread_ns() == b.ns_id
        assert switch_depth() == 2
    assert thread_ns() == home_ns


# -- asynchronous exceptions right after the C call ------------------------------


@contextlib.contextmanager
def raise_after(fn: object, exc: type[BaseException] = KeyboardInterrupt) -> Iterator[None]:
    """Raise *exc* the first time the C function *fn* returns on this thread.

    A profile hook's ``c_return`` fires exactly where a signal handler's
    KeyboardInterrupt would: after the C call, before Python stores its result.
    """
    fired: list[bool] = []

    def hook(frame: object, event: str, arg: object) -> None:
        if event == "c_return" and arg is fn and not fired:
            fired.append(True)
            raise exc()

    sys.setprofile(hook)
    try:
        yield
    finally:
        sys.setprofile(None)
    assert fired, "the hook never fired"


@pytest.mark.parametrize("form", ["handle", "path"])
def test_interrupt_right_after_enter(
    form: str, a: NsHandle, b: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    ns: Any = a if form == "handle" else f"/proc/{os.getpid()}/fd/{a.fileno()}"
    # A network handle takes the one-argument hot path, anything else the general one.
    enter = sys_.raw_enter_block if form == "handle" else sys_.raw_enter
    with pytest.raises(KeyboardInterrupt), raise_after(enter), entered(ns):
        pytest.fail("the body ran")
    assert switch_depth() == 0
    assert thread_ns() == home_ns
    # Nested: only the interrupted switch is undone.
    with entered(b):
        with pytest.raises(KeyboardInterrupt), raise_after(sys_.raw_enter):
            switch_to(ns)
        assert switch_depth() == 1
        assert thread_ns() == b.ns_id
    assert thread_ns() == home_ns


def test_interrupt_after_a_failed_enter_undoes_nothing(
    a: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    with entered(a):
        with pytest.raises(KeyboardInterrupt), raise_after(sys_.raw_enter):
            switch_to(_closed_fd())
        assert switch_depth() == 1
        assert thread_ns() == a.ns_id
    assert thread_ns() == home_ns


def test_exits_run_no_python_before_the_c_call(
    a: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    """The whole path from a block's end, a revert() call or a revert's
    collection to the C call that moves the thread back is C: no Python
    function starts in between, so no interrupt can land there."""
    events: list[tuple[str, object]] = []

    def hook(frame: Any, event: str, arg: object) -> None:
        events.append((event, frame.f_code.co_name if event == "call" else arg))

    def calls_until(c_fn: object) -> list[object]:
        out = []
        for event, what in events:
            if event == "c_call" and what is c_fn:
                return out
            if event == "call":
                out.append(what)
        raise AssertionError(f"{c_fn} was never called")

    cm = entered(a)
    cm.__enter__()
    sys.setprofile(hook)
    try:
        cm.__exit__(None, None, None)
    finally:
        sys.setprofile(None)
    assert thread_ns() == home_ns
    assert events and all(e != "call" for e, _ in events), events  # not one Python frame

    for how in ("call", "with", "collect"):
        revert = switch_to(a)
        events.clear()
        sys.setprofile(hook)
        try:
            if how == "call":
                revert()
            elif how == "with":
                revert.__exit__(None, None, None)
            else:
                del revert
        finally:
            sys.setprofile(None)
        assert [e for e, _ in events if e == "call"] == [], (how, events)
        assert thread_ns() == home_ns, how
        assert switch_depth() == 0


# -- poisoning -------------------------------------------------------------------


def test_failed_restore_poisons_only_that_thread(
    a: NsHandle, b: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    def victim() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        revert = switch_to(a)
        set_effective_cap(CAP_SYS_ADMIN, False)  # this thread only
        with pytest.raises(NamespaceRestoreError, match="poisoned") as info:
            revert()
        seen["errno"] = info.value.errno
        seen["poisoned"] = thread_poisoned()
        seen["stuck_in"] = thread_ns()
        seen["depth"] = switch_depth()
        set_effective_cap(CAP_SYS_ADMIN, True)  # the kernel would allow it now...
        # ... but nslib refuses every later switch on this thread.
        for attempt in (
            lambda: entered(b).__enter__(),
            lambda: switch_to(b),
            lambda: socket_in(b, socket.AF_INET, socket.SOCK_DGRAM),
            lambda: entered(f"/proc/{os.getpid()}/fd/{b.fileno()}").__enter__(),
        ):
            with pytest.raises(NamespaceRestoreError, match="poisoned"):
                attempt()
        seen["still_stuck"] = thread_ns()
        # Work can still be sent elsewhere: run_in uses a fresh thread.
        seen["run_in"] = run_in(b, thread_ns)
        return seen

    seen = in_thread(victim)
    assert seen["errno"] == errno.EPERM
    assert seen["poisoned"] is True
    assert seen["stuck_in"] == a.ns_id == seen["still_stuck"]
    assert seen["depth"] == 0
    assert seen["run_in"] == b.ns_id
    # Other threads are unaffected.
    assert not thread_poisoned()
    with entered(b):
        assert thread_ns() == b.ns_id
    assert thread_ns() == home_ns
    assert in_thread(lambda: (thread_poisoned(), run_in(a, thread_ns))) == (False, a.ns_id)
    assert not settle_fds(fd_baseline)


def test_failed_restore_in_with_block(a: NsHandle, b: NsHandle, fd_baseline: set[int]) -> None:
    def victim() -> tuple[bool, NsId]:
        with pytest.raises(NamespaceRestoreError), entered(a), entered(b):
            set_effective_cap(CAP_SYS_ADMIN, False)
        set_effective_cap(CAP_SYS_ADMIN, True)
        with pytest.raises(NamespaceRestoreError):
            entered(a).__enter__()
        return thread_poisoned(), thread_ns()

    poisoned, where = in_thread(victim)
    assert poisoned
    assert where == b.ns_id  # neither leave could happen
    assert not settle_fds(fd_baseline)


def test_enter_without_permission_is_not_poisoning(
    a: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    def attempt() -> tuple[bool, int, NsId]:
        before = thread_ns()
        with drop_effective(CAP_SYS_ADMIN), pytest.raises(PermissionError) as info:
            entered(a).__enter__()
        assert "a new anonymous namespace" in str(info.value)  # names the namespace
        return thread_poisoned(), switch_depth(), before

    poisoned, depth, before = in_thread(attempt)
    assert not poisoned
    assert depth == 0
    assert before == home_ns
    assert not settle_fds(fd_baseline)


# -- run_in / run_in_async ------------------------------------------------------


class Boom(Exception):
    pass


def test_run_in_result_and_args(a: NsHandle, home_ns: NsId, fd_baseline: set[int]) -> None:
    def fn(x: int, *, y: int) -> tuple[int, NsId, NsId, bool]:
        return x + y, thread_ns(), main_thread_ns(), threading.current_thread().daemon

    total, where, main_where, daemon = run_in(a, fn, 1, y=2)
    assert total == 3
    assert where == a.ns_id
    assert main_where == home_ns  # the caller never moved, even while fn ran
    assert daemon
    assert not settle_fds(fd_baseline)


@pytest.mark.parametrize("exc", [Boom("x"), KeyboardInterrupt(), SystemExit(3)])
def test_run_in_propagates_exceptions(
    exc: BaseException, a: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    def fn() -> None:
        raise exc

    with pytest.raises(type(exc)) as info:
        run_in(a, fn)
    assert info.value is exc
    assert thread_ns() == home_ns
    assert not settle_fds(fd_baseline)


def test_run_in_from_a_switched_thread(
    a: NsHandle, b: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    with entered(a):
        assert run_in(b, thread_ns) == b.ns_id
        assert thread_ns() == a.ns_id
    assert thread_ns() == home_ns


def test_run_in_async(a: NsHandle, home_ns: NsId, fd_baseline: set[int]) -> None:
    loop_samples: list[NsId] = []

    def slow() -> NsId:
        time.sleep(0.2)
        return thread_ns()

    async def sampler(stop: asyncio.Event) -> None:
        while not stop.is_set():
            loop_samples.append(thread_ns())
            await asyncio.sleep(0.005)

    async def main() -> tuple[NsId, NsId]:
        stop = asyncio.Event()
        task = asyncio.create_task(sampler(stop))
        try:
            where = await run_in_async(a, slow)
            with pytest.raises(Boom, match="async"):
                await run_in_async(a, _raise, Boom("async"))
            return where, thread_ns()
        finally:
            stop.set()
            await task

    where, loop_ns = asyncio.run(main())
    assert where == a.ns_id
    assert loop_ns == home_ns
    assert len(loop_samples) > 5
    assert set(loop_samples) == {home_ns}  # the loop's thread never switched
    assert not settle_fds(fd_baseline)


def _raise(e: BaseException) -> None:
    raise e


# -- pinned ----------------------------------------------------------------------


def test_pinned_worker_stays_while_main_stays_home(
    a: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    def task(i: int) -> tuple[int, NsId, NsId, int]:
        return i, thread_ns(), main_thread_ns(), threading.get_ident()

    with pinned(a) as ex:
        futures = [ex.submit(task, i) for i in range(200)]
        results = [f.result() for f in futures]
        assert thread_ns() == home_ns
    assert [r[0] for r in results] == list(range(200))
    assert {r[1] for r in results} == {a.ns_id}
    assert {r[2] for r in results} == {home_ns}
    assert len({r[3] for r in results}) == 1  # one worker for its whole life
    assert thread_ns() == home_ns
    assert not settle_fds(fd_baseline)


def test_pinned_as_an_asyncio_executor(a: NsHandle, home_ns: NsId, fd_baseline: set[int]) -> None:
    async def main(ex: switching.PinnedExecutor) -> tuple[NsId, NsId]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(ex, thread_ns), thread_ns()

    with pinned(a) as ex:
        assert asyncio.run(main(ex)) == (a.ns_id, home_ns)


def test_pinned_outlives_the_callers_handle(home_ns: NsId, fd_baseline: set[int]) -> None:
    h = NsHandle.new()
    ident = h.ns_id
    ex = pinned(h)
    h.close()  # the worker itself keeps the namespace alive
    try:
        assert list(ex.map(lambda _: thread_ns(), range(5))) == [ident] * 5
    finally:
        ex.shutdown()
    assert not settle_fds(fd_baseline)


def test_pinned_shutdown(a: NsHandle, fd_baseline: set[int]) -> None:
    ex = pinned(a)
    started = threading.Event()
    release = threading.Event()

    def block() -> str:
        started.set()
        release.wait(5)
        return "done"

    first = ex.submit(block)
    started.wait(5)
    queued = ex.submit(thread_ns)
    ex.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(thread_ns)
    release.set()
    ex.shutdown()  # idempotent, and now joins
    assert ex._done.acquire(blocking=False)  # the worker has ended
    assert first.result() == "done"
    assert "shut down" in repr(ex)
    assert not settle_fds(fd_baseline)


def test_pinned_task_errors_propagate(a: NsHandle, fd_baseline: set[int]) -> None:
    with pinned(a) as ex:
        f = ex.submit(_raise, Boom("in task"))
        with pytest.raises(Boom, match="in task"):
            f.result()
        assert ex.submit(thread_ns).result() == a.ns_id  # the worker survived


def test_pinned_join_error_is_raised_by_the_constructor(a: NsHandle, fd_baseline: set[int]) -> None:
    # A worker inherits the creating thread's capabilities: without
    # CAP_SYS_ADMIN its setns fails, inside the worker.
    def make() -> None:
        with drop_effective(CAP_SYS_ADMIN):
            pinned(a)

    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(PermissionError, match="a new anonymous namespace"):
        in_thread(make)
    assert {t.ident for t in threading.enumerate()} <= before
    assert not settle_fds(fd_baseline)


def test_pinned_worker_refuses_work_once_moved(
    a: NsHandle, b: NsHandle, fd_baseline: set[int]
) -> None:
    def poison() -> None:
        with entered(b):
            set_effective_cap(CAP_SYS_ADMIN, False)  # the worker's, for good

    with pinned(a) as ex:
        with pytest.raises(NamespaceRestoreError):
            ex.submit(poison).result()
        with pytest.raises(NamespaceRestoreError, match="no longer in its namespace"):
            ex.submit(thread_ns).result()

    with pinned(a) as ex:
        # A task that leaves a switch open fails, and the worker moves back.
        with pytest.raises(RuntimeError, match="never reverted"):
            ex.submit(switch_to, b).result()
        assert ex.submit(thread_ns).result() == a.ns_id
        assert ex.submit(switch_depth).result() == 0
    assert not settle_fds(fd_baseline)


# -- threads ---------------------------------------------------------------------


def test_threaded_enter_leave(spaces: list[NsHandle], home_ns: NsId, fd_baseline: set[int]) -> None:
    n_threads, cycles = 8, 300
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            mine = thread_ns()
            barrier.wait()
            for j in range(cycles):
                outer, inner = spaces[(i + j) % 3], spaces[(i + 2 * j + 1) % 4]
                with entered(outer):
                    assert thread_ns() == outer.ns_id
                    with entered(inner):
                        assert thread_ns() == inner.ns_id
                    assert thread_ns() == outer.ns_id
                assert thread_ns() == mine
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    samples = []
    while any(t.is_alive() for t in threads):
        samples.append(thread_ns())
        time.sleep(0.001)
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert set(samples) == {home_ns}
    assert not settle_fds(fd_baseline)


def test_thread_started_while_switched_is_born_there(
    a: NsHandle, b: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    """A new thread inherits its creator's namespace.

    A plain thread (or a lazily started pool worker) created inside
    ``entered()`` lives in the foreign namespace; nslib's own threads join
    their target explicitly, so they never inherit the wrong one.
    """
    born: list[NsId] = []
    with entered(a):
        t = threading.Thread(target=lambda: born.append(thread_ns()))
        t.start()
        t.join()
        with ThreadPoolExecutor(1) as pool:  # its worker starts here, switched
            pool_ns = pool.submit(thread_ns).result()
        # nslib's tools, started from the same switched thread:
        assert run_in(b, thread_ns) == b.ns_id
        with pinned(b) as ex:
            assert ex.submit(thread_ns).result() == b.ns_id
            assert thread_ns() == a.ns_id
        assert asyncio.run(run_in_async(b, thread_ns)) == b.ns_id
        assert thread_ns() == a.ns_id
    assert born == [a.ns_id]
    assert pool_ns == a.ns_id
    assert thread_ns() == home_ns
    assert not settle_fds(fd_baseline)


# -- socket_in -------------------------------------------------------------------

SIOCGIFINDEX = 0x8933
RTM_GETLINK, RTM_NEWLINK, NLMSG_DONE, NLMSG_ERROR = 18, 16, 3, 2
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
IFLA_IFNAME = 3


def ifindex(sock: socket.socket, name: str) -> int | None:
    """SIOCGIFINDEX on *sock*: the index of *name* in the socket's namespace."""
    req = struct.pack("16s16x", name.encode())
    try:
        res = fcntl.ioctl(sock.fileno(), SIOCGIFINDEX, req)
    except OSError as e:
        assert e.errno == errno.ENODEV
        return None
    return int(struct.unpack_from("i", res, 16)[0])


def netlink_link_names(sock: socket.socket) -> set[str]:
    """The interface names an RTM_GETLINK dump on *sock* returns."""
    ifinfo = struct.pack("BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)
    hdr = struct.pack("IHHII", 16 + len(ifinfo), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    sock.send(hdr + ifinfo)
    names: set[str] = set()
    while True:
        data = sock.recv(65536)
        off = 0
        while off + 16 <= len(data):
            length, kind, _, _, _ = struct.unpack_from("IHHII", data, off)
            if kind == NLMSG_DONE:
                return names
            assert kind != NLMSG_ERROR, "netlink error"
            if kind == RTM_NEWLINK:
                attr = off + 16 + 16
                while attr + 4 <= off + length:
                    alen, atype = struct.unpack_from("HH", data, attr)
                    if atype == IFLA_IFNAME:
                        names.add(data[attr + 4 : attr + alen].rstrip(b"\0").decode())
                    attr += (alen + 3) & ~3
            off += (length + 3) & ~3


@pytest.fixture
def veth(unique: str, netns: NsHandle) -> Iterator[tuple[str, str, NsHandle]]:
    """A veth pair: the first end in the host, the second moved into *netns*."""
    host_end, ns_end = f"{unique}"[:13] + "h", f"{unique}"[:13] + "n"
    subprocess.run(
        ["ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            ["ip", "link", "set", ns_end, "netns", f"/proc/{os.getpid()}/fd/{netns.fileno()}"],
            check=True,
            capture_output=True,
        )
        yield host_end, ns_end, netns
    finally:
        subprocess.run(["ip", "link", "del", host_end], check=False, capture_output=True)


def test_socket_in_sees_the_namespace(
    veth: tuple[str, str, NsHandle], home_ns: NsId, fd_baseline: set[int]
) -> None:
    host_end, ns_end, ns = veth
    samples: list[NsId] = []
    with socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM) as inside:
        samples.append(thread_ns())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as outside:
            assert ifindex(inside, ns_end) is not None
            assert ifindex(inside, host_end) is None
            assert ifindex(outside, host_end) is not None
            assert ifindex(outside, ns_end) is None
    with socket_in(ns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        samples.append(thread_ns())
        assert netlink_link_names(nl) == {"lo", ns_end}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        host_names = netlink_link_names(nl)
    assert host_end in host_names
    assert ns_end not in host_names
    assert set(samples) == {home_ns}
    assert switch_depth() == 0


def test_socket_in_is_bound_for_life_and_cloexec(
    a: NsHandle, home_ns: NsId, fd_baseline: set[int]
) -> None:
    # lo is down in a new namespace: bring it up there, then use a socket
    # made in it from here, from the main thread, in our own namespace.
    run_in(a, subprocess.run, ["ip", "link", "set", "lo", "up"], check=True)
    with (
        socket_in(a, socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket_in(f"/proc/{os.getpid()}/fd/{a.fileno()}", socket.AF_INET, socket.SOCK_DGRAM) as c,
    ):
        assert server.family == socket.AF_INET
        assert server.type == socket.SOCK_DGRAM
        assert fcntl.fcntl(server.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        server.bind(("127.0.0.1", 0))
        c.sendto(b"ping", server.getsockname())
        server.settimeout(5)
        assert server.recv(16) == b"ping"
        assert thread_ns() == home_ns


def test_socket_in_socket_errors(a: NsHandle, home_ns: NsId, fd_baseline: set[int]) -> None:
    with pytest.raises(OSError) as info:
        socket_in(a, 12345, socket.SOCK_DGRAM)
    assert info.value.errno == errno.EAFNOSUPPORT
    assert "new anonymous namespace" in str(info.value)
    with pytest.raises(OSError) as info:
        socket_in(a, socket.AF_INET, 999)
    assert info.value.errno == errno.EINVAL
    assert not isinstance(info.value, NotANamespace)
    assert switch_depth() == 0
    assert thread_ns() == home_ns


def _fail_setns_on(fd: int) -> None:
    """Make every later ``setns(fd, ...)`` of the calling thread fail with EPERM.

    A seccomp filter on this thread only (prctl installs it without
    synchronising other threads): a real kernel refusal of exactly the move
    back, which nothing else in the process can observe.  The thread keeps it
    until it exits.
    """
    import ctypes
    import platform

    arch, nr = {
        "x86_64": (0xC000003E, 308),  # AUDIT_ARCH_X86_64, __NR_setns
        "aarch64": (0xC00000B7, 268),
    }[platform.machine()]
    ld, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_RET|K
    allow, eperm = 0x7FFF0000, 0x00050000 | errno.EPERM
    code = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 0, 5, arch),
        (ld, 0, 0, 0),  # .nr
        (jeq, 0, 3, nr),
        (ld, 0, 0, 16),  # low half of .args[0]
        (jeq, 0, 1, fd),
        (ret, 0, 0, eperm),
        (ret, 0, 0, allow),
    ]

    class SockFilter(ctypes.Structure):
        _fields_ = [
            ("code", ctypes.c_uint16),
            ("jt", ctypes.c_uint8),
            ("jf", ctypes.c_uint8),
            ("k", ctypes.c_uint32),
        ]

    class SockFprog(ctypes.Structure):
        _fields_ = [
            ("len", ctypes.c_uint16),
            ("filter", ctypes.POINTER(SockFilter)),
        ]

    insns = (SockFilter * len(code))(*(SockFilter(*c) for c in code))
    prog = SockFprog(len(code), insns)
    libc = ctypes.CDLL(None, use_errno=True)
    # PR_SET_SECCOMP, SECCOMP_MODE_FILTER; root has CAP_SYS_ADMIN, so no
    # PR_SET_NO_NEW_PRIVS is needed.
    if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def test_socket_in_restore_failure_poisons(a: NsHandle, fd_baseline: set[int]) -> None:
    # socket_in joins, makes the socket and moves back in one C call; when
    # the kernel refuses the move back, the socket is closed, the error says
    # the restore failed (not socket()), and the thread is poisoned.
    out: dict[str, Any] = {}

    def body() -> None:
        with entered(a):  # opens this thread's home fd
            pass
        home_fd = sys_.lib.nslib_home_fd()
        home = thread_ns()
        before = open_fds()
        _fail_setns_on(home_fd)
        try:
            socket_in(a, socket.AF_INET, socket.SOCK_DGRAM)
        except BaseException as e:
            out["error"] = e
        out["leaked"] = open_fds() - before
        out["poisoned"] = thread_poisoned()
        out["where"], out["home"], out["a"] = thread_ns(), home, a.ns_id
        # Every later switch refuses.
        with contextlib.suppress(NamespaceRestoreError), entered(a):
            out["entered"] = True

    t = threading.Thread(target=body)
    t.start()
    t.join()
    error = out["error"]
    assert isinstance(error, NamespaceRestoreError), error
    assert error.errno == errno.EPERM
    assert out["leaked"] == set()  # the socket made inside was closed
    assert out["poisoned"]
    assert out["where"] == out["a"] != out["home"]  # stuck there, and it says so
    assert "entered" not in out
    assert switch_depth() == 0
    assert not thread_poisoned()  # the main thread is untouched


# -- the property --------------------------------------------------------------

K = 4  # len(spaces)

ops = st.one_of(
    st.tuples(st.just("enter"), st.integers(0, K - 1)),
    st.tuples(st.just("switch"), st.integers(0, K - 1)),
    st.tuples(st.just("pop"), st.just(0)),
    st.tuples(st.just("pop_wrong"), st.integers(0, 63)),
    st.tuples(st.just("end_outer_block"), st.just(0)),
    st.tuples(st.just("stale"), st.just(0)),
)
programs = st.lists(st.lists(ops, max_size=30), min_size=1, max_size=8)


def run_program(program: list[tuple[str, int]], spaces: list[NsHandle]) -> None:
    """Interpret *program* on the calling thread, checking against a model.

    The model is a stack of (kind, object, namespace index).  After every step
    the thread must be in the namespace on top of the stack (or home) and the
    C stack must be as deep as the model's.
    """
    home = thread_ns()
    stack: list[tuple[str, Any, int]] = []
    stale: list[switching.Revert] = []

    def check() -> None:
        assert switch_depth() == len(stack)
        assert thread_ns() == (spaces[stack[-1][2]].ns_id if stack else home)

    for op, arg in program:
        if op == "enter" and len(stack) < 60:
            cm = entered(spaces[arg])
            cm.__enter__()
            stack.append(("cm", cm, arg))
        elif op == "switch" and len(stack) < 60:
            stack.append(("rev", switch_to(spaces[arg]), arg))
        elif op == "pop" and stack:
            kind, obj, _ = stack.pop()
            obj.__exit__(None, None, None) if kind == "cm" else obj()
        elif op == "pop_wrong":
            # Reverting a switch that is not the innermost changes nothing.
            below = [i for i, e in enumerate(stack[:-1]) if e[0] == "rev"]
            if below:
                i = below[arg % len(below)]
                with pytest.raises(RuntimeError, match="out of order"):
                    stack[i][1]()
                assert not stack[i][1].done
        elif op == "end_outer_block":
            # A with-block ends while switch_to()s made inside it are open:
            # the thread goes back to before the block; those become stale.
            for i in range(len(stack) - 2, -1, -1):
                if stack[i][0] == "cm" and all(e[0] == "rev" for e in stack[i + 1 :]):
                    with pytest.raises(RuntimeError, match="never reverted"):
                        stack[i][1].__exit__(None, None, None)
                    stale.extend(e[1] for e in stack[i + 1 :])
                    del stack[i:]
                    break
        elif op == "stale" and stale:
            stale.pop()()  # a no-op
        check()
    while stack:
        kind, obj, _ = stack.pop()
        obj.__exit__(None, None, None) if kind == "cm" else obj()
        check()
    for r in stale:
        r()
        assert r.done
    check()
    assert thread_ns() == home


@settings(max_examples=40)
@given(programs)
def test_random_switch_programs_on_many_threads(
    spaces: list[NsHandle], program_set: list[list[tuple[str, int]]]
) -> None:
    home = thread_ns()
    baseline = open_fds()
    barrier = threading.Barrier(len(program_set))
    errors: list[BaseException] = []
    ends: list[tuple[NsId, NsId]] = []

    def worker(program: list[tuple[str, int]]) -> None:
        try:
            mine = thread_ns()
            barrier.wait()
            run_program(program, spaces)
            ends.append((mine, thread_ns()))
            assert not thread_poisoned()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(p,)) for p in program_set]
    for i, t in enumerate(threads):
        # Start each thread inside a different namespace (inherited from its
        # creator on purpose), so "its own original namespace" differs between threads.
        with entered(spaces[i % K]):
            t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert len(ends) == len(program_set)
    assert all(start == end for start, end in ends)  # each thread ends at its own home
    assert {start for start, _ in ends} == {spaces[i % K].ns_id for i in range(len(threads))}
    assert thread_ns() == home  # the main thread never moved
    assert switch_depth() == 0
    leaked = settle_fds(baseline)
    assert not leaked, f"leaked fds: {sorted(leaked)}"


# -- regressions from the code review -------------------------------------------


def test_forked_child_that_closes_every_fd_still_returns_home(netns: nslib.NsHandle) -> None:
    # The home fd is cached per thread.  A forked child that closes all its
    # fds (as daemons do) and opens namespaces reusing those numbers must not
    # be sent "home" into one of them.
    with nslib.entered(netns):
        pass  # this thread now has a cached home fd
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        status = b"?"
        try:
            os.closerange(3, w)
            os.closerange(w + 1, 4096)
            handles = [nslib.NsHandle.new() for _ in range(8)]  # reuse the low numbers
            home = os.stat("/proc/thread-self/ns/net")
            with nslib.entered(handles[0]):
                pass
            back = os.stat("/proc/thread-self/ns/net")
            ok = (back.st_dev, back.st_ino) == (home.st_dev, home.st_ino)
            status = b"1" if ok else b"0"
            for h in handles:
                h.detach()
        finally:
            os.write(w, status)
            os._exit(0)
    os.close(w)
    try:
        answer = os.read(r, 1)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert answer == b"1", "the child was left in another namespace after leaving"


def _on_fresh_thread(fn: Callable[[], Any]) -> Any:
    box: list[Any] = []

    def body() -> None:
        try:
            box.append((True, fn()))
        except BaseException as e:
            box.append((False, e))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


def test_home_fd_replaced_at_home_is_reopened(netns: nslib.NsHandle) -> None:
    """Something closes the thread's cached home fd and the number goes to
    another namespace's fd: the next switch notices (by identity) and reopens
    home; the stranger's fd is left alone."""

    def body() -> tuple[Any, ...]:
        home = thread_ns()
        with nslib.entered(netns):
            pass
        cached = sys_.home_fd()
        with nslib.NsHandle.new() as other:
            os.dup2(other.fileno(), cached)  # closes the home fd, reuses its number
            with nslib.entered(netns):
                inside = thread_ns()
            after = thread_ns()
            stranger = os.fstat(cached)  # still open: nslib never closed it
            os.close(cached)
            return (home, inside, after, (stranger.st_dev, stranger.st_ino), other.ns_id)

    home, inside, after, stranger, other = _on_fresh_thread(body)
    assert inside == netns.ns_id
    assert after == home
    assert stranger == other


def test_home_fd_replaced_during_a_switch_is_reopened(netns: nslib.NsHandle) -> None:
    """The home fd is replaced while the thread is switched: nslib never
    "returns" into the stranger's namespace; it finds home again through
    /proc/self (this thread's home is the process's namespace)."""

    def body() -> tuple[Any, ...]:
        home = thread_ns()
        with nslib.NsHandle.new() as other:
            with nslib.entered(netns):
                cached = sys_.home_fd()
                os.dup2(other.fileno(), cached)
            where = thread_ns()
            os.close(cached)  # the stranger's: nslib left it alone
            return (home, where, nslib.thread_poisoned(), switch_depth())

    home, where, poisoned, depth = _on_fresh_thread(body)
    assert where == home
    assert not poisoned and depth == 0


def test_home_fd_replaced_with_no_way_home_poisons(netns: nslib.NsHandle) -> None:
    """A thread whose home is not the process's namespace (it moved there
    for good) loses its home fd mid-switch: nslib refuses to move it into
    the stranger's namespace; it stays, poisoned, with a clear error."""

    def body() -> tuple[Any, ...]:
        with nslib.NsHandle.new() as away, nslib.NsHandle.new() as other:
            sys_.join(away.fileno(), "away")  # this thread's home is now `away`
            try:
                with nslib.entered(netns):
                    cached = sys_.home_fd()
                    os.dup2(other.fileno(), cached)
            except nslib.NamespaceRestoreError as e:
                err: Any = e
            else:
                err = None
            where = thread_ns()
            os.close(cached)
            return (err, where, nslib.thread_poisoned(), other.ns_id, away.ns_id)

    err, where, poisoned, other, away = _on_fresh_thread(body)
    assert isinstance(err, nslib.NamespaceRestoreError) and err.errno == errno.EBADF
    assert "closed or replaced" in str(err)
    assert where == netns.ns_id  # never into the stranger's namespace
    assert where not in (other, away)
    assert poisoned


def test_pinned_keeps_the_tasks_own_exception_as_cause(netns: nslib.NsHandle) -> None:
    other = nslib.NsHandle.new()
    abandoned: list[nslib.Revert] = []

    def sloppy() -> None:
        abandoned.append(nslib.switch_to(other))  # never reverted by the task
        raise ValueError("the real bug")

    try:
        with nslib.pinned(netns) as ex:
            fut = ex.submit(sloppy)
            err = fut.exception(timeout=10)
            assert err is not None
            assert isinstance(err.__cause__, ValueError)
            assert str(err.__cause__) == "the real bug"
            assert abandoned[0].done  # the executor undid it: revert is a no-op
            ex.submit(abandoned[0]).result(timeout=10)
    finally:
        other.close()


def test_bare_word_is_a_named_namespace(unique: str, run_dir: str) -> None:
    from nslib._resolve import resolve

    with pytest.raises(nslib.NamespaceNotFound, match="no named namespace"), nslib.entered(unique):
        pass
    with nslib.named.create(unique, run_dir=run_dir) as made:
        try:
            with resolve(unique, run_dir=run_dir) as res:
                assert res.name == unique and res.what == f"name:{unique}"
                with entered(res.fd):
                    assert thread_ns() == made.ns_id
        finally:
            nslib.named.delete(unique, run_dir=run_dir)
