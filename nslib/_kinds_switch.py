"""Switching a thread into namespaces of every kind (private; see :mod:`nslib.switching`).

:func:`nslib.entered` and :func:`nslib.switch_to` come here for anything
but a single network namespace: a handle of another kind, several handles
at once, or a :class:`~nslib.kinds.Target`.  What a single thread of a
multithreaded process can enter and leave:

* NET, UTS, IPC and CGROUP: per thread, like NET always was;
* MNT: once the thread has its own filesystem attributes.  The first time a
  thread enters a mount namespace, the C core calls ``unshare(CLONE_FS)``
  on it: from then on its working directory and root are its own, so
  ``os.chdir`` on another thread no longer moves it, and its own
  ``os.chdir`` no longer moves the others (every other thread keeps sharing
  as before).  Entering a mount namespace puts the thread's root and cwd at
  that namespace's root, as ``setns(2)`` does; leaving puts back the root
  and cwd it had (kept open as ``O_PATH`` fds), so a ``with`` block leaves
  both as it found them.

USER (the kernel wants a single-threaded caller), PID and TIME (they apply
to children only) are refused with :class:`~nslib.NotSwitchableError`,
which points to :mod:`nslib.spawn`.

Several namespaces at once are one switch, all or nothing: every one is
entered, or none is and the thread has not moved.  A
:class:`~nslib.kinds.Target` is joined with one ``setns(pidfd, ...)``
(atomic, Linux 5.8+); handles one by one, the ones already entered moved
back if a later one fails.  If moving back fails, the thread is poisoned,
whatever kind refused.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from . import _syscalls as sys_
from .errors import InvalidReference, NamespaceNotFound, NotSwitchableError
from .handle import NsHandle
from .kinds import NsKind, Pidfd, Target

__all__ = ["THREAD_KINDS", "enter", "wants"]

_NET = NsKind.NET.flag
#: The CLONE_NEW* flags of the kinds besides NET that one thread can enter and leave.
THREAD_KINDS = frozenset(k.flag for k in (NsKind.UTS, NsKind.IPC, NsKind.CGROUP, NsKind.MNT))
_REFUSED = {
    NsKind.USER: "the kernel lets only a single-threaded process join a user namespace",
    NsKind.PID: "a PID namespace applies to the children a process makes, never to a thread",
    NsKind.TIME: "a time namespace applies to the children a process makes, never to a thread",
}


def wants(ns: object) -> bool:
    """Whether *ns* is for this module: not a single network reference."""
    return isinstance(ns, Target) or (type(ns) is NsHandle and ns._nstype != _NET)


def _refuse(kind: NsKind, what: str) -> NotSwitchableError:
    e = NotSwitchableError(
        f"cannot enter the {kind} namespace of {what} on a thread: {_REFUSED[kind]}; "
        "start a process in it with nslib.spawn.popen() / nslib.run(Target(...), argv)"
    )
    e.kind = kind
    return e


class _Group:
    """The fds, types and descriptions of one switch; owns its fds until the C core takes them."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.types: list[int] = []
        self.what: dict[int, str] = {}
        self.pidfd: Pidfd | None = None
        self.box: Any = None

    def add(self, fd: int, kind: NsKind, what: str) -> None:
        """Take *fd* (closed here if refused)."""
        try:
            if kind in _REFUSED:
                raise _refuse(kind, what)
            if kind.flag in self.types:
                raise InvalidReference(f"the {kind} namespace is given twice")
        except BaseException:
            os.close(fd)
            raise
        self.fds.append(fd)
        self.types.append(kind.flag)
        self.what[kind.flag] = what

    def close(self) -> None:
        if self.box is not None:
            sys_.close_fdarray(self.box)
        else:
            for fd in self.fds:
                os.close(fd)
        self.fds = []
        if self.pidfd is not None:
            self.pidfd.close()
            self.pidfd = None


def _dup(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


def _collect(items: tuple[Any, ...]) -> _Group:
    from ._resolve import resolve

    g = _Group()
    try:
        for ns in items:
            if isinstance(ns, Target):
                if len(items) > 1:
                    raise InvalidReference("a Target enters alone (name its kinds instead)")
                _target(ns, g)
            elif type(ns) is NsHandle:
                kind = ns.kind
                if kind in _REFUSED:
                    raise _refuse(kind, ns.what)
                g.add(_dup(ns.fileno()), kind, ns.what)
            else:
                res = resolve(ns)  # a network reference
                try:
                    g.add(_dup(res.fd), NsKind.NET, res.what)
                finally:
                    res.close()
    except BaseException:
        g.close()
        raise
    return g


def _target(t: Target, g: _Group) -> None:
    kinds = t.kinds if not t.all else tuple(k for k in t.kinds if k not in _REFUSED)
    for kind in kinds:
        if kind in _REFUSED:
            raise _refuse(kind, f"process {t.pid}")
    g.pidfd = pidfd = Pidfd.open(t.pid)
    what = f"process {t.pid}"
    for kind in kinds:
        path = b"/proc/%d/ns/%s" % (t.pid, kind.proc_name.encode())
        try:
            fd, _ = sys_.open_kind(path, kind.flag, f"the {kind} namespace of {what}")
        except NamespaceNotFound:
            pidfd.alive_check()
            raise
        g.add(fd, kind, what)
    pidfd.alive_check()  # the files were opened by PID: it still named the pinned process


def enter(items: tuple[Any, ...], block: int, what: str) -> int:
    """Enter every namespace of *items* as one switch of kind *block*; return the depth.

    :raises NotSwitchableError: a USER, PID or TIME namespace.
    :raises InvalidReference: a kind given twice.
    :raises OSError: joining failed (``PermissionError`` for EPERM); the
        kind that failed is named and the thread has not moved.
    :raises NamespaceRestoreError: the thread could not be moved back after
        a later kind failed, and is poisoned.
    """
    if len(items) == 1:
        h = items[0]
        if type(h) is NsHandle and h._nstype in THREAD_KINDS:
            # One handle: no dup, no arrays, one C call.
            nstype = h._nstype
            fd = h.fileno()
            try:
                depth = sys_.raw_enter_kind(fd, nstype, block, sys_.NULL)
            except BaseException:
                sys_.raw_undo_last()
                raise
            if depth > 0:
                return depth
            sys_.fail_kinds(depth, sys_.ffi.errno, nstype, h.what)
    g = _collect(items)
    try:
        # From here the boxes own the fds; on success the C core has taken
        # the namespace fds, and what is left is closed when collected:
        # nothing may be called between a successful switch and the return.
        box = g.box = sys_.fdarray(g.fds)
        pidbox = sys_.fd_box()
        if g.pidfd is not None:
            pidbox[0] = g.pidfd.detach()
            g.pidfd = None
        types = sys_.int_array(g.types)
    except BaseException:
        g.close()
        raise
    try:
        depth = sys_.raw_enter_kinds(box, types, len(g.types), block, pidbox[0], 1)
    except BaseException:
        sys_.raw_undo_last()  # an interrupt as the C call returned: undo that switch
        raise
    if depth > 0:
        return depth
    err = sys_.ffi.errno  # first: any later C call overwrites it
    try:
        failed = sys_.failed_type()
        sys_.fail_kinds(depth, err, failed, g.what.get(failed, what))
    finally:
        g.close()
        sys_.close_box(pidbox)


def describe(items: tuple[Any, ...]) -> str:
    """A description of *items* for messages."""
    parts = []
    for ns in items:
        if type(ns) is NsHandle:
            parts.append(ns.what if ns._nstype == _NET else f"{ns.kind} {ns.what}")
        else:
            parts.append(repr(ns) if isinstance(ns, Target) else str(ns))
    return ", ".join(parts)
