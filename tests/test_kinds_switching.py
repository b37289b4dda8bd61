"""entered/switch_to for UTS, IPC, CGROUP and MNT, several at once, on threads."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import missing
from hypothesis import given, settings
from hypothesis import strategies as st

import nslib
from nslib import NsHandle
from nslib.errors import (
    InvalidReference,
    NamespaceRestoreError,
    NotANamespace,
    NotSwitchableError,
)
from nslib.kinds import NsKind, Target

pytestmark = pytest.mark.root

KINDS = ("net", "uts", "ipc", "mnt", "cgroup")


@contextlib.contextmanager
def unshared(name: str) -> Iterator[int]:
    """A process in new mount, UTS, IPC, net and cgroup namespaces, renamed *name*."""
    if shutil.which("unshare") is None:
        missing("needs unshare (util-linux)")
    proc = subprocess.Popen(
        ["unshare", "-muinC", "--kill-child", "sh", "-c",
         f"hostname {name}; echo ok; exec >/dev/null; exec sleep 600"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        with proc.stdout:
            assert proc.stdout.readline() == b"ok\n"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def targets() -> Iterator[list[int]]:
    before = socket.gethostname()
    with unshared("nslib-a") as a, unshared("nslib-b") as b, unshared("nslib-c") as c:
        yield [a, b, c]
    assert socket.gethostname() == before


class Seen:
    """The calling thread's namespaces, read through its own /proc entry.

    Opened at home: inside another mount namespace /proc/thread-self may not
    resolve, but this directory still names this thread.
    """

    def __init__(self) -> None:
        self.dir = os.open("/proc/thread-self/ns", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def links(self) -> dict[str, str]:
        return {k: os.readlink(k, dir_fd=self.dir) for k in KINDS}

    def close(self) -> None:
        os.close(self.dir)


def link_of(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def fs_id() -> tuple[tuple[int, int], tuple[int, int]]:
    """(root, cwd) identity of the calling thread."""
    r, c = os.stat("/"), os.stat(".")
    return (r.st_dev, r.st_ino), (c.st_dev, c.st_ino)


# -- one kind at a time ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uts", "ipc", "cgroup", "mnt", "net"])
def test_entered_one_kind(kind: str, targets: list[int], fd_baseline: object) -> None:
    pid = targets[0]
    box: list[BaseException] = []

    def body() -> None:
        seen = Seen()
        try:
            home, host, fs = seen.links(), socket.gethostname(), fs_id()
            with NsHandle.from_pid(pid, kind=kind) as h, nslib.entered(h) as got:
                assert got is h
                now = seen.links()
                assert now[kind] == link_of(pid, kind)
                assert {k: v for k, v in now.items() if k != kind} == {
                    k: v for k, v in home.items() if k != kind
                }
                if kind == "uts":
                    assert socket.gethostname() == "nslib-a"
                if kind == "mnt":
                    assert os.getcwd() == "/"  # setns puts it at the namespace's root
            assert seen.links() == home
            assert socket.gethostname() == host
            assert fs_id() == fs  # root and cwd as they were
        except BaseException as e:
            box.append(e)
        finally:
            seen.close()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert box == []


def test_switch_to_and_revert_a_group(targets: list[int], fd_baseline: object) -> None:
    pid = targets[1]
    box: list[BaseException] = []

    def body() -> None:
        seen = Seen()
        try:
            home = seen.links()
            with contextlib.ExitStack() as stack:
                hs = [stack.enter_context(NsHandle.from_pid(pid, kind=k)) for k in ("uts", "mnt")]
                revert = nslib.switch_to(*hs)
                assert seen.links()["mnt"] == link_of(pid, "mnt")
                assert socket.gethostname() == "nslib-b"
                assert nslib.switch_depth() == 2  # one entry per kind, one switch
                revert()
                assert revert.done
                revert()  # idempotent
            assert seen.links() == home
        except BaseException as e:
            box.append(e)
        finally:
            seen.close()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert box == []


def test_entered_a_target_joins_through_its_pidfd(targets: list[int], fd_baseline: object) -> None:
    pid = targets[2]
    box: list[BaseException] = []

    def body() -> None:
        seen = Seen()
        try:
            home = seen.links()
            with nslib.entered(Target(pid, kinds=["net", "uts", "ipc", "mnt", "cgroup"])):
                assert seen.links() == {k: link_of(pid, k) for k in KINDS}
                assert socket.gethostname() == "nslib-c"
            assert seen.links() == home
            # Every kind at once: the user, PID and time namespaces are left out.
            with nslib.entered(Target(pid)):
                assert seen.links() == {k: link_of(pid, k) for k in KINDS}
            assert seen.links() == home
        except BaseException as e:
            box.append(e)
        finally:
            seen.close()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert box == []


def test_all_or_nothing(targets: list[int], fd_baseline: object) -> None:
    pid = targets[0]
    box: list[BaseException] = []

    def body() -> None:
        seen = Seen()
        try:
            home, fs = seen.links(), fs_id()
            uts = NsHandle.from_pid(pid, kind="uts")
            ipc = NsHandle.from_pid(pid, kind="ipc")
            mnt = NsHandle.from_pid(pid, kind="mnt")
            # Joining a mount namespace also needs CAP_SYS_CHROOT: without
            # it (on this thread only), UTS and IPC are entered first, MNT
            # fails, and the two are moved back.
            try:
                drop_cap(18)  # CAP_SYS_CHROOT
                with pytest.raises(PermissionError, match="mnt namespace"):
                    nslib.entered(uts, ipc, mnt).__enter__()
                with pytest.raises(PermissionError, match="mnt namespace"):
                    nslib.switch_to(uts, mnt)
            finally:
                for h in (uts, ipc, mnt):
                    h.close()
            assert seen.links() == home
            assert fs_id() == fs
            assert nslib.switch_depth() == 0
            assert not nslib.thread_poisoned()
        except BaseException as e:
            box.append(e)
        finally:
            seen.close()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert box == []


def drop_sys_admin() -> None:
    """Drop CAP_SYS_ADMIN from the calling thread's effective set (capset is per thread)."""
    drop_cap(21)


def drop_cap(cap: int) -> None:
    """Drop capability *cap* from the calling thread's effective set."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint32) for name in ("eff", "perm", "inh")]

    hdr = Header(0x20080522, 0)
    data = (Data * 2)()
    assert libc.capget(ctypes.byref(hdr), data) == 0
    data[0].eff &= ~(1 << cap)
    assert libc.capset(ctypes.byref(hdr), data) == 0


def test_a_failed_restore_poisons_whatever_the_kind(targets: list[int]) -> None:
    pid = targets[0]
    box: list[BaseException] = []

    def body() -> None:
        try:
            with NsHandle.from_pid(pid, kind="uts") as uts:
                with pytest.raises(NamespaceRestoreError), nslib.entered(uts):
                    drop_sys_admin()  # now it cannot go back
                assert nslib.thread_poisoned()
                with NsHandle.current("ipc") as ipc, pytest.raises(NamespaceRestoreError):
                    nslib.entered(ipc).__enter__()
        except BaseException as e:
            box.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert box == []


# -- refused kinds and bad input ----------------------------------------------------


@pytest.mark.parametrize("kind", ["user", "pid", "time"])
def test_user_pid_time_are_refused_with_a_pointer_to_spawn(kind: str, fd_baseline: object) -> None:
    before = Seen()
    try:
        home = before.links()
        with NsHandle.current(kind) as h:
            with pytest.raises(NotSwitchableError, match=r"nslib\.spawn") as info:
                nslib.entered(h).__enter__()
            assert info.value.kind is NsKind.parse(kind)
            with pytest.raises(NotSwitchableError):
                nslib.switch_to(h)
        with pytest.raises(NotSwitchableError):
            nslib.entered(Target(os.getpid(), kinds=["uts", kind])).__enter__()
        assert before.links() == home and nslib.switch_depth() == 0
    finally:
        before.close()


def test_wrong_kind_for_network_only_calls(targets: list[int], fd_baseline: object) -> None:
    with NsHandle.from_pid(targets[0], kind="uts") as uts:
        with pytest.raises(NotANamespace, match="not a network namespace"):
            nslib.socket_in(uts)
        with pytest.raises(NotANamespace):
            nslib.run_in(uts, os.getpid)
    with (
        NsHandle.current("uts") as a,
        NsHandle.current("uts") as b,
        pytest.raises(InvalidReference, match="twice"),
    ):
        nslib.entered(a, b).__enter__()
    assert nslib.switch_depth() == 0


def test_mount_switch_keeps_other_threads_cwd_and_root(targets: list[int]) -> None:
    # The first mount switch gives the thread its own cwd and root
    # (unshare(CLONE_FS)); the rest of the process keeps sharing.
    main = fs_id()
    box: list[BaseException] = []
    ready, go_on = threading.Event(), threading.Event()

    def body() -> None:
        try:
            os.chdir("/usr")  # still shared: moves the whole process
            with NsHandle.from_pid(targets[0], kind="mnt") as mnt, nslib.entered(mnt):
                os.chdir("/tmp")  # its own now
                ready.set()
                go_on.wait(10)
            assert os.getcwd() == "/usr"
        except BaseException as e:
            box.append(e)
            ready.set()

    old = os.getcwd()
    t = threading.Thread(target=body)
    t.start()
    try:
        ready.wait(10)
        assert os.getcwd() == "/usr"  # the thread's chdir inside did not reach us
        go_on.set()
        t.join()
    finally:
        os.chdir(old)
    assert box == []
    assert fs_id()[0] == main[0]


# -- eight threads, random nesting ----------------------------------------------------

STEP = st.lists(st.sampled_from(KINDS[:4]), min_size=1, max_size=3, unique=True)
PROGRAM = st.lists(st.tuples(st.integers(0, 2), STEP, st.booleans()), min_size=1, max_size=4)


@settings(max_examples=25, deadline=None)
@given(programs=st.lists(PROGRAM, min_size=8, max_size=8), seed=st.integers(0, 2**16))
def test_eight_threads_nesting_at_random(
    targets: list[int], programs: list[list[tuple[int, list[str], bool]]], seed: int
) -> None:
    expected_host = {i: f"nslib-{'abc'[i]}" for i in range(3)}
    handles = {
        (i, k): NsHandle.from_pid(pid, kind=k) for i, pid in enumerate(targets) for k in KINDS
    }
    links = {(i, k): link_of(pid, k) for i, pid in enumerate(targets) for k in KINDS}
    failures: list[BaseException] = []
    main_before = (Seen(), fs_id(), socket.gethostname())
    main_links = main_before[0].links()
    stop = threading.Event()

    def watcher() -> None:
        # A thread that never switches: it must never see itself move.
        seen = Seen()
        try:
            home, fs = seen.links(), fs_id()
            while not stop.is_set():
                assert seen.links() == home
                assert fs_id() == fs
        except BaseException as e:
            failures.append(e)
        finally:
            seen.close()

    def worker(program: list[tuple[int, list[str], bool]], rnd: random.Random) -> None:
        seen = Seen()
        try:
            home, fs, host = seen.links(), fs_id(), socket.gethostname()
            want = dict(home)
            want_host = host
            with contextlib.ExitStack() as stack:
                for target, kinds, as_switch in program:
                    hs = [handles[(target, k)] for k in kinds]
                    if as_switch:
                        stack.callback(nslib.switch_to(*hs))
                    else:
                        stack.enter_context(nslib.entered(*hs))
                    for k in kinds:
                        want[k] = links[(target, k)]
                    if "uts" in kinds:
                        want_host = expected_host[target]
                    assert seen.links() == want
                    assert socket.gethostname() == want_host
                    if rnd.random() < 0.3:
                        threading.Event().wait(0.001)  # let the others run
            assert seen.links() == home
            assert socket.gethostname() == host
            assert fs_id() == fs
            assert nslib.switch_depth() == 0
        except BaseException as e:
            failures.append(e)
        finally:
            seen.close()

    w = threading.Thread(target=watcher)
    w.start()
    rnd = random.Random(seed)
    threads = [
        threading.Thread(target=worker, args=(p, random.Random(rnd.random()))) for p in programs
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop.set()
        w.join()
        for h in handles.values():
            h.close()
    seen_main, fs_main, host_main = main_before
    try:
        assert failures == []
        assert seen_main.links() == main_links
        assert fs_id() == fs_main and socket.gethostname() == host_main
    finally:
        seen_main.close()


def test_mount_switch_needs_its_own_fs_once(targets: list[int]) -> None:
    from nslib import _syscalls as sys_

    box: list[object] = []

    def body() -> None:
        box.append(sys_.fs_private())
        with NsHandle.from_pid(targets[0], kind="mnt") as m, nslib.entered(m):
            box.append(sys_.fs_private())
        box.append(sys_.fs_private())

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert box == [False, True, True]


def test_errno_of_a_failed_join_is_kept() -> None:
    # EINVAL from setns on a file of the right kind that the kernel refuses
    # (a UTS namespace given to the network-only socket_in) stays typed.
    assert errno.EINVAL == 22
    with NsHandle.current("uts") as uts, pytest.raises(NotANamespace):
        nslib.socket_in(uts)


def test_current_kind_works_inside_a_container_mount_namespace() -> None:
    # /proc inside another mount namespace may not show this thread; the
    # handle is read through the thread's own /proc entry.
    box: list[object] = []
    with unshared("nslib-d") as pid:
        proc_private = subprocess.Popen(
            ["unshare", "-fmp", "--mount-proc", "--kill-child", "sleep", "600"]
        )
        try:
            deadline = 100
            while (
                deadline
                and not Path(f"/proc/{proc_private.pid}/task/{proc_private.pid}/children")
                .read_text()
                .split()
            ):
                threading.Event().wait(0.02)
                deadline -= 1
            (child,) = (
                Path(f"/proc/{proc_private.pid}/task/{proc_private.pid}/children")
                .read_text()
                .split()
            )

            def body() -> None:
                # Opened here: inside, this /proc shows another PID namespace.
                with (
                    NsHandle.from_pid(pid, kind="uts") as u2,
                    NsHandle.from_pid(int(child), kind="mnt") as m,
                    nslib.entered(m),
                ):
                    box.append(os.path.exists("/proc/thread-self"))
                    with NsHandle.current("uts") as u:
                        box.append(u.ns_id[1])
                    with nslib.entered(u2):  # a nested switch opens where it is, too
                        box.append(socket.gethostname())

            t = threading.Thread(target=body)
            t.start()
            t.join()
        finally:
            proc_private.kill()
            proc_private.wait()
    assert box[0] is False
    assert box[1] == os.stat("/proc/thread-self/ns/uts").st_ino
    assert box[2] == "nslib-d"


def test_entered_target_gone_leaves_nothing(fd_baseline: object) -> None:
    from nslib.errors import NamespaceNotFound

    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its PID names nothing (or, later, someone else)
    with pytest.raises(NamespaceNotFound):
        nslib.entered(Target(child.pid, kinds=["uts"])).__enter__()
    zombie = subprocess.Popen(["true"])
    try:
        while (
            Path(f"/proc/{zombie.pid}/stat")
            .read_text(errors="surrogateescape")
            .rsplit(")", 1)[1]
            .split()[0]
            != "Z"
        ):
            threading.Event().wait(0.01)
        with pytest.raises(NamespaceNotFound, match="has exited"):
            nslib.switch_to(Target(zombie.pid, kinds=["uts", "ipc"]))
    finally:
        zombie.wait()
    assert nslib.switch_depth() == 0
