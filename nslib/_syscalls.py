"""The C boundary: typed wrappers over ``nslib._native``.

This is the only module that imports the built extension.  Each wrapper
reads ``ffi.errno`` immediately after its call (the next C call would
overwrite it) and raises an ``OSError`` that names what was being done.
"""

from __future__ import annotations

import errno
import os
from typing import Any, NoReturn

from . import _native
from .errors import NamespaceRestoreError, NotANamespace, oserror

ffi = _native.ffi
lib = _native.lib

# A stale .so in an editable checkout would silently miss newer shims.
_ABI = 10
if lib.NSLIB_ABI != _ABI:  # pragma: no cover
    raise ImportError(f"nslib._native ABI {lib.NSLIB_ABI} != {_ABI}; rebuild (pip install -e .)")

CLONE_NEWNET: int = lib.CLONE_NEWNET
CLONE_NEWNS: int = lib.CLONE_NEWNS
MNT_DETACH: int = lib.MNT_DETACH
MS_BIND: int = lib.MS_BIND
MS_REC: int = lib.MS_REC
MS_SHARED: int = lib.MS_SHARED
MS_PRIVATE: int = lib.MS_PRIVATE
MS_SLAVE: int = lib.MS_SLAVE
MS_RDONLY: int = lib.MS_RDONLY
AT_FDCWD: int = lib.AT_FDCWD
AT_EMPTY_PATH: int = lib.AT_EMPTY_PATH
AT_SYMLINK_NOFOLLOW: int = lib.AT_SYMLINK_NOFOLLOW

_ENOTNS: int = lib.NSLIB_ENOTNS
_EWRONGTYPE: int = lib.NSLIB_EWRONGTYPE
_EPOISONED: int = lib.NSLIB_EPOISONED
EORDER: int = lib.NSLIB_EORDER
_ERESTORE: int = lib.NSLIB_ERESTORE
EUNWOUND: int = lib.NSLIB_EUNWOUND
_EHOME: int = lib.NSLIB_EHOME
ETHREAD: int = lib.NSLIB_ETHREAD
SWITCH: int = lib.NSLIB_SWITCH
BLOCK: int = lib.NSLIB_BLOCK

# The switching hot path calls these directly and checks the return itself.
raw_enter = lib.nslib_enter
raw_enter_block = lib.nslib_enter_block
raw_leave = lib.nslib_leave
raw_depth = lib.nslib_depth
raw_undo_last = lib.nslib_undo_last
raw_exit_block = lib.nslib_exit_block
raw_unwind = lib.nslib_unwind
raw_serial = lib.nslib_serial
raw_next_serial = lib.nslib_next_serial
raw_thread_token = lib.nslib_thread_token
raw_revert = lib.nslib_revert
raw_socket_in = lib.nslib_socket_in
raw_umount2 = lib.nslib_umount2  # named.delete chains it with unlink (no bytecode between)
NULL = ffi.NULL

_new = ffi.new
_gc = ffi.gc
_box_close = lib.nslib_fdbox_close


def fd_box() -> Any:
    """A C ``int *`` holding -1 that closes the fd it holds when collected.

    Every shim that makes an fd writes it into such a box, allocated before
    the call.  A ``KeyboardInterrupt`` is raised as a C call returns, before
    Python can store the result; the box makes sure that fd still has an
    owner then.  Take the fd out with ``fd = box[0]; box[0] = -1`` (no
    interrupt can fall between two such plain statements) or leave it there
    and :func:`close_box` it.
    """
    return _gc(_new("int *", -1), _box_close)


def close_box(box: Any) -> None:
    """Close the fd in *box*, if any, in one C call (so never half done)."""
    _box_close(box)


def take(box: Any) -> int:
    """The fd in *box*, which the caller owns from now on."""
    fd: int = box[0]
    box[0] = -1
    return fd


_NSTYPES = {
    0x00020000: "mnt",
    0x02000000: "cgroup",
    0x04000000: "uts",
    0x08000000: "ipc",
    0x10000000: "user",
    0x20000000: "pid",
    0x40000000: "net",
    0x00000080: "time",
}


def fail(rc: int, what: str, path: str | None = None, nstype: int = 0, *, fd: int = -1) -> NoReturn:
    """Raise the error for a failed shim that returned *rc*.

    *fd* is the namespace fd a failed setns(2) was given: its EINVAL means
    "not a namespace" or "not a network namespace", which is checked here so
    the caller gets :class:`NotANamespace` rather than a bare EINVAL.
    """
    err = ffi.errno  # first: any later C call overwrites it
    if rc == -1 and err == errno.EINVAL and fd >= 0:
        check_netns(fd, what)  # raises NotANamespace if that is the cause
    if rc == _ENOTNS:
        raise NotANamespace(f"not a namespace: {what}")
    if rc == _EWRONGTYPE:
        kind = _NSTYPES.get(nstype, hex(nstype))
        wrong = NotANamespace(f"a {kind} namespace, not a network namespace: {what}")
        wrong.nstype = nstype
        raise wrong
    if rc == _EPOISONED:
        raise poisoned_error(what)
    if rc == _EHOME:
        raise NamespaceRestoreError(
            errno.EBADF,
            "the home namespace fd nslib keeps for this thread was closed or replaced "
            "behind its back, and the thread is no longer in its home namespace either; "
            f"the thread is poisoned (refusing to switch to {what})",
        )
    raise oserror(err, what, path)


def poisoned_error(what: str) -> NamespaceRestoreError:
    """The error every switch raises on a thread whose restore failed."""
    return NamespaceRestoreError(
        errno.EIO,
        f"this thread failed to return to its namespace earlier and is poisoned; "
        f"refusing to switch to {what}",
    )


def encode_path(path: str | bytes | os.PathLike[str], what: str) -> bytes:
    """``os.fsencode`` that rejects NUL bytes with a typed error."""
    from .errors import InvalidReference

    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:
        raise InvalidReference(f"path cannot be encoded as a file name: {what}") from None
    if b"\0" in raw:
        raise InvalidReference(f"path contains a NUL byte: {what}")
    return raw


def open_netns_into(box: Any, path: bytes, what: str, dirfd: int = AT_FDCWD) -> None:
    """Open *path* O_CLOEXEC into *box* (:func:`fd_box`), checked to be a network namespace."""
    nstype = ffi.new("int *")
    rc = lib.nslib_open_netns(dirfd, path, nstype, box)
    if rc < 0:
        fail(rc, what, os.fsdecode(path), nstype[0])


def open_netns(path: bytes, what: str, dirfd: int = AT_FDCWD) -> int:
    """Open *path* O_CLOEXEC and check that it is a network namespace.

    The caller owns the fd once this returns; prefer :func:`open_netns_into`
    or :class:`~nslib.NsHandle` constructors where an interrupt must not leak it.
    """
    box = fd_box()
    open_netns_into(box, path, what, dirfd)
    return take(box)


def pidfd_open(pid: int) -> int:
    """``pidfd_open(2)``: a close-on-exec fd referring to process *pid*.

    :raises NamespaceNotFound: no such process (ESRCH).
    :raises OSError: any other failure, with its errno.
    """
    fd = lib.nslib_pidfd_open(pid)
    if fd < 0:
        fail(-1, f"pidfd_open(pid {pid})", f"/proc/{pid}")
    return fd


def stat_mount(
    path: bytes, *, dirfd: int = AT_FDCWD, follow: bool = True, unique: bool = False
) -> tuple[int, int, int | None]:
    """``(st_dev, st_ino, mount id)`` of *path* in one ``statx(2)``.

    The mount id is the one the name is on: with *unique*, Linux 6.8's
    64-bit id that is never reused (older kernels give the plain one, which
    is reused at once); ``None`` if the kernel gives neither.  An empty
    *path* with a *dirfd* means the fd itself.

    :raises OSError: as ``os.stat`` (with the path).
    """
    out = ffi.new("uint64_t[4]")
    flags = (0 if follow else AT_SYMLINK_NOFOLLOW) | (AT_EMPTY_PATH if not path else 0)
    mask = lib.NSLIB_STATX_MNT_ID_UNIQUE if unique else lib.NSLIB_STATX_MNT_ID
    if lib.nslib_statx_ids(dirfd, path, flags, mask, out) < 0:
        e = ffi.errno
        raise OSError(e, os.strerror(e), os.fsdecode(path) if path else f"fd {dirfd}")
    return out[1], out[2], (out[3] or None)


_listmount_ok = True


def mounts_under(mnt_id: int) -> bytes | None:
    """The unique ids of the mounts under mount *mnt_id* (``listmount(2)``), as raw bytes.

    Meant for comparing two looks cheaply.  ``None`` where the kernel cannot
    say (before Linux 6.8, or a seccomp filter), and from then on.
    """
    global _listmount_ok
    if not _listmount_ok:
        return None
    chunks: list[bytes] = []
    last = 0
    n = 1024
    ids = ffi.new("uint64_t[]", n)
    while True:
        got = lib.nslib_listmount(mnt_id, last, ids, n)
        if got < 0:
            if ffi.errno in (errno.ENOSYS, errno.EPERM):
                _listmount_ok = False
            return None
        chunks.append(bytes(ffi.buffer(ids, got * 8)))
        if got < n:
            return b"".join(chunks)
        last = ids[got - 1]


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """``pidfd_getfd(2)``: a close-on-exec duplicate of another process's fd.

    Needs ``PTRACE_MODE_ATTACH_REALCREDS`` over the process (root has it).

    :raises OSError: EBADF (no such fd in that process), EPERM, ESRCH (it
        exited; :class:`NamespaceNotFound`), with the errno.
    """
    fd = lib.nslib_pidfd_getfd(pidfd, targetfd)
    if fd < 0:
        fail(-1, f"pidfd_getfd(pidfd {pidfd}, fd {targetfd})")
    return fd


def dup_into(box: Any, fd: int, what: str) -> None:
    """A close-on-exec duplicate of *fd* (numbered 3 or above) into *box*."""
    if lib.nslib_dup(fd, box) < 0:
        fail(-1, what)


def check_netns(fd: int, what: str) -> None:
    """Raise ``NotANamespace`` unless *fd* is a network namespace."""
    nstype = ffi.new("int *")
    rc = lib.nslib_check_netns(fd, nstype)
    if rc != 0:
        fail(rc, what, None, nstype[0])


def open_current_into(box: Any) -> None:
    """An fd of the calling thread's network namespace, into *box*."""
    if lib.nslib_open_current(box) < 0:
        fail(-1, "the calling thread's namespace", "/proc/thread-self/ns/net")


def open_current() -> int:
    """An fd of the calling thread's network namespace."""
    box = fd_box()
    open_current_into(box)
    return take(box)


def leave(depth: int, what: str) -> None:
    """Undo the switch that reached *depth* on this thread (the innermost)."""
    rc = lib.nslib_leave(depth, 0)
    if rc < 0:
        leave_failed(rc, what)


def leave_failed(rc: int, what: str, err: int | None = None) -> NoReturn:
    """Raise for a failed ``nslib_leave`` (*err*: its errno, read right after it)."""
    if err is None:
        err = ffi.errno
    if rc == EORDER:
        raise RuntimeError(
            f"nslib: cannot leave {what} out of order: an inner switch on this thread "
            "is still active (revert the innermost first)"
        )
    if rc == _EHOME:
        raise NamespaceRestoreError(
            errno.EBADF,
            f"cannot return from {what}: the fd nslib kept to move this thread back was "
            "closed or replaced behind its back (a closerange or a double close elsewhere "
            "in the process); the thread stays where it is and is now poisoned",
        )
    raise NamespaceRestoreError(
        err, f"{os.strerror(err)}: cannot return from {what}; this thread is now poisoned"
    )


def depth() -> int:
    """How many nslib switches the calling thread is inside."""
    return lib.nslib_depth()


def poisoned() -> bool:
    """Whether a restore failed earlier on the calling thread."""
    return bool(lib.nslib_poisoned())


def join(fd: int, what: str) -> None:
    """Move the calling thread into *fd* for good (pinned workers)."""
    rc = lib.nslib_join(fd)
    if rc < 0:
        fail(rc, what, fd=fd)


def socket_in_into(box: Any, fd: int, family: int, type: int, proto: int, what: str) -> None:
    """``socket(2)`` created inside *fd*'s namespace, atomically, into *box*."""
    rc = lib.nslib_socket_in(fd, family, type, proto, box)
    if rc < 0:
        socket_in_failed(rc, fd, family, type, proto, what)


def socket_in_failed(rc: int, fd: int, family: int, type: int, proto: int, what: str) -> NoReturn:
    """Raise for a failed ``nslib_socket_in`` (call right after it)."""
    err = ffi.errno
    if rc == _ERESTORE:
        leave_failed(rc, what, err)  # the socket was made, but the way back failed
    if rc == -1 and err == errno.EINVAL:
        # EINVAL may be socket(2)'s (a bad family or type), not setns'.
        check_netns(fd, what)
        raise OSError(err, f"{os.strerror(err)}: socket({family}, {type}, {proto}) in {what}")
    fail(rc, what)


def new_netns_into(box: Any) -> None:
    """A new anonymous network namespace, made on a throwaway thread, into *box*."""
    if lib.nslib_new_netns(box) < 0:
        fail(-1, "a new network namespace")


def home_fd() -> int:
    """The home namespace fd the C core keeps for the calling thread, -1 if none.

    For tests and diagnostics only: never close it.
    """
    return lib.nslib_home_fd()


def mount_peers(path: bytes, what: str) -> tuple[bool, int, int] | None:
    """``(is a mount root, peer group, parent's peer group)`` of *path*'s mount.

    O(1) via statx(2) + statmount(2); a peer group of 0 means not shared.
    ``None`` on kernels older than 6.8, which lack statmount(2).
    """
    out = ffi.new("unsigned long long[2]")
    rc = lib.nslib_mount_peers(path, out, out + 1)
    if rc < 0:
        if ffi.errno == errno.ENOSYS:
            return None
        fail(-1, what, os.fsdecode(path))
    return (rc == 1, int(out[0]), int(out[1]))


def prepare_exec(fd: int, what: str) -> None:
    """On a dedicated thread: join *fd*, private mount ns, fresh /sys."""
    rc = lib.nslib_prepare_exec(fd)
    if rc < 0:
        fail(rc, what, fd=fd)


def mount(src: bytes, target: bytes, fstype: bytes, flags: int, what: str) -> None:
    """``mount(2)`` with no data argument."""
    if lib.nslib_mount(src, target, fstype, flags, ffi.NULL) < 0:
        fail(-1, what, os.fsdecode(target))


def umount2(target: bytes, flags: int, what: str) -> None:
    """``umount2(2)``."""
    if lib.nslib_umount2(target, flags) < 0:
        fail(-1, what, os.fsdecode(target))


def unshare(flags: int, what: str) -> None:
    """``unshare(2)`` on the calling thread."""
    if lib.nslib_unshare(flags) < 0:
        fail(-1, what)


def setns(fd: int, nstype: int, what: str) -> None:
    """``setns(2)`` on the calling thread (no bookkeeping; prefer :func:`enter`)."""
    if lib.nslib_setns(fd, nstype) < 0:
        fail(-1, what)


# -- spawning into several namespaces (csrc/spawn.c) ---------------------------

STEP_SETNS: int = lib.NSLIB_STEP_SETNS
STEP_EXEC: int = lib.NSLIB_STEP_EXEC
STEP_CWD: int = lib.NSLIB_STEP_CWD
#: What a failed child was doing, by step number (for messages).
STEPS: dict[int, str] = {
    lib.NSLIB_STEP_SETNS: "joining a namespace",
    lib.NSLIB_STEP_SETGROUPS: "dropping supplementary groups",
    lib.NSLIB_STEP_SETGID: "setgid(0) in the user namespace",
    lib.NSLIB_STEP_SETUID: "setuid(0) in the user namespace",
    lib.NSLIB_STEP_ROOT: "changing the root directory",
    lib.NSLIB_STEP_CWD: "changing the working directory",
    lib.NSLIB_STEP_FORK: "forking into the PID namespace",
    lib.NSLIB_STEP_FDS: "setting up the child's file descriptors",
    lib.NSLIB_STEP_SESSION: "setsid/setpgid",
    lib.NSLIB_STEP_EXEC: "exec",
    lib.NSLIB_STEP_CLONE: "clone",
    lib.NSLIB_STEP_PIPE: "preparing the spawn",
}
SPAWN_CLOSE_FDS: int = lib.NSLIB_SPAWN_CLOSE_FDS
SPAWN_RESTORE_SIGNALS: int = lib.NSLIB_SPAWN_RESTORE_SIGNALS
SPAWN_SETSID: int = lib.NSLIB_SPAWN_SETSID
SPAWN_CREDS: int = lib.NSLIB_SPAWN_CREDS
_KIND_ENOTNS: int = lib.NSLIB_KIND_ENOTNS
_KIND_EWRONGTYPE: int = lib.NSLIB_KIND_EWRONGTYPE


def _kind_failed(rc: int, want: int, nstype: int, what: str, path: str | None) -> NoReturn:
    err = ffi.errno  # first
    if rc == _KIND_ENOTNS:
        raise NotANamespace(f"not a namespace: {what}")
    if rc == _KIND_EWRONGTYPE:
        have = _NSTYPES.get(nstype, hex(nstype))
        wanted = "network" if want == CLONE_NEWNET else _NSTYPES.get(want, hex(want))
        wrong = NotANamespace(f"a {have} namespace, not a {wanted} namespace: {what}")
        wrong.nstype = nstype
        raise wrong
    raise oserror(err, what, path)


def open_kind_into(box: object, path: bytes, want: int, what: str, dirfd: int = AT_FDCWD) -> int:
    """Open *path* O_CLOEXEC into *box* (:func:`fd_box`) as a namespace of type *want*.

    *want* 0 accepts any kind.  Returns the namespace's CLONE_NEW* type.

    :raises NotANamespace: not a namespace, or one of another type (its
        ``nstype`` says which).
    :raises NamespaceNotFound: no such file (ENOENT, ESRCH).
    """
    nstype = ffi.new("int *")
    fd = lib.nslib_open_kind(dirfd, path, want, nstype, box)
    if fd < 0:
        _kind_failed(fd, want, nstype[0], what, os.fsdecode(path))
    return int(nstype[0])


def open_kind(path: bytes, want: int, what: str, dirfd: int = AT_FDCWD) -> tuple[int, int]:
    """:func:`open_kind_into`, for a caller that owns the fd at once: ``(fd, type)``."""
    box = fd_box()
    nstype = open_kind_into(box, path, want, what, dirfd)
    return take(box), nstype


def pidfd_ns_into(box: object, pidfd: int, nstype: int) -> bool:
    """The namespace of type *nstype* of a pidfd's process into *box* (Linux 6.11+).

    False on kernels without ``PIDFD_GET_*_NAMESPACE`` (the caller falls back).

    :raises NamespaceNotFound: the process has exited (ESRCH).
    :raises OSError: any other failure, with its errno.
    """
    if lib.nslib_pidfd_ns(pidfd, nstype, box) >= 0:
        return True
    err = ffi.errno
    if err in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise oserror(err, f"the {_NSTYPES.get(nstype, hex(nstype))} namespace of pidfd {pidfd}")


def check_kind(fd: int, want: int, what: str) -> int:
    """The CLONE_NEW* type of the namespace *fd*, which must be *want* (0: any).

    :raises NotANamespace: not a namespace, or one of another type.
    :raises OSError: EBADF for a closed fd.
    """
    nstype = ffi.new("int *")
    rc = lib.nslib_check_kind(fd, want, nstype)
    if rc != 0:
        _kind_failed(rc, want, nstype[0], what, None)
    return int(nstype[0])


def _strv(items: list[bytes], keep: list[object]) -> object:
    cells = [ffi.new("char[]", item) for item in items]
    keep.extend(cells)
    arr = ffi.new("char *[]", [*cells, ffi.NULL])
    keep.append(arr)
    return arr


def spawn(
    argv: list[bytes],
    envp: list[bytes] | None,
    exec_paths: list[bytes],
    namespaces: list[tuple[int, int]],
    *,
    pidfd: int = -1,
    pidfd_types: int = 0,
    root_fd: int = -1,
    cwd_fd: int = -1,
    cwd_path: bytes | None = None,
    stdio: tuple[int, int, int] = (-1, -1, -1),
    keep_fds: list[int] | None = None,
    flags: int = 0,
    pgid: int = -1,
    umask: int = -1,
) -> tuple[int, int, int, int]:
    """``nslib_spawn``: ``(pid, 0, 0, 0)``, or ``(-1, step, kind, errno)`` if the child failed.

    *namespaces* is ``[(fd, CLONE_NEW*), ...]`` (the C side joins them in
    nsenter's order).  Every child and grandchild that failed is reaped.
    """
    if len(namespaces) > lib.NSLIB_SPAWN_MAX_NS:
        raise ValueError(f"at most {lib.NSLIB_SPAWN_MAX_NS} namespaces")
    keep: list[object] = []
    req = ffi.new("struct nslib_spawn_req *")
    req.argv = _strv(argv, keep)
    req.envp = ffi.NULL if envp is None else _strv(envp, keep)
    req.exec_paths = _strv(exec_paths, keep)
    for i, (fd, nstype) in enumerate(namespaces):
        req.ns_fds[i] = fd
        req.ns_types[i] = nstype
    req.n_ns = len(namespaces)
    req.pidfd = pidfd
    req.pidfd_types = pidfd_types
    req.root_fd = root_fd
    req.cwd_fd = cwd_fd
    if cwd_path is None:
        req.cwd_path = ffi.NULL
    else:
        cell = ffi.new("char[]", cwd_path)
        keep.append(cell)
        req.cwd_path = cell
    req.stdin_fd, req.stdout_fd, req.stderr_fd = stdio
    fds = sorted(set(keep_fds or ()))
    arr = ffi.new("int[]", fds or [0])
    keep.append(arr)
    req.keep_fds = arr
    req.n_keep = len(fds)
    req.flags = flags
    req.pgid = pgid
    req.umask = umask
    out = ffi.new("struct nslib_spawn_err *")
    pid = lib.nslib_spawn(req, out)
    if pid < 0:
        return -1, int(out.step), int(out.kind), int(out.err)
    return int(pid), 0, 0, 0


# -- switching a thread into namespaces of every kind (see _kinds_switch.py) ---

raw_enter_kind = lib.nslib_enter_kind
raw_enter_kinds = lib.nslib_enter_kinds
failed_type = lib.nslib_failed_type


def fdarray(fds: list[int]) -> object:
    """A C ``int[]`` of *fds* (after their count) that closes those left in it when collected.

    :func:`raw_enter_kinds` takes the fds out of it (they become -1) when
    the switch takes them over.
    """
    return ffi.gc(ffi.new("int[]", [len(fds), *fds]), lib.nslib_fdarray_close)


def close_fdarray(box: object) -> None:
    """Close the fds left in an :func:`fdarray`, in one C call."""
    lib.nslib_fdarray_close(box)


def int_array(values: list[int]) -> object:
    """A C ``int[]`` of *values*."""
    return ffi.new("int[]", values)


def fail_kinds(rc: int, err: int, nstype: int, what: str) -> NoReturn:
    """Raise for a failed enter of namespaces of any kind (*err*: its errno)."""
    if rc == _EPOISONED:
        raise poisoned_error(what)
    kind = _NSTYPES.get(nstype, "a") if nstype else "a"
    if rc in (_ERESTORE, _EHOME):
        raise NamespaceRestoreError(
            err,
            f"{os.strerror(err)}: entering the {kind} namespace of {what} failed and the "
            "namespaces already entered could not be left; this thread is now poisoned",
        )
    raise oserror(err, f"entering the {kind} namespace ({what})")


def open_current_kind_into(box: object, nstype: int) -> None:
    """An fd of the calling thread's namespace of type *nstype*, into *box*.

    Read through the thread's own ``/proc`` directory, kept open, so it
    works inside a container's mount namespace too.
    """
    if lib.nslib_open_current_kind(nstype, box) < 0:
        err = ffi.errno
        raise oserror(err, f"the calling thread's {_NSTYPES.get(nstype, hex(nstype))} namespace")


def fs_private() -> bool:
    """Whether the calling thread has its own cwd and root (it entered a mount namespace)."""
    return bool(lib.nslib_fs_private())
