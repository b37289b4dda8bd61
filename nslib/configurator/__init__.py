"""Pending configuration: links, routes and ARP entries for namespaces that may not exist yet.

A :class:`Configurator` holds *declared* items.  Each one targets a
:class:`~nslib.NetNamespace`, which may be a microservice that has not
started or a named namespace nobody has created yet::

    with nslib.NsPlugin(tracker=tracker) as plugin, nslib.Configurator(plugin) as conf:
        eth1 = conf.add_veth("eth1", "web0", ns=NetNamespace.microservice("web"),
                             addresses=["10.0.0.2/30"], peer_addresses=["10.0.0.1/30"])
        eth1.status      # PENDING until a container with MICROSERVICE_LABEL=web runs
        eth1.wait(ItemStatus.APPLIED, timeout=30)

Rules:

* An item whose namespaces resolve is applied at once (``add_*`` returns
  after the first attempt).  Otherwise it is PENDING, with
  :attr:`ConfigItem.waiting_for` saying why.
* It is applied the moment its namespace appears: the tracker reports the
  microservice STARTED, or a named namespace (or path, or PID) starts
  resolving.  On RESTARTED, a new namespace, it is applied again (a veth
  pair is created again: the old end died with the old namespace and took
  its peer along).  On STOPPED (or a named namespace deleted) it goes back
  to PENDING.
* Applying is idempotent: what is already there is left alone.  A failure
  makes the item FAILED with the exception in :attr:`ConfigItem.error`
  (and the ``on_change`` callback is told); it is retried on every later
  trigger and, meanwhile, with a backoff (50 ms doubling to 5 s), because
  the kernel tears namespaces down asynchronously and a name can be busy
  for a moment.  Nothing is swallowed: should a worker itself die of an
  unexpected error, its items become FAILED with that error and the next
  trigger of their namespace starts a fresh worker.
* :meth:`Configurator.remove` undoes an applied item where that makes
  sense (a veth is deleted, a moved link goes back to the default
  namespace, a route or ARP entry is deleted); the item becomes REMOVED.
* Items of different target namespaces never wait for one another: each
  target namespace has its own worker thread.  Within one namespace items
  apply in declaration order, and an item that failed is retried in the
  same pass after a later one succeeded, so order does not matter much
  (a route declared before the veth it goes through still converges).
* Tracker callbacks only flag work for the workers; no item ever runs on
  the tracker's thread.  Named namespaces and paths are watched through a
  :class:`~nslib.monitor.PathWatch` (inotify on their directory plus the
  mount table's change notification, nothing while idle), PIDs through a
  pidfd; each wake-up re-checks them with one ``stat`` per reference, which
  waits for the namespace to be *mounted*, not merely for the placeholder
  file that ``ip netns add`` creates first.  Only ``/proc`` paths other
  than ``/proc/PID/ns/net`` are still looked at every ``poll_interval``.

The configurator never creates a namespace: it waits for one.  While an
item is applied in a named, path or PID namespace, the configurator holds
that namespace open (so its identity cannot be recycled by the kernel
unnoticed) until it sees the reference change.  It never holds a
microservice's namespace between passes, so a stopped container's
namespace is freed at once.

New kinds of item subclass :class:`ConfigItem` (see
:mod:`nslib.configurator.items`) and are declared with
:meth:`Configurator.add`.  The package holds the public class here, the
item types in ``items.py`` and the per-namespace worker in ``worker.py``.

:meth:`Configurator.close` stops the workers and leaves the configuration
in place.  Close the configurator before its plugin.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .. import netlink as nl
from .._docker_state import EventKind
from .._procfs import nsfs_dev
from ..handle import NsHandle
from ..monitor import PathWatch
from ..names import DEFAULT_RUN_DIR
from ..plugin import NsPlugin
from ..reference import NetNamespace, ReferenceType
from .items import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    ApplyContext,
    ArpItem,
    ConfigItem,
    ItemStatus,
    MoveItem,
    RouteItem,
    Target,
    Unresolved,
    VethItem,
    check_addresses,
    check_target,
)
from .worker import _Worker, watchable

if TYPE_CHECKING:
    import nslib.cni.runtime  # spelled out below: the docs know Runtime by two names

    from ..cni.config import NetworkConfigList
    from ..cni.item import CNIItem

__all__ = [
    "ApplyContext",
    "ArpItem",
    "ConfigItem",
    "Configurator",
    "ItemStatus",
    "MoveItem",
    "RouteItem",
    "Target",
    "Unresolved",
    "VethItem",
]

_log = logging.getLogger("nslib.configurator")

_I = TypeVar("_I", bound=ConfigItem)


def _same_error(e: BaseException | None) -> tuple[type[BaseException], str] | None:
    """What makes two errors "the same failure" for change reporting."""
    return None if e is None else (type(e), str(e))


# -- the configurator ------------------------------------------------------------------------


class Configurator:
    """Declared links, routes and ARP entries, applied whenever their namespace exists.

    :param plugin: an initialized :class:`~nslib.NsPlugin`; its default
        namespace is where veth peers (``peer_ns=None``) and moved links
        come from, its run directory is where named namespaces are looked
        up, and its tracker (if any) reports microservices.
    :param on_change: called with the item after every status change, on
        the worker thread that made it.  An exception from it is logged
        (``nslib.configurator``) and otherwise ignored.
    :param poll_interval: seconds between checks of the references that
        cannot be watched (``/proc`` paths such as ``/proc/self/fd/N``; PIDs
        on kernels without pidfds).
    :param apply_timeout: how long an ``add_*`` call waits for the first
        attempt to apply its item.

    :raises PluginDisabledError: the plugin is disabled.
    :raises RuntimeError: the plugin is not initialized.
    """

    def __init__(
        self,
        plugin: NsPlugin,
        *,
        on_change: Callable[[ConfigItem], object] | None = None,
        poll_interval: float = 0.05,
        apply_timeout: float = 10.0,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {poll_interval!r}")
        plugin.default_namespace().close()  # disabled or uninitialized: raise now
        self._plugin = plugin
        self._on_change = on_change
        self._poll_interval = poll_interval
        self._apply_timeout = apply_timeout
        self._run_dir = plugin.config.run_dir or DEFAULT_RUN_DIR
        self._lock = threading.RLock()
        self._items: list[ConfigItem] = []
        self._workers: dict[Target, _Worker] = {}
        self._retired: list[_Worker] = []
        self._seen: dict[NetNamespace, tuple[int, int] | None] = {}
        self._closed = False
        self._stop = threading.Event()
        self._paths = PathWatch(fallback_interval=poll_interval)
        tracker: Any = plugin.tracker
        self._unsubscribe: Callable[[], None] | None = None
        if tracker is not None and hasattr(tracker, "subscribe"):
            self._unsubscribe = tracker.subscribe(self._on_event)
        self._watcher = threading.Thread(
            target=self._watch_main, name="nslib-cfg-watch", daemon=True
        )
        self._watcher.start()

    # -- declaring --------------------------------------------------------------------

    def add_veth(
        self,
        name: str,
        peer_name: str,
        *,
        ns: Target,
        peer_ns: Target = None,
        addresses: Sequence[nl.Address] = (),
        peer_addresses: Sequence[nl.Address] = (),
        mtu: int | None = None,
    ) -> VethItem:
        """Declare a veth pair: *name* in *ns*, *peer_name* in *peer_ns*, both up.

        ``peer_ns=None`` is the plugin's default namespace.  After a restart
        of either namespace the pair is created again.  Removing the item
        deletes the pair.

        :raises ValueError: an invalid interface name or address.
        """
        item = VethItem(
            name,
            peer_name,
            check_target(ns, "ns"),
            check_target(peer_ns, "peer_ns"),
            check_addresses(addresses, "addresses"),
            check_addresses(peer_addresses, "peer_addresses"),
            mtu,
        )
        return self._add(item)

    def add_move(
        self,
        ifname: str,
        ns: Target,
        *,
        new_name: str | None = None,
        addresses: Sequence[nl.Address] = (),
        up: bool = True,
    ) -> MoveItem:
        """Declare that interface *ifname* of the default namespace moves into *ns*.

        Its addresses, MTU and state come along (:func:`nslib.netlink.move_link`),
        *addresses* are added, and it is set up unless *up* is false.
        Removing the item moves it back (under its old name).  A veth moved
        into a namespace that dies is gone; the item then fails
        (:class:`~nslib.LinkNotFound`) until such an interface exists again.
        """
        item = MoveItem(
            ifname, check_target(ns, "ns"), new_name, check_addresses(addresses, "addresses"), up
        )
        return self._add(item)

    def add_route(
        self,
        dst: str,
        *,
        ns: Target,
        gateway: str | None = None,
        dev: str | None = None,
    ) -> RouteItem:
        """Declare a route to *dst* (``"10.1.0.0/24"`` or ``"default"``) in *ns*.

        Applied with replace semantics, so it wins over another route to the
        same destination.  Removing the item deletes the route.
        """
        return self._add(RouteItem(dst, check_target(ns, "ns"), gateway, dev))

    def add_arp(self, ip: str, mac: str, *, ns: Target, dev: str) -> ArpItem:
        """Declare a permanent ARP (or NDP) entry *ip* -> *mac* on *dev* in *ns*.

        Removing the item deletes the entry.
        """
        return self._add(ArpItem(ip, mac, check_target(ns, "ns"), dev))

    def add_cni(
        self,
        netlist: NetworkConfigList | str | os.PathLike[str],
        *,
        ns: Target,
        ifname: str = "eth0",
        container_id: str | None = None,
        runtime: nslib.cni.runtime.Runtime | None = None,
        args: dict[str, str] | None = None,
        capability_args: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> CNIItem:
        """Declare a CNI attachment of *ns* to network *netlist* (a list or its file).

        ADD when *ns* exists, DEL when it goes away (STOPPED, deleted) and on
        removal, ADD again in the next namespace.  The plugins run through
        *runtime* (default: a :class:`~nslib.cni.Runtime` with its default
        directories) in the plugin's default namespace.  *container_id*
        defaults to a stable hash of *ns*.  See :class:`nslib.cni.CNIItem`.

        :raises CNIConfigError: *netlist* is a file that is not a valid list.
        :raises CNIArgumentError: an invalid interface name or container ID.
        """
        from ..cni.item import CNIItem

        item = CNIItem(
            netlist,
            check_target(ns, "ns"),
            ifname,
            container_id,
            runtime=runtime,
            args=args,
            capability_args=capability_args,
            timeout=timeout,
        )
        return self._add(item)

    def add(self, item: _I) -> _I:
        """Declare *item*, a new :class:`ConfigItem` of any kind; return it.

        The ``add_*`` methods build their item and call this.  It returns
        after the first attempt to apply the item (or after
        ``apply_timeout``).

        :raises TypeError: *item* is not a :class:`ConfigItem`.
        :raises ValueError: *item* was declared before (here or elsewhere).
        :raises RuntimeError: the configurator is closed.
        """
        if not isinstance(item, ConfigItem):
            raise TypeError(f"item must be a ConfigItem, not {type(item).__name__}")
        for ref in item.namespaces():
            check_target(ref, "a namespace of the item")
        return self._add(item)

    def items(self) -> list[ConfigItem]:
        """Every declared item not removed, in declaration order."""
        with self._lock:
            return [it for it in self._items if not it._removing]

    def remove(self, item: ConfigItem) -> None:
        """Remove *item*; undo it in the background where that makes sense.

        Returns at once; ``item.wait(ItemStatus.REMOVED)`` waits for the undo.
        Removing twice is a no-op.

        :raises ValueError: the item belongs to another configurator.
        """
        with self._lock:
            if item._owner is not self:
                raise ValueError(f"{item!r} does not belong to this configurator")
            if item._removing:
                return
            item._removing = True
            self._items.remove(item)
            self._forget_unused()
            if not self._closed:
                worker = self._worker_for(item.ns)
                if item in worker.items:
                    worker.items.remove(item)
                worker.removals.append(item)
                worker.poke()
                return
        self._update(item, ItemStatus.REMOVED)  # closed: nothing runs any more

    def resync(self) -> None:
        """Re-apply every item now, even those that look applied."""
        with self._lock:
            if self._closed:
                return
            for key in {it.ns for it in self._items}:
                self._worker_for(key).trigger(force=True)

    # -- lifecycle --------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._closed

    def close(self) -> None:
        """Stop watching and end the worker threads; the configuration stays.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers.values()) + self._retired
            self._workers.clear()
            for w in workers:
                w.stopping = True
                w.poke()
            for it in self._items:
                it._cond.notify_all()  # waiters: nothing will change any more
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._stop.set()
        self._paths.wake()
        me = threading.current_thread()
        for t in [self._watcher] + [w.thread for w in workers]:
            if t is not me and t.ident is not None:
                t.join(5.0)

    def __enter__(self) -> Configurator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        with self._lock:
            counts: dict[str, int] = {}
            for it in self._items:
                counts[it.status.name] = counts.get(it.status.name, 0) + 1
        state = "closed" if self._closed else "open"
        summary = ", ".join(f"{n} {k.lower()}" for k, n in sorted(counts.items())) or "empty"
        return f"<Configurator {state}: {summary}>"

    # -- internals ----------------------------------------------------------------------

    def _add(self, item: _I) -> _I:
        with self._lock:
            if self._closed:
                raise RuntimeError("Configurator is closed")
            if item._owner is not None:
                raise ValueError(f"{item!r} was declared already")
            item._owner = self
            item._cond = threading.Condition(self._lock)
            worker = self._worker_for(item.ns)  # before appending: it adopts items
            self._items.append(item)
            worker.items.append(item)
            for ref in item.namespaces():
                if watchable(ref) and ref not in self._seen:
                    assert ref is not None
                    self._seen[ref] = self._ident(ref)
                    self._paths.wake()  # the watcher arms a watch for it
            worker.trigger()
            if threading.current_thread() is worker.thread:
                return item  # declared from an on_change callback: do not wait on ourselves
            item._cond.wait_for(lambda: item._reported > 0 or self._closed, self._apply_timeout)
        return item

    def _worker_for(self, key: Target) -> _Worker:
        """The worker of namespace *key*, started if there is none (caller holds the lock).

        There is none for a new namespace, and after a worker died
        (:meth:`_Worker._died`): the fresh one adopts that namespace's items.
        """
        worker = self._workers.get(key)
        if worker is None:
            worker = _Worker(self, key)
            worker.items = [it for it in self._items if it.ns == key and not it._removing]
            self._workers[key] = worker
            self._retired = [w for w in self._retired if w.thread.is_alive()]
            worker.thread.start()
        return worker

    def _open(self, ref: Target) -> NsHandle:
        if ref is None:
            return self._plugin.get_namespace_handle(None)
        # Never create (the configurator waits for namespaces) and never block.
        return self._plugin.get_namespace_handle(ref, create_missing=False, timeout=0)

    def _update(
        self,
        it: ConfigItem,
        status: ItemStatus,
        *,
        error: BaseException | None = None,
        waiting_for: str | None = None,
        applied_in: tuple[tuple[int, int], ...] | None = None,
    ) -> None:
        with self._lock:
            if it._status is ItemStatus.REMOVED:
                return
            # Each retry raises a new exception object: compare what it says,
            # or a FAILED item would be reported (and logged) on every retry.
            changed = (it._status, _same_error(it._error), it._waiting_for) != (
                status,
                _same_error(error),
                waiting_for,
            )
            it._status = status
            it._error = error
            it._waiting_for = waiting_for
            it._attempts += 1
            if status is ItemStatus.APPLIED:
                it._applied_in = applied_in
                it._generation += 1
                changed = True
            elif status is not ItemStatus.FAILED:
                it._applied_in = None
            if status is ItemStatus.FAILED:
                it._retry_at = time.monotonic() + it._backoff
                it._backoff = min(it._backoff * 2, BACKOFF_MAX)
            else:
                it._retry_at = None
                it._backoff = BACKOFF_MIN
            it._cond.notify_all()
        if status is ItemStatus.FAILED and changed:
            _log.warning("%r failed: %s", it, error)
        if changed and self._on_change is not None:
            try:
                self._on_change(it)
            except Exception:
                _log.exception("on_change callback failed for %r", it)
        with self._lock:
            it._reported += 1  # add_*() returns once the first attempt is fully reported
            it._cond.notify_all()

    def _on_event(self, ev: Any) -> None:
        # Runs on the tracker's dispatcher thread: flag work, nothing more.
        ref = NetNamespace.microservice(ev.label)
        force = ev.kind is not EventKind.STOPPED
        with self._lock:
            self._trigger_users(ref, force)

    def _trigger_users(self, ref: Target, force: bool) -> None:
        # Caller holds the lock.
        if self._closed:
            return
        keys = {it.ns for it in self._items if not it._removing and ref in it.namespaces()}
        for key in keys:
            self._worker_for(key).trigger(force)

    def _forget_unused(self) -> None:
        used = {ref for it in self._items for ref in it.namespaces()}
        for ref in list(self._seen):
            if ref not in used:
                del self._seen[ref]

    def _path_of(self, ref: NetNamespace) -> str:
        if ref.type == ReferenceType.NSID:
            return os.path.join(self._run_dir, ref.reference)
        if ref.type == ReferenceType.PID:
            return f"/proc/{ref.reference}/ns/net"
        return ref.reference

    def _ident(self, ref: NetNamespace) -> tuple[int, int] | None:
        """``(dev, ino)`` of the namespace *ref* names now, or None (not a mounted namespace)."""
        try:
            st = os.stat(self._path_of(ref))
        except (OSError, ValueError):
            return None
        if st.st_dev != nsfs_dev():
            return None  # missing, or a placeholder `ip netns add` has not mounted yet
        return (st.st_dev, st.st_ino)

    def _watch_main(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    refs = list(self._seen.items())
                # Armed before the check: a change after it wakes the wait below.
                self._paths.watch(self._path_of(ref) for ref, _ in refs)
                self._check(refs)
                self._paths.wait()
        finally:
            self._paths.close()

    def _check(self, refs: list[tuple[NetNamespace, tuple[int, int] | None]]) -> None:
        for ref, seen in refs:
            now = self._ident(ref)
            if now == seen:
                continue
            with self._lock:
                # A worker waiting on the mount table itself may have seen it first.
                if ref in self._seen and self._seen[ref] != now:
                    self._seen[ref] = now
                    self._trigger_users(ref, False)
