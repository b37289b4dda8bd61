"""The per-namespace worker of a :class:`~nslib.Configurator`, and its netlink sessions.

Each target namespace has one worker thread.  It applies that namespace's
items in declaration order, pass after pass, with one :class:`_Pass` (the
:class:`~nslib.configurator.items.ApplyContext` items see) per pass.

Netlink sessions are made on the worker thread (pyroute2 binds them to
it) and kept between passes for the default namespace and for named, path
and PID namespaces, as long as the reference still resolves to the same
namespace: a session costs about as much as a request, so a pass that
reuses them is about twice as fast.  A kept session also holds its
namespace open, so the kernel cannot recycle its inode number unseen.
A microservice's session is closed after every pass, so a stopped
container's namespace is freed at once.

While a worker waits for a named or path namespace to appear, it also
waits on the mount table's change notification itself (a
:class:`_MountWait`), so the mount wakes the thread that applies, with no
hand-off from the configurator's watcher thread: on a busy host every
thread hand-off is a trip through the scheduler, and that trip was the
tail of the latency from ``ip netns add`` to APPLIED.  The watcher stays
the one that never misses a change (a symlink made, a directory moved);
this is the fast path beside it, for at most :data:`DIRECT_WAITS` workers
at once (each wakes on every mount change of the host while it waits).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
import time
from typing import TYPE_CHECKING

from .. import netlink as nl
from ..errors import (
    NamespaceNotFound,
    NotANamespace,
    SharedNamespaceError,
    UnavailableMicroserviceError,
)
from ..handle import NsHandle
from ..reference import ReferenceType
from .items import ConfigItem, ItemStatus, Target, Unresolved, target_name

if TYPE_CHECKING:
    from . import Configurator

_log = logging.getLogger("nslib.configurator")

#: How many workers of one configurator may wait on the mount table
#: themselves at a time (the others rely on the watcher thread alone).
DIRECT_WAITS = 16


def watchable(ref: Target) -> bool:
    """Named namespaces, paths and PIDs are watched by the configurator.

    Microservices come from the tracker; the default namespace never changes.
    """
    return ref is not None and ref.type != ReferenceType.MICROSERVICE


def mount_watchable(conf: Configurator, ref: Target) -> bool:
    """A named or path reference whose appearance is a mount (not ``/proc``)."""
    if ref is None or ref.type not in (ReferenceType.NSID, ReferenceType.FD):
        return False
    path = conf._path_of(ref)
    return not (path == "/proc" or path.startswith("/proc/"))


class _MountWait:
    """A worker's own wait: the mount table changed, or :meth:`wake` was called.

    One fd on ``/proc/thread-self/mountinfo`` (``POLLPRI`` on every change
    of the mount table after it was opened) and one eventfd.
    """

    def __init__(self) -> None:
        self.mounts = os.open("/proc/thread-self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.wakefd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except BaseException:
            os.close(self.mounts)
            raise
        self.poll = select.poll()
        self.poll.register(self.mounts, select.POLLPRI)
        self.poll.register(self.wakefd, select.POLLIN)

    def wake(self) -> None:
        os.eventfd_write(self.wakefd, 1)

    def wait(self, timeout: float | None) -> bool:
        """Sleep; ``True`` if the mount table changed meanwhile."""
        ms = None if timeout is None else max(0, int(timeout * 1000) + 1)
        try:
            ready = self.poll.poll(ms)
        except InterruptedError:
            return False
        moved = False
        for fd, _ in ready:
            if fd == self.wakefd:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self.wakefd)
            else:
                moved = True
        return moved

    def close(self) -> None:
        os.close(self.mounts)
        os.close(self.wakefd)


class _Pass:
    """The namespaces one worker pass resolved, and their sessions (one thread)."""

    def __init__(self, worker: _Worker) -> None:
        self._worker = worker
        self.handles: dict[Target, NsHandle] = {}
        self.failed: dict[Target, Unresolved] = {}

    def handle(self, ref: Target) -> NsHandle:
        if ref in self.handles:
            return self.handles[ref]
        if ref in self.failed:
            raise self.failed[ref]
        try:
            h = self._worker.conf._open(ref)
        except SharedNamespaceError:
            # Not "not there yet": it is there and is the host's.  Waiting
            # would be PENDING for ever with no retry; it is a failure.
            raise
        except (NamespaceNotFound, NotANamespace, UnavailableMicroserviceError) as e:
            name = target_name(ref)
            self.failed[ref] = Unresolved(str(e) if name in str(e) else f"{name}: {e}")
            raise self.failed[ref] from e
        self.handles[ref] = h
        return h

    def ns_id(self, ref: Target) -> tuple[int, int]:
        return self.handle(ref).ns_id

    def session(self, ref: Target) -> nl.Session:
        """The session of *ref*: the kept one if it is still that namespace."""
        h = self.handle(ref)
        sessions = self._worker.sessions
        s = sessions.get(ref)
        if s is not None and s.ns_id != h.ns_id:
            del sessions[ref]  # the reference names another namespace now
            s.close()
            s = None
        if s is None:
            s = sessions[ref] = nl.Session(h)
        return s

    def close(self) -> None:
        for h in self.handles.values():
            h.close()
        self.handles.clear()


class _Worker:
    """The thread that applies every item targeting one namespace."""

    def __init__(self, conf: Configurator, key: Target) -> None:
        self.conf = conf
        self.key = key
        self.items: list[ConfigItem] = []
        self.removals: list[ConfigItem] = []
        self.dirty = False
        self.force = False
        self.stopping = False
        self.wake = threading.Condition(conf._lock)
        #: Sessions kept between passes (touched by this worker's thread only).
        self.sessions: dict[Target, nl.Session] = {}
        #: The worker's own wait on the mount table while it waits for a
        #: named or path namespace (set and cleared under the lock).
        self.direct: _MountWait | None = None
        #: The references it waits for (this worker's thread only).
        self.awaited: list[Target] = []
        self.thread = threading.Thread(
            target=self._main, name=f"nslib-cfg {target_name(key)}", daemon=True
        )

    def trigger(self, force: bool = False) -> None:
        """Ask for a pass (caller holds the configurator's lock)."""
        self.dirty = True
        self.force = self.force or force
        self.poke()

    def poke(self) -> None:
        """Wake the thread to look at its flags (caller holds the configurator's lock)."""
        self.wake.notify()
        if self.direct is not None:
            self.direct.wake()

    def _next_retry(self) -> float | None:
        times = [it._retry_at for it in self.items if it._retry_at is not None]
        return min(times) if times else None

    def _main(self) -> None:
        lock = self.conf._lock
        try:
            while True:
                with lock:
                    while not (self.dirty or self.removals or self.stopping):
                        retry = self._next_retry()
                        if retry is not None and retry <= time.monotonic():
                            self.dirty = True
                            break
                        left = None if retry is None else retry - time.monotonic()
                        direct = self.direct
                        if direct is None:
                            self.wake.wait(left)
                            continue
                        lock.release()
                        try:
                            if direct.wait(left):
                                self._look()
                        finally:
                            lock.acquire()
                    if self.stopping:
                        return
                    removals, self.removals = self.removals, []
                    dirty, force = self.dirty, self.force
                    self.dirty = self.force = False
                    items = list(self.items)
                p = _Pass(self)
                try:
                    for it in removals:
                        self._undo(p, it)
                    if removals:
                        # Undoing may take others' ground away (a route through
                        # a deleted veth): look again, and report the truth.
                        dirty = force = True
                    if dirty:
                        self._pass(p, items, force)
                    self._keep_sessions(p, items)
                    self._wait_directly(p, items)
                finally:
                    p.close()
                with lock:
                    if not self.items and not self.dirty and not self.removals:
                        if self.conf._workers.get(self.key) is self:
                            del self.conf._workers[self.key]
                            self.conf._retired.append(self)  # close() still joins it
                        return
        except Exception as e:
            # A bug or an unexpected fault (EMFILE in dup(), a close that
            # raised) must not silently stop a target namespace: say so on
            # its items, and make room for a fresh worker.
            _log.exception("configurator worker for %s died", target_name(self.key))
            self._died(e)
        finally:
            for s in self.sessions.values():
                s.close()
            self.sessions.clear()
            with lock:
                direct, self.direct = self.direct, None
            if direct is not None:
                direct.close()

    def _wait_directly(self, p: _Pass, items: list[ConfigItem]) -> None:
        """Wait on the mount table in this thread while a named or path namespace is missing."""
        conf = self.conf
        used = {ref for it in items if not it._removing for ref in it.namespaces()}
        self.awaited = [r for r in p.failed if r in used and mount_watchable(conf, r)]
        if not self.awaited:
            with conf._lock:
                direct, self.direct = self.direct, None
            if direct is not None:
                direct.close()
            return
        if self.direct is not None:
            return
        with conf._lock:
            busy = sum(1 for w in conf._workers.values() if w.direct is not None)
        if busy >= DIRECT_WAITS:
            return
        try:
            direct = _MountWait()
        except OSError as e:  # EMFILE: the watcher thread alone will do
            if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                raise
            return
        with conf._lock:
            self.direct = direct
        # A mount between the failed resolution and the fd's opening raises
        # no POLLPRI on it: look once now.
        self._look()

    def _look(self) -> None:
        """Look whether a namespace this worker waits for appeared (the mount table changed)."""
        conf = self.conf
        for ref in self.awaited:
            assert ref is not None
            now = conf._ident(ref)
            if now is None:
                continue
            with conf._lock:
                if ref in conf._seen and conf._seen[ref] != now:
                    conf._seen[ref] = now  # the watcher thread need not trigger again
                    conf._trigger_users(ref, False)

    def _died(self, error: Exception) -> None:
        conf = self.conf
        with conf._lock:
            # Out of the map, so the next add_*(), resync() or trigger of this
            # namespace starts a fresh worker (Configurator._worker_for), which
            # adopts these items and retries them.
            if conf._workers.get(self.key) is self:
                del conf._workers[self.key]
            items, self.items = self.items, []
            removals, self.removals = self.removals, []
        for it in removals:
            conf._update(it, ItemStatus.REMOVED, error=error)  # the undo may not have run
        for it in items:
            conf._update(it, ItemStatus.FAILED, error=error)

    def _pass(self, p: _Pass, items: list[ConfigItem], force: bool) -> None:
        conf = self.conf
        todo = items
        first = True
        failed: list[tuple[ConfigItem, BaseException]] = []
        while todo:
            failed = []
            progress = False
            for it in todo:
                if it._removing:
                    continue
                try:
                    ids = tuple(p.ns_id(ref) for ref in it.namespaces())
                except Unresolved as u:
                    if it.was_applied:
                        try:
                            it.release(p)  # its namespace went away: what it held elsewhere too
                        except Exception as e:
                            failed.append((it, e))
                            continue
                    conf._update(it, ItemStatus.PENDING, waiting_for=str(u))
                    continue
                except Exception as e:  # e.g. the plugin was closed: report, retry later
                    failed.append((it, e))
                    continue
                if (
                    first
                    and not force
                    and it._status is ItemStatus.APPLIED
                    and it._applied_in == ids
                ):
                    continue
                try:
                    it.apply(p)
                except Unresolved as u:
                    conf._update(it, ItemStatus.PENDING, waiting_for=str(u))
                    continue
                except Exception as e:
                    failed.append((it, e))
                    continue
                conf._update(it, ItemStatus.APPLIED, applied_in=ids)
                progress = True
            if not failed or not progress:
                break
            # Something new took effect: the failures may have depended on it.
            todo = [it for it, _ in failed]
            first = False
        for it, err in failed:
            conf._update(it, ItemStatus.FAILED, error=err)

    def _keep_sessions(self, p: _Pass, items: list[ConfigItem]) -> None:
        """Close the sessions the next pass must not find: gone, unused, microservices."""
        used = {ref for it in items if not it._removing for ref in it.namespaces()}
        for ref in list(self.sessions):
            s = self.sessions[ref]
            h = p.handles.get(ref)
            resolved_same = h is not None and h.ns_id == s.ns_id
            gone = ref in p.failed or (h is not None and not resolved_same)
            if gone or ref not in used or not (ref is None or watchable(ref)):
                del self.sessions[ref]
                s.close()

    def _undo(self, p: _Pass, it: ConfigItem) -> None:
        error: BaseException | None = None
        if it._applied_in is not None:
            try:
                try:
                    ids: tuple[tuple[int, int], ...] | None
                    ids = tuple(p.ns_id(ref) for ref in it.namespaces())
                except Unresolved:
                    ids = None  # its namespace is gone, and the configuration with it
                if ids == it._applied_in:  # never undo in a namespace it was not applied in
                    it.undo(p)
                else:
                    it.release(p)
            except Exception as e:
                error = e
        self.conf._update(it, ItemStatus.REMOVED, error=error)
