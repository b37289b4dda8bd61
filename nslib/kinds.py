"""Every kind of namespace, process fds (pidfds) and whole-process targets.

* :class:`NsKind`: the eight kinds of Linux namespace, with their
  ``CLONE_NEW*`` flag and their name under ``/proc/<pid>/ns/``.
* :class:`Pidfd`: an owned, close-on-exec pidfd.  Unlike a PID, it can
  never come to mean another process: once the process is gone, every use
  fails (ESRCH) instead of reaching whoever reused the number.
* :class:`Target`: "the namespaces of process *pid*" (all of them, or some
  kinds), as ``nsenter -t PID`` reads them; :func:`nslib.spawn.popen`
  (or ``nslib.popen``) starts a program in them, and ``nslib.entered``
  moves the calling thread into those a thread can enter.
"""

from __future__ import annotations

import enum
import errno
import os
import select
import signal
import warnings
from collections.abc import Iterable
from typing import Any, final

from .errors import InvalidReference, NamespaceNotFound

__all__ = ["ALL_KINDS", "NsKind", "Pidfd", "Target"]


class NsKind(enum.Enum):
    """A kind of namespace; the value is its ``CLONE_NEW*`` flag.

    ``NsKind(flag)`` maps what ``ioctl(NS_GET_NSTYPE)`` returns back to a
    kind; :meth:`parse` reads the ``/proc`` name (``"net"``, ``"mnt"``, ...).
    """

    # The kernel's ABI values (linux/sched.h); os.CLONE_* only exist from 3.12.
    USER = 0x10000000
    CGROUP = 0x02000000
    IPC = 0x08000000
    UTS = 0x04000000
    NET = 0x40000000
    PID = 0x20000000
    MNT = 0x00020000
    TIME = 0x00000080

    @property
    def flag(self) -> int:
        """The ``CLONE_NEW*`` flag (what ``setns(2)`` and ``unshare(2)`` take)."""
        return int(self.value)

    @property
    def proc_name(self) -> str:
        """The file name under ``/proc/<pid>/ns/`` (``"net"``, ``"mnt"``, ...)."""
        return _PROC_NAMES[self]

    @classmethod
    def parse(cls, name: str | NsKind) -> NsKind:
        """The kind named *name*: ``"net"``, ``"NET"``, ``"mnt"``/``"mount"``, ...

        :raises InvalidReference: not a kind of namespace.
        """
        if isinstance(name, NsKind):
            return name
        kind = _BY_NAME.get(str(name).lower())
        if kind is None:
            known = ", ".join(k.proc_name for k in ALL_KINDS)
            raise InvalidReference(f"not a kind of namespace: {name!r} (one of {known})")
        return kind

    def __str__(self) -> str:
        return self.proc_name


_PROC_NAMES = {
    NsKind.USER: "user",
    NsKind.CGROUP: "cgroup",
    NsKind.IPC: "ipc",
    NsKind.UTS: "uts",
    NsKind.NET: "net",
    NsKind.PID: "pid",
    NsKind.MNT: "mnt",
    NsKind.TIME: "time",
}
_BY_NAME = {v: k for k, v in _PROC_NAMES.items()} | {"mount": NsKind.MNT}

#: Every kind, in the order ``nsenter`` joins them (the user namespace is
#: also tried again first when the others need its capabilities).
ALL_KINDS: tuple[NsKind, ...] = tuple(_PROC_NAMES)


def _positive(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidReference(f"{what} must be a positive int, not {value!r}")
    return value


def _gone(pid: int) -> NamespaceNotFound:
    return NamespaceNotFound(errno.ESRCH, f"process {pid} has exited", f"/proc/{pid}")


@final
class Pidfd:
    """An owned, close-on-exec pidfd (``pidfd_open(2)``).

    It refers to one process for its whole life: after the process exits,
    :meth:`send_signal` raises instead of signalling whoever reuses the PID.
    The fd becomes readable when the process exits (:meth:`exited`,
    :meth:`wait_exit`, or any ``select``/``poll``/asyncio reader).  Close it
    (or use it as a context manager); an unclosed one warns with
    ``ResourceWarning`` when collected, like an unclosed file.
    """

    __slots__ = ("__weakref__", "_fd", "_pid")

    def __init__(self, fd: int, pid: int) -> None:
        """Take ownership of *fd*, a pidfd of process *pid*."""
        self._fd = -1  # first, so __del__ is safe if we raise below
        if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
            raise TypeError(f"fd must be a non-negative int, not {fd!r}")
        self._pid = _positive(pid, "pid")
        self._fd = fd

    @classmethod
    def open(cls, pid: int) -> Pidfd:
        """A pidfd of process *pid*.

        :raises NamespaceNotFound: no such process (ESRCH).
        :raises InvalidReference: *pid* is not a positive int.
        """
        _positive(pid, "pid")
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise NamespaceNotFound(errno.ESRCH, f"no process {pid}", f"/proc/{pid}") from None
        except OSError as e:
            # A thread that is not a process's main thread (EINVAL; ENOENT
            # from 6.9), or a process being torn down.
            if e.errno in (errno.EINVAL, errno.ENOENT):
                raise NamespaceNotFound(
                    errno.ESRCH, f"no process {pid} (not a live thread-group leader)"
                ) from None
            raise
        return cls(fd, pid)

    @property
    def pid(self) -> int:
        """The process's PID (in the caller's PID namespace), as it was opened."""
        return self._pid

    def fileno(self) -> int:
        """The fd.  :raises ValueError: the pidfd is closed."""
        if self._fd < 0:
            raise ValueError(f"pidfd of process {self._pid} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        """Whether the pidfd is closed or detached."""
        return self._fd < 0

    def close(self) -> None:
        """Close the fd.  Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def detach(self) -> int:
        """Give up ownership and return the fd."""
        fd = self.fileno()
        self._fd = -1
        return fd

    def send_signal(self, sig: int) -> None:
        """Send *sig* to the process (0: only check that it is still there).

        :raises NamespaceNotFound: the process has exited (ESRCH), even if
            its PID was reused since.
        :raises PermissionError: not allowed to signal it.
        """
        try:
            signal.pidfd_send_signal(self.fileno(), sig)
        except ProcessLookupError:
            raise _gone(self._pid) from None

    def exited(self) -> bool:
        """Whether the process has exited (the fd is readable)."""
        return self.wait_exit(0)

    def wait_exit(self, timeout: float | None = None) -> bool:
        """Wait up to *timeout* seconds (``None``: for ever) for the exit; True if it did."""
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000))
        return bool(poller.poll(ms))

    def alive_check(self) -> None:
        """Raise :class:`NamespaceNotFound` if the process has exited."""
        if self.exited():
            raise _gone(self._pid)

    def __enter__(self) -> Pidfd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._fd < 0:
            return f"<Pidfd closed (pid {self._pid})>"
        return f"<Pidfd fd={self._fd} (pid {self._pid})>"

    def __getstate__(self) -> Any:
        raise TypeError("a Pidfd owns an fd and cannot be pickled")

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
            self.close()


@final
class Target:
    """The namespaces of process *pid*: all kinds (``nsenter -a -t PID``) or some.

    A value, not a resource: nothing is opened until it is used, and each
    use pins the process with a pidfd, so a PID reused meanwhile is
    detected rather than followed.

    With *kinds* ``None`` (all), as ``nsenter -a`` does, a kind the kernel
    lacks is left out, and so is the user namespace when it is the caller's
    own (the kernel refuses to re-enter it); ``entered(Target(pid))`` also
    leaves out USER, PID and TIME, which no single thread can enter.  Kinds
    named explicitly are always joined (or refused).
    """

    __slots__ = ("_kinds", "_pid")

    def __init__(self, pid: int, kinds: Iterable[NsKind | str] | None = None) -> None:
        """*kinds*: :class:`NsKind` values or their names; ``None`` for all.

        :raises InvalidReference: *pid* is not a positive int, or an unknown kind.
        """
        self._pid = _positive(pid, "pid")
        if kinds is None:
            self._kinds: frozenset[NsKind] | None = None
        else:
            chosen = frozenset(NsKind.parse(k) for k in kinds)
            if not chosen:
                raise InvalidReference("a Target needs at least one kind of namespace")
            self._kinds = chosen

    @property
    def pid(self) -> int:
        """The target process."""
        return self._pid

    @property
    def all(self) -> bool:
        """Whether every kind was asked for (``kinds=None``)."""
        return self._kinds is None

    @property
    def kinds(self) -> tuple[NsKind, ...]:
        """The kinds asked for, in join order (every kind when ``all``)."""
        chosen = self._kinds
        return tuple(k for k in ALL_KINDS if chosen is None or k in chosen)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Target):
            return NotImplemented
        return (self._pid, self._kinds) == (other._pid, other._kinds)

    def __hash__(self) -> int:
        return hash((self._pid, self._kinds))

    def __repr__(self) -> str:
        if self._kinds is None:
            return f"Target({self._pid})"
        return f"Target({self._pid}, kinds={[k.proc_name for k in self.kinds]})"
