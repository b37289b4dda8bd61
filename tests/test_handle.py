"""``NsHandle``: constructors, ownership, identity, and every bad input.

Each bad input asserts the typed error *and* (through ``fd_baseline``) that
no fd was left behind.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import gc
import os
import pickle
import subprocess
import threading
from collections.abc import Iterator

import pytest
from helpers import thread_ns

import nslib
from nslib import (
    ClosedHandleError,
    InvalidName,
    InvalidReference,
    NamespaceNotFound,
    NotANamespace,
    NsHandle,
)
from nslib import _syscalls as sys_

root = pytest.mark.root


def cloexec(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as e:
        assert e.errno == errno.EBADF
        return False
    return True


@pytest.fixture
def reaped_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.fixture
def zombie_pid() -> Iterator[int]:
    """The PID of a process that has exited but is not reaped yet."""
    p = subprocess.Popen(["true"])
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)  # wait, but leave the zombie
    with open(f"/proc/{p.pid}/stat") as f:
        assert f.read().split(") ")[1][0] == "Z"
    try:
        yield p.pid
    finally:
        p.wait()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "60"])
    try:
        yield p
    finally:
        p.kill()
        p.wait()


# -- lifecycle -----------------------------------------------------------------


def test_close_is_idempotent(fd_baseline: set[int]) -> None:
    h = NsHandle.current()
    fd = h.fileno()
    assert not h.closed
    h.close()
    assert h.closed
    assert not fd_is_open(fd)
    h.close()
    h.close()
    assert h.closed


def test_fileno_after_close_raises(fd_baseline: set[int]) -> None:
    h = NsHandle.current()
    h.close()
    with pytest.raises(ClosedHandleError, match="closed"):
        h.fileno()
    with pytest.raises(ClosedHandleError):
        _ = h.ns_id
    with pytest.raises(ClosedHandleError):
        h.dup()
    with pytest.raises(ClosedHandleError):
        h.detach()
    assert "closed" in repr(h)


def test_context_manager_closes(fd_baseline: set[int]) -> None:
    with NsHandle.current() as h:
        fd = h.fileno()
        assert fd_is_open(fd)
        assert f"fd={fd}" in repr(h)
    assert h.closed
    assert not fd_is_open(fd)


def test_context_manager_closes_on_error(fd_baseline: set[int]) -> None:
    with pytest.raises(ZeroDivisionError), NsHandle.current() as h:
        1 / 0  # noqa: B018
    assert h.closed


def test_detach_gives_up_ownership(fd_baseline: set[int]) -> None:
    h = NsHandle.current()
    fd = h.detach()
    assert h.closed
    h.close()  # must not close the detached fd
    assert fd_is_open(fd)
    del h
    gc.collect()  # no ResourceWarning (filterwarnings=error) and fd still open
    assert fd_is_open(fd)
    os.close(fd)


def test_dup_is_independent(fd_baseline: set[int]) -> None:
    a = NsHandle.current()
    b = a.dup()
    assert a.fileno() != b.fileno()
    assert a.same_namespace(b)
    assert cloexec(b.fileno())
    a.close()
    assert not b.closed
    assert b.ns_id == thread_ns()
    b.close()


def test_unclosed_handle_warns_and_closes(fd_baseline: set[int]) -> None:
    h = NsHandle.current()
    fd = h.fileno()
    with pytest.warns(ResourceWarning, match="unclosed <NsHandle"):
        del h
        gc.collect()
    with pytest.raises(OSError) as info:
        os.close(fd)
    assert info.value.errno == errno.EBADF


def test_pickling_and_copying_refused(fd_baseline: set[int]) -> None:
    with NsHandle.current() as h:
        for proto in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError, match="cannot be pickled"):
                pickle.dumps(h, protocol=proto)
        with pytest.raises(TypeError):
            copy.copy(h)
        with pytest.raises(TypeError):
            copy.deepcopy(h)


def test_constructor_takes_ownership(fd_baseline: set[int]) -> None:
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    h = NsHandle(fd, what="mine")
    assert h.fileno() == fd
    assert h.what == "mine"
    h.close()
    assert not fd_is_open(fd)


def test_constructor_closes_a_rejected_fd(fd_baseline: set[int]) -> None:
    r, w = os.pipe()
    with pytest.raises(NotANamespace):
        NsHandle(r)
    assert not fd_is_open(r)  # ownership was passed, so it was closed
    os.close(w)


@pytest.mark.parametrize("bad", [-1, -100])
def test_constructor_negative_fd(bad: int, fd_baseline: set[int]) -> None:
    with pytest.raises(OSError) as info:
        NsHandle(bad)
    assert info.value.errno == errno.EBADF
    assert info.value.__context__ is None  # no second error from closing it


@pytest.mark.parametrize("bad", ["3", 3.0, None, True])
def test_constructor_wrong_types(bad: object, fd_baseline: set[int]) -> None:
    with pytest.raises(TypeError):
        NsHandle(bad)  # type: ignore[arg-type]


# -- constructors, identity, O_CLOEXEC ---------------------------------------------


def test_identity_across_constructors(fd_baseline: set[int]) -> None:
    pid, tid = os.getpid(), threading.get_native_id()
    assert threading.current_thread() is threading.main_thread()
    handles = [
        NsHandle.current(),
        NsHandle.from_pid(pid),
        NsHandle.from_thread(pid, tid),
        NsHandle.from_path("/proc/thread-self/ns/net"),
        NsHandle.from_path(f"/proc/{pid}/task/{tid}/ns/net"),
    ]
    try:
        handles.append(NsHandle.from_fd(handles[0].fileno()))
        handles.append(handles[1].dup())
        ids = {h.ns_id for h in handles}
        assert ids == {thread_ns()}
        assert len({h.fileno() for h in handles}) == len(handles)
        for h in handles:
            assert cloexec(h.fileno()), h
            assert h.same_namespace(handles[0])
    finally:
        for h in handles:
            h.close()


@root
def test_new_namespaces_are_distinct(fd_baseline: set[int], home_ns: tuple[int, int]) -> None:
    with NsHandle.new() as a, NsHandle.new() as b:
        assert cloexec(a.fileno())
        assert cloexec(b.fileno())
        assert not a.same_namespace(b)
        assert a.ns_id != home_ns
        with NsHandle.current() as here:
            assert not a.same_namespace(here)
    assert thread_ns() == home_ns  # new() never moves the caller


@root
def test_from_thread_of_a_thread_elsewhere(fd_baseline: set[int]) -> None:
    # A worker living in another namespace: only the per-thread path sees it.
    with NsHandle.new() as target, nslib.pinned(target) as ex:
        tid = ex.submit(threading.get_native_id).result()
        with NsHandle.from_thread(os.getpid(), tid) as h:
            assert h.same_namespace(target)
            assert cloexec(h.fileno())
        with NsHandle.from_pid(os.getpid()) as leader:
            assert not leader.same_namespace(target)


def test_from_fd_dups_and_leaves_the_original(fd_baseline: set[int]) -> None:
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)  # no O_CLOEXEC on purpose
    try:
        h = NsHandle.from_fd(fd)
        assert h.fileno() != fd
        assert cloexec(h.fileno())
        assert h.fileno() >= 3
        h.close()
        assert fd_is_open(fd)
    finally:
        os.close(fd)


@root
def test_from_name_in_a_private_run_dir(run_dir: str, fd_baseline: set[int]) -> None:
    os.makedirs(run_dir)
    place = os.path.join(run_dir, "blue")
    with open(place, "w"):
        pass
    with NsHandle.new() as ns:
        src = f"/proc/{os.getpid()}/fd/{ns.fileno()}".encode()
        sys_.mount(src, place.encode(), b"none", sys_.MS_BIND, "bind for test")
        try:
            with NsHandle.from_name("blue", run_dir=run_dir) as h:
                assert h.same_namespace(ns)
                assert cloexec(h.fileno())
                assert h.what == "name:blue"
        finally:
            sys_.umount2(place.encode(), sys_.MNT_DETACH, "unbind")
    # The placeholder alone is stale: not a namespace, and the error says so.
    with pytest.raises(NotANamespace, match="stale placeholder"):
        NsHandle.from_name("blue", run_dir=run_dir)


# -- bad input -----------------------------------------------------------------


def test_from_pid_reaped_process(reaped_pid: int, fd_baseline: set[int]) -> None:
    with pytest.raises(NamespaceNotFound, match=f"no process {reaped_pid}") as info:
        NsHandle.from_pid(reaped_pid)
    assert isinstance(info.value, FileNotFoundError)


def test_from_pid_zombie(zombie_pid: int, fd_baseline: set[int]) -> None:
    # An exited but unreaped process has no namespaces any more.
    with pytest.raises(NamespaceNotFound):
        NsHandle.from_pid(zombie_pid)


def test_from_pid_never_existed(fd_baseline: set[int]) -> None:
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    with pytest.raises(NamespaceNotFound):
        NsHandle.from_pid(pid_max + 1)
    with pytest.raises(NamespaceNotFound):
        NsHandle.from_pid(2**62)


@pytest.mark.parametrize("bad", [0, -1, True, "1", 1.0, None])
def test_from_pid_invalid(bad: object, fd_baseline: set[int]) -> None:
    with pytest.raises(InvalidReference):
        NsHandle.from_pid(bad)  # type: ignore[arg-type]


def test_from_thread_tid_of_another_process(
    sleeper: subprocess.Popen[bytes], fd_baseline: set[int]
) -> None:
    # sleeper.pid is a real TID, but not one of ours.
    with pytest.raises(NamespaceNotFound, match=f"no thread {sleeper.pid} in process"):
        NsHandle.from_thread(os.getpid(), sleeper.pid)
    # ... and ours is not one of the sleeper's.
    with pytest.raises(NamespaceNotFound, match="no thread"):
        NsHandle.from_thread(sleeper.pid, threading.get_native_id())
    # Its own thread is fine.
    with NsHandle.from_thread(sleeper.pid, sleeper.pid) as h:
        assert h.ns_id == thread_ns()


def test_from_thread_reaped_process(reaped_pid: int, fd_baseline: set[int]) -> None:
    with pytest.raises(NamespaceNotFound, match=f"no process {reaped_pid}"):
        NsHandle.from_thread(reaped_pid, reaped_pid)


@pytest.mark.parametrize(("pid", "tid"), [(0, 1), (1, 0), (-5, 1), (1, True), ("1", 1)])
def test_from_thread_invalid(pid: object, tid: object, fd_baseline: set[int]) -> None:
    with pytest.raises(InvalidReference):
        NsHandle.from_thread(pid, tid)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("path", "exc", "match"),
    [
        ("/etc/hostname", NotANamespace, "not a namespace: path:/etc/hostname"),
        ("/proc/self/ns/mnt", NotANamespace, "a mnt namespace, not a network namespace"),
        ("/proc/self/ns/user", NotANamespace, "a user namespace"),
        ("/etc", NotANamespace, "not a namespace"),
        ("/nonexistent/netns", NamespaceNotFound, "path:/nonexistent/netns"),
        ("", NamespaceNotFound, "path:"),
        ("/tmp/a\0b", InvalidReference, "NUL"),
        ("\udcff\ud800", InvalidReference, "encoded"),
    ],
)
def test_from_path_bad(path: str, exc: type[Exception], match: str, fd_baseline: set[int]) -> None:
    with pytest.raises(exc, match=match):
        NsHandle.from_path(path)


def test_from_path_fifo(tmp_path: os.PathLike[str], fd_baseline: set[int]) -> None:
    fifo = os.path.join(os.fspath(tmp_path), "fifo")
    os.mkfifo(fifo)
    with pytest.raises(NotANamespace):
        NsHandle.from_path(fifo)


def test_from_fd_negative(fd_baseline: set[int]) -> None:
    with pytest.raises(OSError) as info:
        NsHandle.from_fd(-1)
    assert info.value.errno == errno.EBADF


def test_from_fd_closed(fd_baseline: set[int]) -> None:
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    os.close(fd)
    with pytest.raises(OSError) as info:
        NsHandle.from_fd(fd)
    assert info.value.errno == errno.EBADF


def test_from_fd_not_a_namespace(fd_baseline: set[int]) -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(NotANamespace, match=f"fd {r}"):
            NsHandle.from_fd(r)
        assert fd_is_open(r)  # from_fd never takes the caller's fd
    finally:
        os.close(r)
        os.close(w)


def test_from_fd_wrong_namespace_type(fd_baseline: set[int]) -> None:
    fd = os.open("/proc/thread-self/ns/ipc", os.O_RDONLY)
    try:
        with pytest.raises(NotANamespace, match="ipc"):
            NsHandle.from_fd(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\0b", "x" * 256, "\ud800"])
def test_from_name_invalid(bad: str, run_dir: str, fd_baseline: set[int]) -> None:
    with pytest.raises(InvalidName):
        NsHandle.from_name(bad, run_dir=run_dir)


def test_from_name_missing_never_creates(run_dir: str, fd_baseline: set[int]) -> None:
    with pytest.raises(NamespaceNotFound, match="no named namespace 'nope'"):
        NsHandle.from_name("nope", run_dir=run_dir)
    assert not os.path.exists(os.path.join(run_dir, "nope"))


# -- regressions from the code review -------------------------------------------


def test_from_name_refuses_a_nul_in_run_dir() -> None:
    with pytest.raises(nslib.InvalidReference):
        nslib.NsHandle.from_name("net", run_dir="/proc/self/ns\0/x")


def test_from_name_reports_a_wrong_namespace_type_not_a_stale_placeholder(
    run_dir: str, unique: str
) -> None:
    os.makedirs(run_dir)
    path = os.path.join(run_dir, unique)
    open(path, "w").close()
    subprocess.run(["mount", "--bind", "/proc/thread-self/ns/uts", path], check=True)
    with pytest.raises(nslib.NotANamespace, match="uts namespace") as info:
        nslib.NsHandle.from_name(unique, run_dir=run_dir)
    assert "stale" not in str(info.value)
    assert info.value.nstype != 0
