"""``NsHandle``: an owned file descriptor of a namespace (network, unless a kind is named)."""

from __future__ import annotations

import contextlib
import errno
import os
import warnings
from typing import Any, final

from . import _syscalls as sys_
from .errors import (
    BadFdError,
    ClosedHandleError,
    InvalidReference,
    NamespaceNotFound,
    NotANamespace,
)
from .kinds import NsKind, Pidfd
from .names import DEFAULT_RUN_DIR, validate_name

__all__ = ["NsHandle"]

_FD_MAX = 2**31 - 1
_NET = 0x40000000  # CLONE_NEWNET: what every handle is unless it says otherwise
KindArg = NsKind | str | None  # a kind, its name, or None (any kind)


def _want(kind: KindArg) -> int:
    """The CLONE_NEW* flag *kind* asks for; 0 for ``None`` (any kind)."""
    if kind is None:
        return 0
    return NsKind.parse(kind).flag


def _kind_name(nstype: int) -> str:
    try:
        return NsKind(nstype).proc_name
    except ValueError:
        return hex(nstype)


def _open_kind(path: bytes, want: int, what: str, *, gone: str | None = None) -> NsHandle:
    box = sys_.fd_box()
    try:
        nstype = sys_.open_kind_into(box, path, want, what)
    except NamespaceNotFound as e:
        if gone is None:
            raise
        raise NamespaceNotFound(e.errno, gone, e.filename) from None
    return _from_box(box, what, nstype)


def _positive(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidReference(f"{what} must be a positive int, not {value!r}")
    return value


def check_fd(fd: object) -> int:
    """*fd* if it can be an fd number; else a typed error.

    :raises TypeError: not an int.
    :raises BadFdError: negative or beyond any fd number (EBADF).
    """
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise TypeError(f"fd must be an int, not {type(fd).__name__}")
    if not 0 <= fd <= _FD_MAX:
        raise BadFdError(errno.EBADF, f"{os.strerror(errno.EBADF)}: fd {fd}")
    return fd


# The resolver shares these: each opens into a box (see _syscalls.fd_box),
# so an interrupt never separates an fd from its owner.


def open_path_into(box: Any, path: str | os.PathLike[str], what: str) -> None:
    """Open the namespace file *path* into *box*."""
    raw = sys_.encode_path(path, what)
    sys_.open_netns_into(box, raw, what)


def open_pid_into(box: Any, pid: int, what: str) -> None:
    """Open process *pid*'s namespace into *box*."""
    _positive(pid, "pid")
    try:
        sys_.open_netns_into(box, b"/proc/%d/ns/net" % pid, what)
    except NamespaceNotFound as e:
        raise NamespaceNotFound(e.errno, f"no process {pid} ({what})", e.filename) from None


def open_name_into(box: Any, name: str, run_dir: str | None, what: str) -> None:
    """Open the named namespace *name* into *box*; never creates anything."""
    validate_name(name)
    run_dir = run_dir or DEFAULT_RUN_DIR
    path = os.path.join(run_dir, name)
    raw = sys_.encode_path(path, what)  # a NUL in run_dir would cut the path short
    try:
        sys_.open_netns_into(box, raw, what)
    except NamespaceNotFound as e:
        raise NamespaceNotFound(
            errno.ENOENT, f"no named namespace {name!r} in {run_dir}", path
        ) from e
    except NotANamespace as e:
        if e.nstype:  # some other kind of namespace is mounted there
            raise
        raise NotANamespace(
            f"{path} is a stale placeholder, not a mounted namespace "
            f"(nslib.named.repair({name!r}) removes it)"
        ) from None


def _from_box(box: Any, what: str, nstype: int = _NET) -> NsHandle:
    # A function call is a point where an interrupt may land: until the two
    # plain statements that move the fd, the box still owns it.
    self = NsHandle.__new__(NsHandle)
    self._what = what
    self._nstype = nstype
    self._fd = box[0]
    box[0] = -1
    return self


@final
class NsHandle:
    """An owned, close-on-exec fd referring to a namespace.

    A network namespace unless the constructor was given another *kind*
    (:class:`~nslib.kinds.NsKind`): every constructor and call that does
    not name a kind means NET, and refuses another kind with
    :class:`~nslib.NotANamespace`.  :attr:`kind` says which it is.

    A handle keeps its namespace alive for as long as it is open, exactly as
    the kernel does for any fd.  Close it (or use it as a context manager);
    an unclosed handle warns with ``ResourceWarning`` when collected, like an
    unclosed file.  Two handles are distinct resources even when they refer
    to one namespace: compare namespaces with :meth:`same_namespace` or
    :attr:`ns_id`.
    """

    __slots__ = ("__weakref__", "_fd", "_nstype", "_what")

    def __init__(self, fd: int, *, what: str | None = None, kind: KindArg = "net") -> None:
        """Take ownership of *fd*, a namespace of *kind* (``None``: any kind).

        :raises NotANamespace: *fd* is not a namespace of that kind (*fd* is
            then closed, since ownership was passed).
        :raises BadFdError: *fd* is negative, too large or not open.
        """
        self._fd = -1  # first, so __del__ is safe if we raise below
        self._what = what or f"fd {fd}"
        self._nstype = _NET
        check_fd(fd)
        try:
            self._nstype = sys_.check_kind(fd, _want(kind), self._what)
        except BaseException:
            if fd >= 0:
                # Ownership was passed, so close it; a bad fd has nothing to close.
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        self._fd = fd

    @classmethod
    def _adopt(cls, fd: int, what: str) -> NsHandle:
        # For fds the C core already checked: skip the ioctl.
        self = cls.__new__(cls)
        self._fd = fd
        self._what = what
        self._nstype = _NET
        return self

    # -- constructors -------------------------------------------------------

    @classmethod
    def current(cls, kind: KindArg = "net") -> NsHandle:
        """The calling *thread's* namespace of *kind* (``/proc/thread-self/ns/KIND``).

        Read through the thread's own ``/proc`` entry, kept open since its
        first switch, so it works inside a container's mount namespace too
        (whose ``/proc`` may not show this thread).
        """
        want = _want(kind)
        if want == 0:
            raise InvalidReference("current() needs a kind of namespace, not None")
        if want != _NET:
            box = sys_.fd_box()
            sys_.open_current_kind_into(box, want)
            return _from_box(box, f"the calling thread's {_kind_name(want)} namespace", want)
        box = sys_.fd_box()
        sys_.open_current_into(box)
        return _from_box(box, "the calling thread's namespace")

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], kind: KindArg = "net") -> NsHandle:
        """Open a namespace file: ``/proc/<pid>/ns/net``, a bind mount, ...

        Checked with ``NS_GET_NSTYPE`` to be of *kind* (``None``: any kind,
        which :attr:`kind` then tells).

        :raises NamespaceNotFound: the path does not exist.
        :raises NotANamespace: the file is not a namespace of that kind.
        :raises InvalidReference: the path contains a NUL byte.
        """
        what = f"path:{os.fspath(path)}"
        want = _want(kind)
        if want != _NET:
            return _open_kind(sys_.encode_path(path, what), want, what)
        box = sys_.fd_box()
        open_path_into(box, path, what)
        return _from_box(box, what)

    @classmethod
    def from_pid(cls, pid: int, kind: KindArg = "net") -> NsHandle:
        """The namespace of *kind* of process *pid* (its main thread).

        :raises NamespaceNotFound: no such process (it never existed or exited).
        """
        what = f"pid:{pid}"
        want = _want(kind)
        if want not in (0, _NET):
            _positive(pid, "pid")
            name = _kind_name(want).encode()
            what = f"the {_kind_name(want)} namespace of pid {pid}"
            return _open_kind(b"/proc/%d/ns/%s" % (pid, name), want, what, gone=f"no process {pid}")
        box = sys_.fd_box()
        open_pid_into(box, pid, what)
        return _from_box(box, what)

    @classmethod
    def from_thread(cls, pid: int, tid: int, kind: KindArg = "net") -> NsHandle:
        """The namespace of *kind* of thread *tid* of process *pid*.

        :raises NamespaceNotFound: no such process, or *tid* is not one of its
            threads.
        """
        _positive(pid, "pid")
        _positive(tid, "tid")
        what = f"thread {tid} of pid {pid}"
        want = _want(kind)
        name = _kind_name(want or _NET).encode()
        path = b"/proc/%d/task/%d/ns/%s" % (pid, tid, name)
        box = sys_.fd_box()
        try:
            if want == _NET:
                sys_.open_netns_into(box, path, what)
                return _from_box(box, what)
            nstype = sys_.open_kind_into(box, path, want or _NET, what)
            return _from_box(box, what, nstype)
        except NamespaceNotFound as e:
            msg = f"no thread {tid} in process {pid}"
            if not os.path.exists(f"/proc/{pid}"):
                msg = f"no process {pid}"
            raise NamespaceNotFound(e.errno, msg, e.filename) from None

    @classmethod
    def from_name(cls, name: str, *, run_dir: str | None = None) -> NsHandle:
        """Open the named namespace *name* (as ``ip netns`` names it).

        Never creates anything: a missing name raises.

        :raises InvalidName: *name* is not a valid namespace name.
        :raises NamespaceNotFound: no such named namespace.
        :raises NotANamespace: a stale placeholder whose mount is gone.
        """
        what = f"name:{name}"
        box = sys_.fd_box()
        open_name_into(box, name, run_dir, what)
        return _from_box(box, what)

    @classmethod
    def from_fd(cls, fd: int, kind: KindArg = "net") -> NsHandle:
        """A new handle on a *dup* of *fd*; the caller keeps its own fd.

        :raises BadFdError: *fd* is negative, too large or not open (an
            ``OSError`` with EBADF).
        :raises NotANamespace: *fd* is not a namespace of *kind* (``None``: any).
        """
        check_fd(fd)
        nstype = sys_.check_kind(fd, _want(kind), f"fd {fd}")
        return _dup(fd, f"fd {fd}", nstype)

    @classmethod
    def from_pidfd(cls, pidfd: Pidfd | int, kind: KindArg = "net") -> NsHandle:
        """The namespace of *kind* of the process a pidfd refers to.

        *pidfd* is a :class:`~nslib.kinds.Pidfd` or an int pidfd.  A pidfd
        cannot come to mean another process, so neither can the handle: on
        Linux 6.11+ the kernel hands the namespace over the pidfd itself
        (``PIDFD_GET_*_NAMESPACE``); before, ``/proc/<pid>/ns`` is opened and
        the pidfd checked afterwards to still refer to a live process.

        :raises NamespaceNotFound: the process has exited.
        :raises NotANamespace: *kind* is ``None`` (a kind must be named).
        """
        want = _want(kind)
        if want == 0:
            raise InvalidReference("from_pidfd() needs a kind of namespace, not None")
        owned = None
        if isinstance(pidfd, Pidfd):
            fd, pid = pidfd.fileno(), pidfd.pid
        else:
            fd = check_fd(pidfd)
            pid = _pidfd_pid(fd)
            owned = Pidfd(os.dup(fd), pid) if pid > 0 else None
        name = _kind_name(want)
        what = f"the {name} namespace of pid {pid}"
        try:
            box = sys_.fd_box()
            if sys_.pidfd_ns_into(box, fd, want):
                return _from_box(box, what, want)
            if pid <= 0:
                raise NamespaceNotFound(errno.ESRCH, f"the process of pidfd {fd} has exited")
            checker = pidfd if isinstance(pidfd, Pidfd) else owned
            assert checker is not None
            path = b"/proc/%d/ns/%s" % (pid, name.encode())
            try:
                h = _open_kind(path, want, what)
            except NamespaceNotFound:
                checker.alive_check()
                raise
            try:
                checker.alive_check()  # the PID still named the pidfd's process
            except BaseException:
                h.close()
                raise
            return h
        finally:
            if owned is not None:
                owned.close()

    @classmethod
    def new(cls) -> NsHandle:
        """A brand-new anonymous namespace, alive only while handles hold it.

        It is made by ``unshare(2)`` on a throwaway thread, so the calling
        thread never moves.
        """
        box = sys_.fd_box()
        sys_.new_netns_into(box)
        return _from_box(box, "a new anonymous namespace")

    # -- the fd -------------------------------------------------------------

    def fileno(self) -> int:
        """The fd.  :raises ClosedHandleError: the handle is closed."""
        fd = self._fd
        if fd < 0:
            raise ClosedHandleError(f"namespace handle is closed ({self._what})")
        return fd

    @property
    def closed(self) -> bool:
        """Whether the handle is closed or detached."""
        return self._fd < 0

    def close(self) -> None:
        """Close the fd.  Idempotent."""
        # Forget the number before closing: the kernel may hand it out again.
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def detach(self) -> int:
        """Give up ownership and return the fd; the handle becomes closed."""
        fd = self.fileno()
        self._fd = -1
        return fd

    def dup(self) -> NsHandle:
        """A new handle on a close-on-exec duplicate of the fd."""
        return _dup(self.fileno(), self._what, self._nstype)

    @property
    def kind(self) -> NsKind:
        """The :class:`~nslib.kinds.NsKind` of the namespace (NET unless asked otherwise)."""
        return NsKind(self._nstype)

    @property
    def what(self) -> str:
        """A human description of where the handle came from."""
        return self._what

    # -- identity -----------------------------------------------------------

    @property
    def ns_id(self) -> tuple[int, int]:
        """``(st_dev, st_ino)`` of the namespace: stable while the handle is open."""
        st = os.fstat(self.fileno())
        return (st.st_dev, st.st_ino)

    def same_namespace(self, other: NsHandle) -> bool:
        """Whether *other* refers to the same namespace."""
        return self.ns_id == other.ns_id

    # -- protocol -----------------------------------------------------------

    def __enter__(self) -> NsHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "" if self._nstype == _NET else f" {_kind_name(self._nstype)}"
        if self._fd < 0:
            return f"<NsHandle{kind} closed ({self._what})>"
        return f"<NsHandle{kind} fd={self._fd} ({self._what})>"

    def __getstate__(self) -> Any:
        raise TypeError("an NsHandle owns an fd and cannot be pickled")

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            text = f"unclosed {self!r}"
            self.close()  # first: a warning turned into an error must not leak the fd
            warnings.warn(text, ResourceWarning, stacklevel=2, source=self)


def _dup(fd: int, what: str, nstype: int = _NET) -> NsHandle:
    box = sys_.fd_box()
    sys_.dup_into(box, fd, what)
    return _from_box(box, what, nstype)


def _pidfd_pid(fd: int) -> int:
    """The PID a pidfd refers to (``Pid:`` in its fdinfo); -1 once it has exited."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"Pid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    raise NotANamespace(f"fd {fd} is not a pidfd")
