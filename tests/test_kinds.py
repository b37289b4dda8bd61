"""NsKind, Pidfd and Target: the values and the owned pidfd."""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess

import pytest

from nslib import _syscalls as sys_
from nslib.errors import InvalidReference, NamespaceNotFound, NotANamespace
from nslib.kinds import ALL_KINDS, NsKind, Pidfd, Target

pytestmark = pytest.mark.root


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_kind_flag_is_what_the_kernel_reports(kind: NsKind, fd_baseline: object) -> None:
    # NS_GET_NSTYPE on the thread's own namespace file gives the CLONE_NEW* flag.
    fd, nstype = sys_.open_kind(
        f"/proc/thread-self/ns/{kind.proc_name}".encode(), 0, kind.proc_name
    )
    try:
        assert nstype == kind.flag
        assert NsKind(nstype) is kind
        assert sys_.check_kind(fd, kind.flag, "x") == kind.flag
    finally:
        os.close(fd)


def test_kind_order_and_names() -> None:
    # nsenter's join order.
    assert [k.proc_name for k in ALL_KINDS] == [
        "user",
        "cgroup",
        "ipc",
        "uts",
        "net",
        "pid",
        "mnt",
        "time",
    ]
    assert NsKind.parse("NET") is NsKind.NET
    assert NsKind.parse("mount") is NsKind.MNT
    assert NsKind.parse(NsKind.UTS) is NsKind.UTS
    assert str(NsKind.CGROUP) == "cgroup"
    with pytest.raises(InvalidReference, match="not a kind"):
        NsKind.parse("netw")


def test_check_kind_refuses_other_kinds_and_non_namespaces(fd_baseline: object) -> None:
    with pytest.raises(NotANamespace, match="a uts namespace, not a network namespace") as info:
        sys_.open_kind(b"/proc/thread-self/ns/uts", NsKind.NET.flag, "uts as net")
    assert info.value.nstype == NsKind.UTS.flag
    with pytest.raises(NotANamespace, match="not a namespace"):
        sys_.open_kind(b"/etc/hostname", 0, "a plain file")
    with pytest.raises(NamespaceNotFound):
        sys_.open_kind(b"/nonexistent", 0, "nothing")
    with pytest.raises(OSError) as err:
        sys_.check_kind(2**20, 0, "a closed fd")
    assert err.value.errno == 9


def test_pidfd_lifecycle(fd_baseline: object) -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        pidfd = Pidfd.open(child.pid)
        assert pidfd.pid == child.pid
        assert not pidfd.exited() and not pidfd.wait_exit(0.01)
        pidfd.send_signal(0)
        fd = pidfd.fileno()
        assert os.get_inheritable(fd) is False
        assert repr(pidfd) == f"<Pidfd fd={fd} (pid {child.pid})>"
        pidfd.send_signal(signal.SIGTERM)
        assert pidfd.wait_exit(10)
        assert pidfd.exited()
        child.wait()
        with pytest.raises(NamespaceNotFound, match="has exited"):
            pidfd.send_signal(0)
        with pytest.raises(NamespaceNotFound, match="has exited"):
            pidfd.alive_check()
        pidfd.close()
        pidfd.close()  # idempotent
        assert pidfd.closed
        with pytest.raises(ValueError, match="closed"):
            pidfd.fileno()
    finally:
        child.kill()
        child.wait()


def test_pidfd_refuses_bad_pids(fd_baseline: object) -> None:
    with pytest.raises(NamespaceNotFound, match="no process"):
        Pidfd.open(2**22 + 1)
    for bad in (0, -1, True, "1"):
        with pytest.raises(InvalidReference):
            Pidfd.open(bad)  # type: ignore[arg-type]


def test_pidfd_of_a_thread_is_not_a_process(fd_baseline: object) -> None:
    import threading

    ready, done = threading.Event(), threading.Event()
    tid = [0]

    def body() -> None:
        tid[0] = threading.get_native_id()
        ready.set()
        done.wait()

    t = threading.Thread(target=body)
    t.start()
    ready.wait()
    try:
        with pytest.raises(NamespaceNotFound):
            Pidfd.open(tid[0])
    finally:
        done.set()
        t.join()


def test_unclosed_pidfd_warns_and_closes(fd_baseline: object) -> None:
    pidfd = Pidfd.open(os.getpid())
    fd = pidfd.fileno()
    with pytest.warns(ResourceWarning, match="unclosed <Pidfd"):
        del pidfd
        gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_pidfd_is_not_picklable_and_is_a_context_manager(fd_baseline: object) -> None:
    with Pidfd.open(os.getpid()) as pidfd:
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(pidfd)
        detached = pidfd.detach()
    assert pidfd.closed
    os.close(detached)


def test_target_value() -> None:
    assert Target(1).all and Target(1).kinds == ALL_KINDS
    t = Target(42, kinds=["mnt", NsKind.NET])
    assert not t.all
    assert t.kinds == (NsKind.NET, NsKind.MNT)  # join order, not the caller's
    assert t == Target(42, kinds=[NsKind.MNT, "net"]) and hash(t) == hash(
        Target(42, ["net", "mnt"])
    )
    assert repr(t) == "Target(42, kinds=['net', 'mnt'])"
    for bad in (0, -3, True, 1.5):
        with pytest.raises(InvalidReference):
            Target(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidReference, match="at least one"):
        Target(1, kinds=[])
    with pytest.raises(InvalidReference, match="not a kind"):
        Target(1, kinds=["bogus"])


# -- NsHandle of any kind ---------------------------------------------------------


def test_handles_know_their_kind(fd_baseline: object) -> None:
    from nslib import NsHandle

    me = os.getpid()
    for kind in ALL_KINDS:
        link = os.readlink(f"/proc/thread-self/ns/{kind.proc_name}")
        ino = int(link.split("[")[1][:-1])
        handles = [
            NsHandle.current(kind),
            NsHandle.from_pid(me, kind=kind),
            NsHandle.from_thread(me, me, kind=kind.proc_name),
            NsHandle.from_path(f"/proc/thread-self/ns/{kind.proc_name}", kind=None),
        ]
        with Pidfd.open(me) as pidfd:
            handles.append(NsHandle.from_pidfd(pidfd, kind))
            handles.append(NsHandle.from_pidfd(pidfd.fileno(), kind))
        handles.append(NsHandle.from_fd(handles[0].fileno(), kind=kind))
        handles.append(handles[0].dup())
        try:
            for h in handles:
                assert h.kind is kind, h
                assert h.ns_id[1] == main_thread_ino(kind) or h.ns_id[1] == ino
                head = "<NsHandle fd=" if kind is NsKind.NET else f"<NsHandle {kind.proc_name} fd="
                assert repr(h).startswith(head), h
        finally:
            for h in handles:
                h.close()


def main_thread_ino(kind: NsKind) -> int:
    return os.stat(f"/proc/self/ns/{kind.proc_name}").st_ino


def test_handles_mean_net_unless_told(fd_baseline: object) -> None:
    from nslib import NsHandle

    with NsHandle.current() as net:
        assert net.kind is NsKind.NET
    with pytest.raises(NotANamespace, match="a uts namespace, not a network namespace"):
        NsHandle.from_path("/proc/thread-self/ns/uts")
    with NsHandle.current("uts") as uts:
        with pytest.raises(NotANamespace, match="a uts namespace, not a network namespace"):
            NsHandle.from_fd(uts.fileno())
        with pytest.raises(NotANamespace, match="a uts namespace, not a ipc namespace"):
            NsHandle.from_fd(uts.fileno(), kind="ipc")
        with pytest.raises(NotANamespace):
            NsHandle(os.dup(uts.fileno()))  # ownership passed: closed on refusal
        owned = NsHandle(os.dup(uts.fileno()), kind="uts")
        assert owned.kind is NsKind.UTS
        owned.close()
    with pytest.raises(InvalidReference):
        NsHandle.current(None)
    with pytest.raises(InvalidReference, match="not a kind"):
        NsHandle.from_pid(os.getpid(), kind="nett")


def test_handle_from_the_pidfd_of_an_exited_process(fd_baseline: object) -> None:
    from nslib import NsHandle

    child = subprocess.Popen(["sleep", "30"])
    with Pidfd.open(child.pid) as pidfd:
        raw = os.dup(pidfd.fileno())
        child.kill()
        child.wait()
        try:
            for ref in (pidfd, raw):
                with pytest.raises(NamespaceNotFound):
                    NsHandle.from_pidfd(ref, "uts")
        finally:
            os.close(raw)
