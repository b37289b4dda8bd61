"""Namespace events: named namespaces appearing and going, and nsids, without polling.

:class:`NamespaceMonitor` reports

* :attr:`EventKind.ADDED` / :attr:`EventKind.DELETED` for every name in its
  run directories (``/run/netns``, where ``ip netns``, nslib, podman's and
  containerd's ``cni-*`` namespaces live, and docker's ``/run/docker/netns``
  by default), and
* :attr:`EventKind.NSID_ADDED` / :attr:`EventKind.NSID_DELETED` when the
  monitor's namespace assigns or drops an nsid for a peer (``RTM_NEWNSID`` /
  ``RTM_DELNSID`` on an rtnetlink socket in the ``RTNLGRP_NSID`` group).

A name is ADDED only once a namespace is *mounted* on it, never when the
empty placeholder file appears (``ip netns add`` creates the file first and
binds the namespace onto it afterwards; ``ip netns monitor`` and pyroute2's
``NetNSManager`` report the bare file).  It is DELETED when it stops being
a namespace: unmounted (``ip netns del`` unmounts before it unlinks) or
removed.  A name whose mount is replaced by another namespace gives DELETED
then ADDED.

How it sees mounts.  A bind mount over a file makes no inotify event in
the directory, so two sources are combined, each costing nothing while
nothing happens:

* inotify on each run directory (``IN_CREATE``, ``IN_DELETE``, moves, and
  the directory's own removal); a run directory that does not exist yet is
  found through a watch on its nearest existing ancestor;
* ``/proc/thread-self/mountinfo`` polled for ``POLLPRI``, which the kernel
  raises on every change of the mount table of the monitor's mount
  namespace.  On such a change the monitor re-stats only the names it
  knows: placeholders waiting for their mount first (so an ADDED is not
  delayed by the number of live names), then live names (to see unmounts).
  With more than a few names it first lists the mounts under each run
  directory (``listmount``, Linux 6.8; one call) and looks at the names
  only if that list changed, so mounts elsewhere on a busy host cost little.

Measured on a busy 2-core VM (``benchmarks/bench_monitor.py``): from just
before ``named.create()`` (about 1.3 ms of its own) to the callback, 1.6 ms
at the median; ``ip netns monitor``, which reports the bare placeholder,
0.4 ms.  Idle, a monitor over 1,000 names wakes 0 times a second; a mount
anywhere else in its mount namespace wakes it once and costs it about
0.2 ms (one ``listmount``), against 2.3 ms for a ``statx`` of each of the
1,000 names on kernels without ``listmount``.  Fanotify's mount
notifications (``FAN_MNT_ATTACH``, Linux 6.15) would say which mount
changed, and not wake it for the others, but need a kernel most hosts do
not have yet; mountinfo's ``POLLPRI`` is old (2.6.15).

The inotify binding is ``inotify_simple`` (PyPI): about 100 lines of ctypes
over ``inotify_init1``/``inotify_add_watch``, maintained, no C to build,
and it exposes the fd, which the monitor needs to wait on several sources
in one ``epoll`` (asyncinotify brings its own event loop integration
instead).

Directory events and looks at the names are not ordered with each other:
a look can find a name already removed and made again while the events
saying so are still queued.  Every look records the mount on the name
(its ``statx`` mount id, unique since Linux 6.8), and a removal is
recognized as older than that mount (the file under a mount cannot be
removed), so nothing is reported twice.

Limits worth knowing.  A namespace mounted and unmounted again between two
looks of the monitor's thread leaves no trace but its file's creation and
removal: it is reported as an ADDED and DELETED pair with ``ns_id=None``
when the mount table changed meanwhile (a placeholder made and removed
while other mounts changed, never mounted, is reported the same way).
``IN_Q_OVERFLOW`` and netlink overruns make it rescan, so it never stays
wrong.  nsids are those of the network namespace of the thread that
created the monitor.

Ways to consume the events: iterate (``for ev in mon``, blocking in the
calling thread), ``async for ev in mon``, :meth:`NamespaceMonitor.get`
with a timeout, or callbacks (:meth:`NamespaceMonitor.subscribe`, or
``on_event=``), which run on one dispatcher thread.  A monitor has one
stream: with callbacks subscribed, iterating it raises ``RuntimeError``.
Idle, none of these wakes up: every wait is one ``epoll_wait`` on the
inotify fd, the mountinfo fd, the netlink socket and an eventfd that
:meth:`NamespaceMonitor.close` writes to, from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import os
import re
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType

from inotify_simple import INotify
from inotify_simple import flags as _in

from . import _nsid
from . import _syscalls as sys_
from ._procfs import nsfs_dev
from .errors import NslibError

__all__ = [
    "DEFAULT_RUN_DIRS",
    "EventKind",
    "NamespaceEvent",
    "NamespaceMonitor",
    "PathWatch",
    "RunDirError",
    "wait_for_name",
]

log = logging.getLogger("nslib.monitor")

#: What a monitor watches by default: ``ip netns`` (and podman's and
#: containerd's ``cni-*`` names), and docker's sandboxes.
DEFAULT_RUN_DIRS: tuple[str, ...] = ("/run/netns", "/run/docker/netns")

NsId = tuple[int, int]

_DIR_MASK = (
    _in.CREATE
    | _in.DELETE
    | _in.MOVED_FROM
    | _in.MOVED_TO
    | _in.DELETE_SELF
    | _in.MOVE_SELF
    | _in.ONLYDIR
)
# How long after a name appears its removal may still stand for a namespace
# that was mounted and unmounted unseen (see NamespaceMonitor._unseen).
_UNSEEN_WINDOW = 1.0
_GONE = _in.DELETE_SELF | _in.MOVE_SELF | _in.IGNORED | _in.UNMOUNT
# With more known names than this, a change of the mount table is first
# checked against the list of mounts under each run directory (one
# listmount(2), Linux 6.8) before each name is looked at (one statx each):
# a busy host's mounts elsewhere then cost one call, not a look at every name.
_FILTER_ABOVE = 16


def _mounts_under(mnt_id: int) -> bytes | None:
    """The ids of the mounts under mount *mnt_id*, as raw bytes; None if the kernel cannot say."""
    return sys_.mounts_under(mnt_id)


def _stat_mount(path: str) -> tuple[int, int, int | None]:
    """``(st_dev, st_ino, mount id)`` of *path* (symlinks followed); the id is None if unknown.

    The mount id (Linux 6.8's unique one where the kernel has it) tells a
    name's mount from a later one of the same namespace, so a directory
    event can be recognized as older than the mount the name has now.

    :raises OSError: as ``os.stat``.
    """
    return sys_.stat_mount(os.fsencode(path), unique=True)


class EventKind(enum.Enum):
    """What happened."""

    #: A namespace is mounted on the name (``ip netns add``, ``attach``, docker).
    ADDED = "add"
    #: The name stopped being a namespace (unmounted or removed).
    DELETED = "delete"
    #: The monitor's namespace assigned an nsid to a peer namespace.
    NSID_ADDED = "nsid"
    #: The monitor's namespace dropped an nsid (the peer is gone).
    NSID_DELETED = "nsid-delete"


@dataclass(frozen=True, slots=True)
class NamespaceEvent:
    """One event of a :class:`NamespaceMonitor`."""

    kind: EventKind
    #: The name (a file name in :attr:`run_dir`); for nsid events, a name of
    #: that namespace in a watched run directory, else ``None``.
    name: str | None
    #: ``run_dir/name``, or ``None`` with :attr:`name`.
    path: str | None
    #: The watched run directory the name is in, or ``None`` with :attr:`name`.
    run_dir: str | None
    #: ``(st_dev, st_ino)`` of the namespace; ``None`` when it cannot be read.
    #: DELETED events carry the identity the name had.
    ns_id: NsId | None
    #: The nsid the monitor's namespace gives it (``None``: none assigned).
    nsid: int | None = None
    #: Part of the first batch of ``initial=True`` (existed when the monitor started).
    initial: bool = field(default=False, compare=False)


class RunDirError(OSError, NslibError):
    """A run directory cannot be watched: a file, a symlink loop, unreadable.

    ``errno`` says which (ENOTDIR, ELOOP, EACCES, ...).
    """


class _Dir:
    """One watched run directory and what the monitor knows of its names."""

    __slots__ = (
        "anchor",
        "awaited",
        "ident",
        "key",
        "live",
        "mnt",
        "path",
        "pending",
        "region",
        "wd",
    )

    def __init__(self, path: str) -> None:
        self.path = path
        self.wd: int | None = None  # watch on the directory itself
        self.anchor: int | None = None  # watch on an ancestor while the directory is missing
        self.awaited = ""  # the ancestor's child on the way to the directory
        self.ident: NsId | None = None  # (dev, ino) of the watched directory
        self.live: dict[str, NsId] = {}  # names with a namespace mounted
        self.mnt: dict[str, int | None] = {}  # the mount id on each live name
        self.key: int | None = None  # the unique id of the mount it is on
        self.region: bytes | None = None  # the mounts under that when its names were last looked at
        # Names present but not (yet) a namespace -> (the mount-table generation
        # from which on a mount on them could have gone unseen, or None once
        # one was seen; when the name was first seen).
        self.pending: dict[str, tuple[int | None, float]] = {}


class NamespaceMonitor:
    """Events for named namespaces in run directories, and for nsids.

    :param run_dirs: the directories to watch; ``None`` means
        :data:`DEFAULT_RUN_DIRS`.  A directory may be missing: it is
        picked up when it appears (and again if it is removed and made
        anew).  Symlinks in the path are followed.
    :param initial: report the names that already are namespaces as a
        first batch of ADDED events (``initial=True`` on each), with
        nothing missed between that batch and later events: the watches
        are armed before the directories are read.
    :param nsids: also report nsid changes of the calling thread's
        namespace.
    :param on_event: a callback, as :meth:`subscribe`.

    :raises RunDirError: a run directory (or an ancestor) is a file, a
        symlink loop, or cannot be read.
    :raises OSError: inotify or netlink cannot be set up (for example
        ``fs.inotify.max_user_instances`` reached: EMFILE).
    """

    def __init__(
        self,
        run_dirs: Iterable[str | os.PathLike[str]] | None = None,
        *,
        initial: bool = False,
        nsids: bool = True,
        on_event: Callable[[NamespaceEvent], object] | None = None,
    ) -> None:
        paths: list[str] = []
        for given in DEFAULT_RUN_DIRS if run_dirs is None else run_dirs:
            p = os.path.abspath(os.fspath(given))
            if "\0" in p:
                raise RunDirError(errno.EINVAL, f"run directory {p!r} contains a NUL byte")
            if p not in paths:
                paths.append(p)
        self._dirs = [_Dir(p) for p in paths]
        self._wds: dict[int, list[tuple[_Dir, bool]]] = {}  # wd -> (dir, is_anchor)
        self._lock = threading.Lock()  # the queue, subscribers, flags, the names' state
        self._pump_lock = threading.Lock()  # one reader of the fds at a time
        self._queue: deque[NamespaceEvent] = deque()
        self._busy = 0  # threads or tasks reading the fds right now
        self._closed = False
        self._released = False
        self._subscribers: list[Callable[[NamespaceEvent], object]] = []
        self._dispatcher: threading.Thread | None = None
        self._nsid_of: dict[NsId, int | None] = {}
        # Names of namespaces that lost them while they had an nsid, for the
        # RTM_DELNSID that follows when the namespace is destroyed.
        self._former: dict[int, tuple[str, str, NsId]] = {}  # nsid -> name, run_dir, ns_id
        self._nsfs = nsfs_dev()
        self._gen = 0  # mount-table changes seen so far
        # _gen when the directory events were last read: a file in the next
        # read was made after it, so only a later change can be its mount.
        self._read_gen = 0
        self._remount = False
        self._ino: INotify | None = None
        self._mounts = -1
        self._nl: socket.socket | None = None
        self._rtnl: _nsid.Rtnl | None = None
        self._wake = -1
        self._ep: select.epoll | None = None
        try:
            self._ep = select.epoll()
            self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._ep.register(self._wake, select.EPOLLIN)
            self._ino = INotify(nonblocking=True)
            self._ep.register(self._ino.fileno(), select.EPOLLIN)
            # Opening mountinfo records the mount table's generation; every
            # change after this raises POLLPRI.  Armed before anything is read.
            self._mounts = os.open("/proc/thread-self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
            self._ep.register(self._mounts, select.EPOLLPRI)
            self._mount_poll = select.poll()
            self._mount_poll.register(self._mounts, select.POLLPRI)
            if nsids:
                self._nl = socket.socket(
                    socket.AF_NETLINK,
                    socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                    socket.NETLINK_ROUTE,
                )
                self._nl.bind((0, 0))
                self._nl.setsockopt(270, 1, _nsid.RTNLGRP_NSID)  # NETLINK_ADD_MEMBERSHIP
                self._ep.register(self._nl.fileno(), select.EPOLLIN)
                self._rtnl = _nsid.Rtnl()
            first: list[NamespaceEvent] = []
            for d in self._dirs:
                self._arm(d, first, strict=True)
            if initial:
                self._queue.extend(
                    NamespaceEvent(e.kind, e.name, e.path, e.run_dir, e.ns_id, e.nsid, initial=True)
                    for e in first
                )
        except BaseException:
            self._release()
            raise
        if on_event is not None:
            self.subscribe(on_event)

    # -- public -----------------------------------------------------------------

    @property
    def run_dirs(self) -> tuple[str, ...]:
        """The watched directories (absolute)."""
        return tuple(d.path for d in self._dirs)

    @property
    def closed(self) -> bool:
        """:meth:`close` was called."""
        return self._closed

    def names(self) -> dict[str, NsId]:
        """The names that are namespaces right now, as the monitor knows them: path -> ns_id.

        Only up to date with the events consumed so far.
        """
        with self._lock:
            return {os.path.join(d.path, n): i for d in self._dirs for n, i in d.live.items()}

    def close(self) -> None:
        """Stop: iterators end, waiting calls return, the dispatcher thread exits.

        Safe from any thread, also from a callback, and idempotent.  Events
        not consumed yet are dropped.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.clear()
            with contextlib.suppress(OSError):
                os.eventfd_write(self._wake, 1)
            idle = self._busy == 0
            dispatcher = self._dispatcher
        if idle:
            self._release()
        if dispatcher is not None and dispatcher is not threading.current_thread():
            dispatcher.join()

    def __enter__(self) -> NamespaceMonitor:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> NamespaceMonitor:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_released", True):
            self._closed = True
            self._release()

    def get(self, timeout: float | None = None) -> NamespaceEvent | None:
        """The next event; ``None`` after *timeout* seconds or once closed.

        :raises RuntimeError: callbacks are subscribed (they get the events).
        """
        self._no_callbacks()
        return self._next(timeout)

    def __iter__(self) -> Iterator[NamespaceEvent]:
        return self

    def __next__(self) -> NamespaceEvent:
        self._no_callbacks()
        ev = self._next(None)
        if ev is None:
            raise StopIteration
        return ev

    def __aiter__(self) -> NamespaceMonitor:
        return self

    async def __anext__(self) -> NamespaceEvent:
        self._no_callbacks()
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._queue:
                    return self._queue.popleft()
                if self._closed:
                    raise StopAsyncIteration
            # A worker thread waits in epoll_wait itself.  Nesting the epoll fd
            # in the event loop's would lose mount changes: the outer poll's
            # readiness check polls mountinfo, which consumes its one-shot
            # POLLPRI before the inner epoll_wait could report it.
            await loop.run_in_executor(None, self._pump_into_queue)

    def _pump_into_queue(self) -> None:
        # Queued, not returned: an await cancelled meanwhile loses nothing.
        with self._lock:
            if self._closed:
                return
            self._busy += 1
        try:
            events = self._pump(None)
        finally:
            self._leave()
        with self._lock:
            if not self._closed:
                self._queue.extend(events)

    def subscribe(self, callback: Callable[[NamespaceEvent], object]) -> Callable[[], None]:
        """Call *callback(event)* for every event, on the monitor's dispatcher thread.

        The thread (``nslib-monitor``) starts with the first subscriber and
        blocks in ``epoll_wait`` while nothing happens.  Every subscriber
        gets every event, in order.  An exception from a callback is logged
        (``nslib.monitor``) and delivery goes on.

        :returns: a function that unsubscribes (idempotent).
        :raises RuntimeError: the monitor is closed.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the monitor is closed")
            self._subscribers.append(callback)
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch, name="nslib-monitor", daemon=True
                )
                self._dispatcher.start()

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    # -- consuming -----------------------------------------------------------------

    def _no_callbacks(self) -> None:
        if self._dispatcher is not None:
            raise RuntimeError("this monitor delivers its events to callbacks; do not iterate it")

    def _next(self, timeout: float | None) -> NamespaceEvent | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._queue:
                    return self._queue.popleft()
                if self._closed:
                    return None
                self._busy += 1
            try:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                events = self._pump(left)
            finally:
                self._leave()
            with self._lock:
                if self._closed:
                    return None
                self._queue.extend(events)
                if self._queue:
                    return self._queue.popleft()
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _leave(self) -> None:
        with self._lock:
            self._busy -= 1
            release = self._closed and self._busy == 0
        if release:
            self._release()

    def _dispatch(self) -> None:
        while True:
            ev = self._next(None)
            if ev is None:
                return
            with self._lock:
                subscribers = list(self._subscribers)
            for cb in subscribers:
                try:
                    cb(ev)
                except Exception:
                    log.exception("a monitor callback raised; delivery goes on")

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        if self._ep is not None:
            self._ep.close()
        if self._ino is not None:
            self._ino.close()
        if self._nl is not None:
            self._nl.close()
        if self._rtnl is not None:
            self._rtnl.close()
        for fd in (self._mounts, self._wake):
            if fd >= 0:
                os.close(fd)

    # -- reading the sources -----------------------------------------------------

    def _pump(self, timeout: float | None) -> list[NamespaceEvent]:
        """Wait up to *timeout* for any source; return the events it gave.

        Only one thread pumps at a time (the callers' ``_busy`` protocol
        keeps the fds open while it does).
        """
        assert self._ep is not None
        with self._pump_lock:
            if self._closed:
                return []
            try:
                ready = self._ep.poll(-1 if timeout is None else timeout)
            except InterruptedError:
                return []
            out: list[NamespaceEvent] = []
            fds = {fd for fd, _ in ready}
            assert self._ino is not None
            with self._lock:
                if self._closed:
                    return []
                # The mount table first: names the directory events bring are
                # then judged against a generation that covers their mounts.
                self._remount = self._mounts in fds or self._mounts_moved()
                if self._remount:
                    self._gen += 1
                # Read even when epoll did not report it: a directory event
                # queued since then must be handled before the names are
                # looked at, or the look would be ahead of it (see _stale).
                if self._ino.fileno() in fds or self._remount:
                    self._on_inotify(out)
                if self._remount:
                    self._on_mounts(out)
                if self._nl is not None and self._nl.fileno() in fds:
                    self._on_netlink(out)
            return out

    def _mounts_moved(self) -> bool:
        """Whether the mount table changed since the last look (consumes the signal)."""
        return bool(self._mount_poll.poll(0))

    def _on_inotify(self, out: list[NamespaceEvent]) -> set[tuple[int, str]]:
        """Read and handle the directory events; the ``(id(dir), name)`` they touched."""
        assert self._ino is not None
        base, self._read_gen = self._read_gen, self._gen
        rearm: list[_Dir] = []
        # Per name, in order: True for a removal, False for a creation.
        seqs: dict[tuple[int, str], tuple[_Dir, list[bool]]] = {}
        for ev in self._ino.read(timeout=0):
            if ev.mask & _in.Q_OVERFLOW:
                rearm = list(self._dirs)
                continue
            for d, anchor in self._wds.get(ev.wd, ()):
                if d in rearm:
                    continue
                if ev.mask & _GONE or (anchor and ev.name == d.awaited):
                    rearm.append(d)
                elif anchor or not ev.name:
                    continue
                else:
                    seq = seqs.setdefault((id(d), ev.name), (d, []))[1]
                    seq.append(bool(ev.mask & (_in.DELETE | _in.MOVED_FROM)))
        for (_, name), (d, seq) in seqs.items():
            if d not in rearm:
                self._on_name(d, name, seq, out, base)
        for d in rearm:
            self._arm(d, out, strict=False)
        return set(seqs) | {(id(d), n) for d in rearm for n in (*d.live, *d.pending)}

    def _on_name(
        self, d: _Dir, name: str, seq: list[bool], out: list[NamespaceEvent], base: int
    ) -> None:
        """The directory events of one name in one read: its files, in order.

        The first removal ends the file known before (if the events start
        with one); a file created and removed within the read came and went
        unseen; the last creation is the file there now, looked at once.
        """
        stale = True in seq and self._stale(d, name)
        # A file the monitor knows (looked at before these events were read):
        # the first removal ends it, unless it is the one still mounted.
        known = not stale and (name in d.live or name in d.pending)
        for k, removed in enumerate(seq):
            if removed and known:
                known = False
                self._unseen(d, name, out)
                self._update(d, name, None, False, out)
            elif removed and k > 0:
                self._came_and_went(d, name, out, base)
            elif not removed and k == len(seq) - 1 and not stale:
                self._look(d, name, out, created=base)

    def _stale(self, d: _Dir, name: str) -> bool:
        """Whether a removal of *name* happened before the mount the monitor knows on it.

        A look at the names can be ahead of the directory events still
        queued: the name was removed and made again, and the new mount was
        already reported.  The file under a mount cannot be removed while
        it is mounted (``EBUSY``; from another mount namespace, removing it
        takes the mount away everywhere), so if the name still has the very
        mount the monitor recorded, the removal was of an earlier file.
        """
        if name not in d.live or d.mnt.get(name) is None:
            return False
        try:
            dev, ino, mnt = _stat_mount(os.path.join(d.path, name))
        except OSError:
            return False
        return (dev, ino) == d.live[name] and mnt == d.mnt[name]

    def _came_and_went(self, d: _Dir, name: str, out: list[NamespaceEvent], since: int) -> None:
        """A file made and removed between two reads: a namespace if the mount table moved."""
        if self._gen == since and self._mounts_moved():
            self._gen += 1
            self._remount = True
        if self._gen > since:
            path = os.path.join(d.path, name)
            out.append(NamespaceEvent(EventKind.ADDED, name, path, d.path, None))
            out.append(NamespaceEvent(EventKind.DELETED, name, path, d.path, None))

    def _unseen(self, d: _Dir, name: str, out: list[NamespaceEvent]) -> None:
        """A name removed before its mount was seen: report it if it may have had one.

        Between the directory events and the mount table's signal nothing is
        ordered, so a namespace mounted and unmounted again between two looks
        leaves only this: its name came and went while the mount table
        changed.  Then it is reported ADDED and DELETED with ``ns_id=None``
        (it cannot be identified any more), as ``ip netns monitor`` reports
        it.  A placeholder whose creation failed while other mounts changed
        is reported too; one removed while the mount table stood still, or more
        than a second after it appeared (a stale placeholder), is not.
        """
        entry = d.pending.get(name)
        if entry is None or name in d.live:
            return
        since, seen = entry
        if since is None:
            return  # its mount was seen going
        if time.monotonic() - seen > _UNSEEN_WINDOW:
            return  # a placeholder that sat there: removing it is no namespace going
        self._came_and_went(d, name, out, since)

    def _on_mounts(self, out: list[NamespaceEvent]) -> None:
        changes: list[tuple[_Dir, str]] = []
        changed: list[str] = []
        many = sum(len(d.live) + len(d.pending) for d in self._dirs) > _FILTER_ABOVE
        for d in self._dirs:
            if d.wd is None:
                continue
            try:
                st = os.stat(d.path)
                same = (st.st_dev, st.st_ino) == d.ident
            except OSError:
                same = False
            if not same:  # something was mounted over (or under) the directory
                self._arm(d, out, strict=False)
                continue
            region = _mounts_under(d.key) if many and d.key is not None else None
            if region is not None and region == d.region:
                continue  # nothing mounted or unmounted at or under it
            d.region = region
            changed += [n for n in sorted(d.pending) if self._differs(d, n)]  # likely news first
            changed += [n for n in list(d.live) if self._differs(d, n)]
            changes += [(d, n) for n in changed]
            changed = []
        if not changes:
            return
        # The look may be ahead of directory events queued meanwhile (the
        # name removed and made again): those go first, in order, and only
        # the names they did not touch are brought up to date from the look.
        touched = self._on_inotify(out)
        for d, name in changes:
            if (id(d), name) not in touched:
                self._look(d, name, out)

    def _differs(self, d: _Dir, name: str) -> bool:
        """Whether *name* is not what the monitor knows (a placeholder gone: its event decides)."""
        try:
            dev, ino, mnt = _stat_mount(os.path.join(d.path, name))
        except OSError:
            return name in d.live
        if dev != self._nsfs:
            return name in d.live
        return d.live.get(name) != (dev, ino) or d.mnt.get(name) != mnt

    def _on_netlink(self, out: list[NamespaceEvent]) -> None:
        assert self._nl is not None
        while True:
            try:
                data = self._nl.recv(65536)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # overrun: ask again for what we know
                    self._resync_nsids(out)
                    continue
                raise
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if length < 16:
                    break
                if kind in (_nsid.RTM_NEWNSID, _nsid.RTM_DELNSID):
                    nsid, _ = _nsid.parse_nsid_msg(data, off, length)
                    if nsid is not None:
                        self._nsid_event(kind == _nsid.RTM_NEWNSID, nsid, out)
                off += (length + 3) & ~3

    # -- state ---------------------------------------------------------------------

    def _arm(self, d: _Dir, out: list[NamespaceEvent], *, strict: bool) -> None:
        """(Re)watch *d* and bring its names up to date, reporting the differences."""
        assert self._ino is not None
        for wd in (d.wd, d.anchor):
            if wd is not None:
                self._unwatch(wd, d)
        d.wd = d.anchor = None
        d.ident = None
        while True:
            try:
                wd = self._ino.add_watch(d.path, _DIR_MASK)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTDIR) or (
                    strict and e.errno == errno.ENOTDIR and os.path.lexists(d.path)
                ):
                    if strict:
                        raise RunDirError(
                            e.errno or errno.EIO,
                            f"cannot watch the run directory {d.path}: {os.strerror(e.errno or 5)}",
                            d.path,
                        ) from None
                    log.warning("cannot watch the run directory %r: %s", d.path, e)
                if not self._watch_anchor(d, strict):
                    break  # nothing to watch at all; reported as deleted
                # The directory may have appeared between the two watches.
                if not os.path.isdir(d.path):
                    break
                self._unwatch(d.anchor, d)  # type: ignore[arg-type]
                d.anchor = None
                continue
            try:
                st = os.stat(d.path)
            except OSError:
                self._unwatch(wd, d)
                continue  # removed right away: watch the ancestor instead
            d.wd = wd
            d.ident = (st.st_dev, st.st_ino)
            with contextlib.suppress(OSError):
                d.key = _stat_mount(d.path)[2]
            d.region = None
            self._wds.setdefault(wd, []).append((d, False))
            break
        names = self._list(d)
        for name in list(d.live) + list(d.pending):
            if name not in names:
                self._update(d, name, None, False, out)
        for name in sorted(names):
            self._look(d, name, out)

    def _watch_anchor(self, d: _Dir, strict: bool) -> bool:
        assert self._ino is not None
        up = d.path
        while True:
            parent = os.path.dirname(up)
            if parent == up:
                return False
            up = parent
            try:
                wd = self._ino.add_watch(up, _DIR_MASK)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR):
                    continue
                if strict:
                    raise RunDirError(
                        e.errno or errno.EIO,
                        f"cannot watch {up}, an ancestor of the run directory {d.path}: "
                        f"{os.strerror(e.errno or 5)}",
                        up,
                    ) from None
                log.warning("cannot watch %r for the run directory %r: %s", up, d.path, e)
                return False
            d.anchor = wd
            d.awaited = os.path.relpath(d.path, up).split(os.sep, 1)[0]
            self._wds.setdefault(wd, []).append((d, True))
            return True

    def _unwatch(self, wd: int, d: _Dir) -> None:
        assert self._ino is not None
        users = [u for u in self._wds.get(wd, []) if u[0] is not d]
        if users:
            self._wds[wd] = users
            return
        self._wds.pop(wd, None)
        with contextlib.suppress(OSError):  # already gone with its inode
            self._ino.rm_watch(wd)

    def _list(self, d: _Dir) -> set[str]:
        if d.wd is None:
            return set()
        try:
            return set(os.listdir(d.path))
        except OSError:
            return set()

    def _look(
        self, d: _Dir, name: str, out: list[NamespaceEvent], created: int | None = None
    ) -> None:
        """Bring *name* up to date; *created*: it was just created, at that generation."""
        path = os.path.join(d.path, name)
        try:
            dev, ino, mnt = _stat_mount(path)
        except OSError:
            if name in d.live:
                self._update(d, name, None, False, out)
            elif created is not None:
                d.pending.setdefault(name, (created, time.monotonic()))
            # Otherwise its IN_DELETE (on its way) decides, see _unseen().
            return
        now = (dev, ino) if dev == self._nsfs else None
        if now is not None and d.live.get(name) == now and d.mnt.get(name) not in (None, mnt):
            # Mounted anew: unmounted meanwhile (its inode number may even
            # have gone to a new namespace), so it went and came back.
            self._update(d, name, None, True, out)
        self._update(d, name, now, True, out, created)
        if now is not None:
            d.mnt[name] = mnt

    def _update(
        self,
        d: _Dir,
        name: str,
        now: NsId | None,
        present: bool,
        out: list[NamespaceEvent],
        created: int | None = None,
    ) -> None:
        old = d.live.get(name)
        if present and now is None:
            if old is not None:  # just seen unmounted: nothing left unseen
                d.pending[name] = (None, time.monotonic())
            else:
                since = self._gen if created is None else created
                d.pending.setdefault(name, (since, time.monotonic()))
        else:
            d.pending.pop(name, None)
        if old == now:
            return
        path = os.path.join(d.path, name)
        if old is not None:
            del d.live[name]
            d.mnt.pop(name, None)
            nsid = self._nsid_of.get(old)
            if old not in self._names_of():
                self._nsid_of.pop(old, None)
                if nsid is not None:
                    self._former[nsid] = (name, d.path, old)
            out.append(NamespaceEvent(EventKind.DELETED, name, path, d.path, old, nsid))
        if now is not None:
            d.live[name] = now
            nsid = self._query_nsid(path, now)
            out.append(NamespaceEvent(EventKind.ADDED, name, path, d.path, now, nsid))

    def _names_of(self) -> dict[NsId, tuple[str, _Dir]]:
        found: dict[NsId, tuple[str, _Dir]] = {}
        for d in self._dirs:
            for n in sorted(d.live):
                found.setdefault(d.live[n], (n, d))
        return found

    def _query_nsid(self, path: str, ident: NsId) -> int | None:
        if self._rtnl is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return self._nsid_of.get(ident)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != ident:
                return self._nsid_of.get(ident)
            nsid = self._rtnl.get(fd)
        except OSError:
            return self._nsid_of.get(ident)
        finally:
            os.close(fd)
        self._nsid_of[ident] = nsid
        return nsid

    def _nsid_event(self, added: bool, nsid: int, out: list[NamespaceEvent]) -> None:
        names = self._names_of()
        if added:
            self._former.pop(nsid, None)  # reused: the old holder is gone
            for ident, (name, d) in names.items():
                if self._nsid_of.get(ident) is None:
                    self._query_nsid(os.path.join(d.path, name), ident)
        for ident, (name, d) in names.items():
            if self._nsid_of.get(ident) == nsid:
                if not added:
                    self._nsid_of[ident] = None
                kind = EventKind.NSID_ADDED if added else EventKind.NSID_DELETED
                out.append(
                    NamespaceEvent(kind, name, os.path.join(d.path, name), d.path, ident, nsid)
                )
                return
        kind = EventKind.NSID_ADDED if added else EventKind.NSID_DELETED
        if not added:
            # Destroyed after its names went: report it under its last name.
            former = self._former.pop(nsid, None)
            if former is not None:
                name, run_dir, ident = former
                path = os.path.join(run_dir, name)
                out.append(NamespaceEvent(kind, name, path, run_dir, ident, nsid))
                return
        out.append(NamespaceEvent(kind, None, None, None, None, nsid))

    def _resync_nsids(self, out: list[NamespaceEvent]) -> None:
        for ident, (name, d) in self._names_of().items():
            before = self._nsid_of.get(ident)
            now = self._query_nsid(os.path.join(d.path, name), ident)
            if before == now:
                continue
            path = os.path.join(d.path, name)
            if before is not None:
                out.append(
                    NamespaceEvent(EventKind.NSID_DELETED, name, path, d.path, ident, before)
                )
            if now is not None:
                out.append(NamespaceEvent(EventKind.NSID_ADDED, name, path, d.path, ident, now))


# -- waiting for references to change -------------------------------------------------------

_PROC_NS = re.compile(r"^/proc/(\d+)(?:/task/(\d+))?/ns/net$")


class PathWatch:
    """Sleep until the namespace behind any of some paths may have changed.

    What the :class:`~nslib.Configurator` waits on instead of polling.
    :meth:`watch` says which paths matter; :meth:`wait` returns once one of
    them may have changed (the caller re-checks them), when :meth:`wake` is
    called, or after *timeout*.

    * A path in a directory (a named namespace ``run_dir/NAME``, any
      bind-mounted namespace file): a :class:`NamespaceMonitor` on its
      directory, so creation, mount, unmount and removal all wake it.
    * ``/proc/PID/ns/net`` and ``/proc/PID/task/TID/ns/net``: a pidfd
      (``pidfd_open``), which wakes it when that process exits.  A process
      that moves itself to another namespace (``setns``) without exiting is
      not noticed.  A PID that does not exist is not waited for: it would
      only ever come back as another process.
    * Other paths under ``/proc`` (``/proc/self/fd/N``), and PIDs on a
      kernel without pidfds (before Linux 5.3): looked at again every
      *fallback_interval* seconds, the only case that wakes up on a timer.

    Not thread-safe except :meth:`wake`, which any thread may call.
    """

    def __init__(self, *, fallback_interval: float = 0.05) -> None:
        self._fallback_interval = fallback_interval
        self._ep = select.epoll()
        self._wake = -1
        try:
            self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._ep.register(self._wake, select.EPOLLIN)
        except BaseException:
            self._ep.close()
            raise
        self._mon: NamespaceMonitor | None = None
        self._dirs: tuple[str, ...] = ()
        self._pidfds: dict[int, int] = {}  # pid -> pidfd
        self._fallback = False
        self._closed = False
        self._lock = threading.Lock()  # wake() against close(): never write to a reused fd

    def watch(self, paths: Iterable[str]) -> None:
        """Watch exactly *paths* from now on (cheap when nothing changed)."""
        dirs: set[str] = set()
        pids: set[int] = set()
        fallback = False
        for p in paths:
            p = os.path.abspath(p)
            m = _PROC_NS.match(p)
            if m:
                pids.add(int(m.group(2) or m.group(1)))
            elif p == "/proc" or p.startswith("/proc/"):
                fallback = True
            else:
                dirs.add(os.path.dirname(p))
        self._watch_dirs(tuple(sorted(dirs)))
        for pid in list(self._pidfds):
            if pid not in pids:
                self._drop_pid(pid)
        for pid in pids - set(self._pidfds):
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            except OSError:  # ENOSYS: a kernel without pidfds
                fallback = True
                continue
            self._pidfds[pid] = fd
            self._ep.register(fd, select.EPOLLIN)
        self._fallback = fallback

    def _watch_dirs(self, dirs: tuple[str, ...]) -> None:
        if dirs == self._dirs:
            return
        if self._mon is not None:
            assert self._mon._ep is not None
            self._ep.unregister(self._mon._ep.fileno())
            self._mon.close()
            self._mon = None
        self._dirs = dirs
        if not dirs:
            return
        try:
            self._mon = NamespaceMonitor(dirs, nsids=False)
        except OSError as e:  # a directory that is a file, unreadable, ...
            log.warning(
                "cannot watch %s (%s); looking again every %g s", dirs, e, self._fallback_interval
            )
            self._dirs = ()
            self._fallback = True
            return
        assert self._mon._ep is not None
        self._ep.register(self._mon._ep.fileno(), select.EPOLLIN)

    def _drop_pid(self, pid: int) -> None:
        fd = self._pidfds.pop(pid)
        self._ep.unregister(fd)
        os.close(fd)

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until something may have changed; ``False`` if nothing woke it."""
        if self._closed:
            return False
        if self._fallback:
            timeout = (
                self._fallback_interval
                if timeout is None
                else min(timeout, self._fallback_interval)
            )
        try:
            ready = self._ep.poll(-1 if timeout is None else timeout)
        except InterruptedError:
            return True
        mon = self._mon._ep.fileno() if self._mon is not None and self._mon._ep is not None else -1
        for fd, _ in ready:
            if fd == self._wake:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._wake)
            elif fd == mon and self._mon is not None:
                while self._mon.get(0) is not None:
                    pass
            else:
                for pid, pfd in list(self._pidfds.items()):
                    if pfd == fd:
                        self._drop_pid(pid)  # exited: readable for ever
        return bool(ready) or self._fallback

    def wake(self) -> None:
        """Make :meth:`wait` return now (from any thread)."""
        with self._lock:
            if not self._closed:
                os.eventfd_write(self._wake, 1)

    def close(self) -> None:
        """Release the fds (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._mon is not None:
            self._mon.close()
        for pid in list(self._pidfds):
            self._drop_pid(pid)
        self._ep.close()
        os.close(self._wake)


def wait_for_name(name: str, *, run_dir: str | None = None, timeout: float) -> bool:
    """Wait until *name* in *run_dir* is a mounted namespace, without polling.

    For a name whose placeholder exists but is not mounted yet (a creation
    in progress elsewhere).  ``True`` as soon as it is mounted (at once if
    it already is), ``False`` after *timeout* seconds.  The run directory is
    listed once, so this is meant for the rare wait, not a hot path.

    :raises RunDirError: *run_dir* cannot be watched.
    """
    from .names import validate_run_dir

    deadline = time.monotonic() + timeout
    with NamespaceMonitor([validate_run_dir(run_dir)], initial=True, nsids=False) as mon:
        while True:
            ev = mon.get(max(0.0, deadline - time.monotonic()))
            if ev is None:
                return False
            if ev.kind is EventKind.ADDED and ev.name == name:
                return True
