"""Smoke tests of the C boundary that need no privileges.

Opening and checking namespace files of our own process works for any user,
so everything here runs unprivileged: constants, the errno -> exception
mapping, and the typed errors for fds and files that are not namespaces.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import threading
from pathlib import Path

import pytest
from helpers import thread_ns

from nslib import (
    InvalidReference,
    NamespaceNotFound,
    NamespaceRestoreError,
    NotANamespace,
    NslibError,
)
from nslib import _syscalls as sys_
from nslib.errors import oserror


def test_constants_match_the_kernel_abi() -> None:
    assert sys_.CLONE_NEWNET == 0x40000000
    assert sys_.CLONE_NEWNS == 0x00020000
    assert sys_.MNT_DETACH == 2
    assert sys_.MS_BIND == 4096
    assert sys_.MS_REC == 16384
    assert sys_.MS_SHARED == 1 << 20
    assert sys_.MS_PRIVATE == 1 << 18
    assert sys_.MS_SLAVE == 1 << 19
    assert sys_.MS_RDONLY == 1
    assert sys_.lib.NSLIB_ABI == sys_._ABI


def test_private_return_codes_are_distinct_and_below_minus_one() -> None:
    codes = [sys_._ENOTNS, sys_._EWRONGTYPE, sys_._EPOISONED, sys_.EORDER]
    assert len(set(codes)) == len(codes)
    assert all(c < -1 for c in codes)


@pytest.mark.parametrize(
    ("err", "cls"),
    [
        (errno.ENOENT, NamespaceNotFound),
        (errno.ESRCH, NamespaceNotFound),
        (errno.EPERM, PermissionError),
        (errno.EACCES, PermissionError),
        (errno.EBADF, OSError),
        (errno.EINVAL, OSError),
        (errno.EEXIST, FileExistsError),
    ],
)
def test_errno_mapping(err: int, cls: type[OSError]) -> None:
    e = oserror(err, "pid:42", "/proc/42/ns/net")
    assert isinstance(e, cls)
    assert e.errno == err
    assert "pid:42" in str(e)
    assert e.filename == "/proc/42/ns/net"
    if cls is NamespaceNotFound:
        assert isinstance(e, FileNotFoundError)
        assert isinstance(e, NslibError)


def test_error_hierarchy() -> None:
    assert issubclass(NotANamespace, ValueError)
    assert issubclass(InvalidReference, ValueError)
    assert issubclass(NamespaceRestoreError, OSError)
    for cls in (NotANamespace, InvalidReference, NamespaceRestoreError, NamespaceNotFound):
        assert issubclass(cls, NslibError)


def test_open_current_is_the_calling_thread(fd_baseline: set[int]) -> None:
    fd = sys_.open_current()
    try:
        st = os.fstat(fd)
        assert (st.st_dev, st.st_ino) == thread_ns()
        sys_.check_netns(fd, "current")  # no raise
        assert fd not in fd_baseline
    finally:
        os.close(fd)


def test_check_netns_negative_fd() -> None:
    with pytest.raises(OSError) as info:
        sys_.check_netns(-1, "fd -1")
    assert info.value.errno == errno.EBADF
    assert "fd -1" in str(info.value)


def test_check_netns_closed_fd() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        sys_.check_netns(r, f"fd {r}")
    assert info.value.errno == errno.EBADF


@pytest.mark.parametrize("kind", ["pipe", "socket", "file", "dir", "devnull"])
def test_check_netns_not_a_namespace(kind: str, fd_baseline: set[int]) -> None:
    fds: list[int] = []
    s = None
    if kind == "pipe":
        fds = list(os.pipe())
        fd = fds[0]
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        fd = s.fileno()
    else:
        path = {"file": "/etc/hostname", "dir": "/", "devnull": "/dev/null"}[kind]
        fd = os.open(path, os.O_RDONLY)
        fds = [fd]
    try:
        with pytest.raises(NotANamespace, match="not a namespace: my fd"):
            sys_.check_netns(fd, "my fd")
    finally:
        for f in fds:
            os.close(f)
        if s is not None:
            s.close()


def test_check_netns_wrong_type_names_the_type(fd_baseline: set[int]) -> None:
    fd = os.open("/proc/thread-self/ns/uts", os.O_RDONLY)
    try:
        with pytest.raises(NotANamespace, match="a uts namespace, not a network namespace"):
            sys_.check_netns(fd, "uts")
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("path", "exc", "match"),
    [
        ("/etc/hostname", NotANamespace, "not a namespace"),
        ("/proc/self/ns/mnt", NotANamespace, "a mnt namespace, not a network namespace"),
        ("/proc/self/ns/uts", NotANamespace, "a uts namespace"),
        ("/", NotANamespace, "not a namespace"),
        ("/dev/null", NotANamespace, "not a namespace"),
        ("/nonexistent/nslib-test", NamespaceNotFound, "No such file"),
    ],
)
def test_open_netns_bad_files(
    path: str, exc: type[Exception], match: str, fd_baseline: set[int]
) -> None:
    with pytest.raises(exc, match=match) as info:
        sys_.open_netns(path.encode(), f"path:{path}")
    assert f"path:{path}" in str(info.value)


def test_open_netns_fifo_does_not_hang(tmp_path: os.PathLike[str], fd_baseline: set[int]) -> None:
    # A FIFO opened O_RDONLY without O_NONBLOCK blocks until a writer comes.
    fifo = os.path.join(os.fspath(tmp_path), "fifo")
    os.mkfifo(fifo)
    done: list[BaseException] = []

    def attempt() -> None:
        try:
            sys_.open_netns(fifo.encode(), "fifo")
        except BaseException as e:
            done.append(e)

    t = threading.Thread(target=attempt)
    t.start()
    t.join(5)
    if t.is_alive():  # unblock it before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join()
        pytest.fail("opening a FIFO as a namespace blocked")
    assert len(done) == 1
    assert isinstance(done[0], NotANamespace)


def test_open_netns_relative_to_dirfd(fd_baseline: set[int]) -> None:
    d = os.open("/proc/self/ns", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = sys_.open_netns(b"net", "net", dirfd=d)
        os.close(fd)
        with pytest.raises(NotANamespace):
            sys_.open_netns(b"ipc", "ipc", dirfd=d)
    finally:
        os.close(d)


@pytest.mark.parametrize("bad", ["/tmp/a\0b", b"/tmp/\0", "\ud800"])
def test_encode_path_rejects_unusable_paths(bad: str | bytes) -> None:
    with pytest.raises(InvalidReference):
        sys_.encode_path(bad, "bad path")


def test_encode_path_keeps_surrogateescape() -> None:
    # Undecodable bytes round-trip through os.fsdecode, as for any file name.
    assert sys_.encode_path(os.fsdecode(b"/tmp/\xff"), "x") == b"/tmp/\xff"


def test_fresh_thread_state() -> None:
    box: list[tuple[int, bool]] = []
    t = threading.Thread(target=lambda: box.append((sys_.depth(), sys_.poisoned())))
    t.start()
    t.join()
    assert box == [(0, False)]


def test_leave_without_enter_is_out_of_order() -> None:
    assert sys_.raw_leave(1, 0) == sys_.EORDER
    assert sys_.raw_leave(0, 0) == sys_.EORDER
    with pytest.raises(RuntimeError, match="out of order"):
        sys_.leave(1, "nothing")
    assert sys_.depth() == 0


def test_pidfd_open_and_getfd_are_cloexec(fd_baseline: set[int]) -> None:
    r, w = os.pipe()
    try:
        pidfd = sys_.pidfd_open(os.getpid())
        try:
            assert not os.get_inheritable(pidfd)
            dup = sys_.pidfd_getfd(pidfd, w)
            try:
                assert not os.get_inheritable(dup)
                assert os.fstat(dup).st_ino == os.fstat(w).st_ino
            finally:
                os.close(dup)
        finally:
            os.close(pidfd)
    finally:
        os.close(r)
        os.close(w)


def test_pidfd_errors_are_typed() -> None:
    with pytest.raises(NamespaceNotFound):
        sys_.pidfd_open(2**22 + 1)  # above pid_max's ceiling: never a process
    pidfd = sys_.pidfd_open(os.getpid())
    try:
        with pytest.raises(OSError) as info:
            sys_.pidfd_getfd(pidfd, 2**20)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(pidfd)


def _fdinfo_mnt_id(fd: int) -> int:
    with open(f"/proc/thread-self/fdinfo/{fd}", "rb") as f:
        return int(next(line for line in f if line.startswith(b"mnt_id:")).split()[1])


def test_stat_mount_is_stat_plus_the_mount_id(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_PATH | os.O_CLOEXEC)
    try:
        dev, ino, mnt = sys_.stat_mount(os.fsencode(tmp_path))
        st = os.stat(tmp_path)
        assert (dev, ino) == (st.st_dev, st.st_ino)
        assert mnt == _fdinfo_mnt_id(fd)
        assert sys_.stat_mount(b"", dirfd=fd) == (dev, ino, mnt)
    finally:
        os.close(fd)
    link = tmp_path / "link"
    link.symlink_to("nowhere\udcff")
    with pytest.raises(FileNotFoundError):
        sys_.stat_mount(os.fsencode(link))
    assert sys_.stat_mount(os.fsencode(link), follow=False)[1] == os.lstat(link).st_ino


@pytest.mark.root
def test_mounts_under_lists_exactly_the_child_mounts(tmp_path: Path) -> None:
    top, child = tmp_path / "top", tmp_path / "top" / "child"
    top.mkdir()
    sys_.mount(b"nslib-test", os.fsencode(top), b"tmpfs", 0, "tmpfs on top")
    try:
        top_id = sys_.stat_mount(os.fsencode(top), unique=True)[2]
        assert top_id is not None
        assert sys_.mounts_under(top_id) == b""
        child.mkdir()
        sys_.mount(b"nslib-test", os.fsencode(child), b"tmpfs", 0, "tmpfs on child")
        try:
            child_id = sys_.stat_mount(os.fsencode(child), unique=True)[2]
            assert child_id is not None and child_id != top_id
            assert sys_.mounts_under(top_id) == child_id.to_bytes(8, sys.byteorder)
        finally:
            sys_.umount2(os.fsencode(child), 0, "child")
        assert sys_.mounts_under(top_id) == b""
    finally:
        sys_.umount2(os.fsencode(top), 0, "top")


def _header_names() -> tuple[set[str], set[str]]:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "csrc" / "nslib.h").read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    consts = set(re.findall(r"^#define\s+(\w+)", text, flags=re.M))
    funcs = set(re.findall(r"\b(nslib_\w+)\s*\(", text))
    return consts, funcs


def test_stub_matches_header() -> None:
    import ast
    from pathlib import Path

    stub = ast.parse((Path(sys_.__file__).parent / "_native.pyi").read_text())
    lib_cls = next(n for n in stub.body if isinstance(n, ast.ClassDef) and n.name == "_Lib")
    stub_funcs = {n.name for n in lib_cls.body if isinstance(n, ast.FunctionDef)}
    stub_consts = {
        n.target.id
        for n in lib_cls.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    consts, funcs = _header_names()
    assert stub_funcs == funcs, "nslib/_native.pyi and csrc/nslib.h list different functions"
    assert stub_consts == consts, "nslib/_native.pyi and csrc/nslib.h list different constants"
    for name in funcs | consts:
        assert hasattr(sys_.lib, name), f"the built extension lacks {name}: rebuild"
