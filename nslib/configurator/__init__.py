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
  the tracker's thread.  Named namespaces, paths and PIDs are watched by
  a cheap poll (one ``stat`` per watched reference every ``poll_interval``),
  which waits for the namespace to be *mounted*, not merely for the
  placeholder file that ``ip netns add`` creates first.

The configurator never creates a namespace: it waits for one.  While an
item is applied in a named, path or PID namespace, the configurator holds
that namespace open (so its identity cannot be recycled by the kernel
unnoticed) until it sees the reference change.  It never holds a
microservice's namespace between passes, so a stopped container's
namespace is freed at once.

:meth:`Configurator.close` stops the workers and leaves the configuration
in place.  Close the configurator before its plugin.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from pyroute2.netlink.exceptions import NetlinkError

from . import netlink as nl
from ._docker_state import EventKind
from ._procfs import nsfs_dev
from .errors import (
    InvalidReference,
    LinkExists,
    LinkNotFound,
    NamespaceNotFound,
    NotANamespace,
    SharedNamespaceError,
    UnavailableMicroserviceError,
)
from .handle import NsHandle
from .names import DEFAULT_RUN_DIR
from .plugin import NsPlugin
from .reference import NetNamespace, ReferenceType

__all__ = [
    "ArpItem",
    "ConfigItem",
    "Configurator",
    "ItemStatus",
    "MoveItem",
    "RouteItem",
    "VethItem",
]

_log = logging.getLogger("nslib.configurator")

#: A target namespace; ``None`` is the plugin's default namespace.
Target = NetNamespace | None

_I = TypeVar("_I", bound="ConfigItem")
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 5.0


class ItemStatus(enum.Enum):
    """Where a declared item stands."""

    #: Its namespace does not resolve (yet); see :attr:`ConfigItem.waiting_for`.
    PENDING = "pending"
    #: Applied in the namespace its reference resolves to now.
    APPLIED = "applied"
    #: The last attempt failed; see :attr:`ConfigItem.error`.  Retried.
    FAILED = "failed"
    #: Removed from its configurator (and undone where that makes sense).
    REMOVED = "removed"


class _Unresolved(Exception):
    """A namespace an item needs does not resolve: the item is pending."""


def _name(ref: Target) -> str:
    return "the default namespace" if ref is None else str(ref)


def _check_target(ref: object, what: str) -> Target:
    if ref is None:
        return None
    if not isinstance(ref, NetNamespace):
        raise TypeError(f"{what} must be a NetNamespace or None, not {type(ref).__name__}")
    if ref.type == ReferenceType.UNDEFINED:
        raise InvalidReference(f"{what}: an UNDEFINED reference names no namespace")
    if ref.type == ReferenceType.FD and not ref.reference:
        return None  # the seed's spelling of the default namespace
    return ref


def _addresses(values: Iterable[nl.Address], what: str) -> tuple[nl._Iface, ...]:
    if isinstance(values, str):
        raise TypeError(f"{what} must be a sequence of addresses, not a single str")
    return tuple(nl._iface(v) for v in values)


# -- items --------------------------------------------------------------------------


class ConfigItem:
    """One declared piece of configuration.  Made by :class:`Configurator` methods.

    The declaration (``ns`` and the fields of each subclass) is read-only;
    the state (:attr:`status`, :attr:`error`, :attr:`waiting_for`,
    :attr:`generation`) changes as the configurator works.
    """

    kind = "item"

    def __init__(self, ns: Target) -> None:
        self._ns = ns
        self._cond: threading.Condition = threading.Condition()  # replaced when bound
        self._owner: Configurator | None = None
        self._status = ItemStatus.PENDING
        self._error: BaseException | None = None
        self._waiting_for: str | None = "not tried yet"
        self._generation = 0
        self._attempts = 0
        self._reported = 0
        self._applied_in: tuple[tuple[int, int], ...] | None = None
        self._removing = False
        self._retry_at: float | None = None
        self._backoff = _BACKOFF_MIN

    @property
    def ns(self) -> Target:
        """The target namespace (``None``: the plugin's default namespace)."""
        return self._ns

    @property
    def status(self) -> ItemStatus:
        """PENDING, APPLIED, FAILED or REMOVED."""
        return self._status

    @property
    def error(self) -> BaseException | None:
        """Why the last attempt failed (FAILED), or why undoing failed (REMOVED)."""
        return self._error

    @property
    def waiting_for(self) -> str | None:
        """For a PENDING item, which namespace it waits for and why."""
        return self._waiting_for

    @property
    def generation(self) -> int:
        """How many times the item has been applied (it grows on every restart)."""
        return self._generation

    def namespaces(self) -> tuple[Target, ...]:
        """Every namespace the item touches, its target first."""
        return (self._ns,)

    def wait(
        self,
        status: ItemStatus = ItemStatus.APPLIED,
        timeout: float | None = None,
        *,
        generation: int | None = None,
    ) -> ConfigItem:
        """Block until the item has *status* (and at least *generation*); return it.

        :raises TimeoutError: not reached within *timeout* seconds; the
            message gives the status, the error and what it waits for.
        :raises RuntimeError: the item was removed while waiting for another
            status, or its configurator was closed (nothing changes any more).
        """

        def done() -> bool:
            return self._status is status and (generation is None or self._generation >= generation)

        def hopeless() -> bool:
            removed = self._status is ItemStatus.REMOVED and status is not ItemStatus.REMOVED
            owner = self._owner
            return removed or (owner is not None and owner._closed)

        with self._cond:
            ok = self._cond.wait_for(lambda: done() or hopeless(), timeout)
            if not done() and hopeless():
                why = "removed" if self._status is ItemStatus.REMOVED else "its configurator closed"
                raise RuntimeError(f"{self!r} will not become {status.name}: {why}")
            if not ok:
                want = status.name + (f" (generation >= {generation})" if generation else "")
                detail = self._detail()
                raise TimeoutError(f"{self!r} not {want} after {timeout} s{detail}")
        return self

    def _detail(self) -> str:
        if self._status is ItemStatus.FAILED and self._error is not None:
            return f": {type(self._error).__name__}: {self._error}"
        if self._status is ItemStatus.PENDING and self._waiting_for:
            return f": waiting for {self._waiting_for}"
        return ""

    def describe(self) -> str:
        """What the item declares, in one line."""
        return f"{self.kind} in {_name(self._ns)}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}: {self._status.name}>"

    # Subclasses: make it so (idempotently), and undo it.
    def _apply(self, s: _Session) -> None:
        raise NotImplementedError

    def _undo(self, s: _Session) -> None:
        raise NotImplementedError


class VethItem(ConfigItem):
    """A veth pair: ``name`` in ``ns``, ``peer_name`` in ``peer_ns``, both up."""

    kind = "veth"

    def __init__(
        self,
        name: str,
        peer_name: str,
        ns: Target,
        peer_ns: Target,
        addresses: tuple[nl._Iface, ...],
        peer_addresses: tuple[nl._Iface, ...],
        mtu: int | None,
    ) -> None:
        super().__init__(ns)
        self.name = nl._check_ifname(name, "veth name")
        self.peer_name = nl._check_ifname(peer_name, "veth peer name")
        self.peer_ns = peer_ns
        self.addresses = addresses
        self.peer_addresses = peer_addresses
        self.mtu = mtu

    def namespaces(self) -> tuple[Target, ...]:
        """The target namespace, then the peer's (when different)."""
        return (self._ns,) if self.peer_ns == self._ns else (self._ns, self.peer_ns)

    def describe(self) -> str:
        """What the item declares, in one line."""
        return f"veth {self.name} in {_name(self._ns)} / {self.peer_name} in {_name(self.peer_ns)}"

    def _apply(self, s: _Session) -> None:
        ipr, what = s.ipr(self._ns), s.what(self._ns)
        pipr, peer_what = s.ipr(self.peer_ns), s.what(self.peer_ns)
        if nl._find(ipr, self.name) is None:
            peer: dict[str, Any] = {"ifname": self.peer_name}
            extra: dict[str, Any] = {}
            if self.peer_ns != self._ns:
                peer["net_ns_fd"] = s.handle(self.peer_ns).fileno()
            if self.mtu is not None:
                peer["mtu"] = extra["mtu"] = self.mtu
            try:
                self._create(ipr, pipr, peer, extra)
            except NetlinkError as e:
                if e.code == errno.EEXIST:
                    raise LinkExists(
                        errno.EEXIST,
                        f"cannot create {self.describe()}: {peer_what} already has "
                        f"a link named {self.peer_name!r}",
                    ) from None
                raise nl._oserror(e, f"creating {self.describe()}") from None
        else:
            info = nl._link_msg(ipr, self.name, what)
            if info.get(("linkinfo", "kind")) != "veth":
                raise LinkExists(
                    errno.EEXIST, f"{what} has a link named {self.name!r} that is not a veth"
                )
            if nl._find(pipr, self.peer_name) is None:
                raise LinkNotFound(
                    f"{self.name!r} exists in {what} but its peer {self.peer_name!r} "
                    f"is not in {peer_what}"
                )
        for p, link, addrs, w in (
            (ipr, self.name, self.addresses, what),
            (pipr, self.peer_name, self.peer_addresses, peer_what),
        ):
            msg = nl._link_msg(p, link, w)
            index = int(msg["index"])  # by index from here on: one round trip each
            if self.mtu is not None and msg.get("mtu") != self.mtu:
                nl._set_link(p, index, w, f"setting MTU {self.mtu} on", mtu=self.mtu)
            for iface in addrs:
                nl._add_address(p, index, iface, w, exist_ok=True)
            if not msg["flags"] & nl._IFF_UP:
                nl._set_link(p, index, w, "setting up", state="up")

    def _create(self, ipr: Any, pipr: Any, peer: dict[str, Any], extra: dict[str, Any]) -> None:
        try:
            ipr.link("add", ifname=self.name, kind="veth", peer=peer, **extra)
        except NetlinkError as e:
            # Still applied elsewhere (another container took the label over
            # without a STOPPED in between): the old pair is ours; its end in
            # the peer namespace blocks the name.  Delete it (the other end
            # goes with it) and try once more.
            stale = nl._find(pipr, self.peer_name) if e.code == errno.EEXIST else None
            if stale is None or self._applied_in is None:
                raise
            if pipr.link("get", index=stale)[0].get(("linkinfo", "kind")) != "veth":
                raise
            pipr.link("del", index=stale)
            ipr.link("add", ifname=self.name, kind="veth", peer=peer, **extra)

    def _undo(self, s: _Session) -> None:
        nl._delete_link(s.ipr(self._ns), self.name, s.what(self._ns), missing_ok=True)


class MoveItem(ConfigItem):
    """An existing interface of the default namespace, moved into ``ns``."""

    kind = "move"

    def __init__(
        self,
        ifname: str,
        ns: Target,
        new_name: str | None,
        addresses: tuple[nl._Iface, ...],
        up: bool,
    ) -> None:
        super().__init__(ns)
        self.ifname = nl._check_ifname(ifname, "ifname")
        self.new_name = None if new_name is None else nl._check_ifname(new_name, "new_name")
        self.addresses = addresses
        self.up = up

    @property
    def target_name(self) -> str:
        """The interface's name inside ``ns``."""
        return self.new_name or self.ifname

    def namespaces(self) -> tuple[Target, ...]:
        """The target namespace, then the default namespace it comes from."""
        return (self._ns,) if self._ns is None else (self._ns, None)

    def describe(self) -> str:
        """What the item declares, in one line."""
        rename = f" as {self.new_name}" if self.new_name else ""
        return f"move {self.ifname}{rename} into {_name(self._ns)}"

    def _apply(self, s: _Session) -> None:
        ipr, what = s.ipr(self._ns), s.what(self._ns)
        if nl._find(ipr, self.target_name) is None:
            nl.move_link(
                self.ifname,
                s.handle(self._ns),
                new_name=self.new_name,
                keep_config=True,
                src=s.handle(None),
            )
        for iface in self.addresses:
            nl._add_address(ipr, self.target_name, iface, what, exist_ok=True)
        if self.up:
            nl._set_link(ipr, self.target_name, what, "setting up", state="up")

    def _undo(self, s: _Session) -> None:
        if self._ns is None:
            return  # "moved" into the default namespace: nothing to move back
        if nl._find(s.ipr(self._ns), self.target_name) is None:
            return
        nl.move_link(
            self.target_name,
            s.handle(None),
            new_name=self.ifname if self.new_name else None,
            keep_config=True,
            src=s.handle(self._ns),
        )


class RouteItem(ConfigItem):
    """A route to ``dst`` in ``ns``, via ``gateway`` and/or out of ``dev``."""

    kind = "route"

    def __init__(self, dst: str, ns: Target, gateway: str | None, dev: str | None) -> None:
        super().__init__(ns)
        if not isinstance(dst, str):
            raise TypeError(f"dst must be a str, not {type(dst).__name__}")
        if dst != "default":
            ipaddress.ip_network(dst, strict=False)  # ValueError now, not at apply time
        if gateway is not None:
            ipaddress.ip_address(gateway)
        if dev is not None:
            nl._check_ifname(dev, "dev")
        if gateway is None and dev is None:
            raise ValueError(f"route to {dst} needs a gateway or a dev")
        self.dst = dst
        self.gateway = gateway
        self.dev = dev

    def describe(self) -> str:
        """What the item declares, in one line."""
        return f"route {nl._route_desc(self.dst, self.gateway, self.dev)} in {_name(self._ns)}"

    def _apply(self, s: _Session) -> None:
        # replace: converge on the declared route even if another one to dst exists.
        nl._add_route(
            s.ipr(self._ns), self.dst, self.gateway, self.dev, s.what(self._ns), True, True
        )

    def _undo(self, s: _Session) -> None:
        nl._delete_route(
            s.ipr(self._ns), self.dst, self.gateway, self.dev, s.what(self._ns), missing_ok=True
        )


class ArpItem(ConfigItem):
    """A permanent ARP/NDP entry ``ip`` -> ``mac`` on ``dev`` in ``ns``."""

    kind = "arp"

    def __init__(self, ip: str, mac: str, ns: Target, dev: str) -> None:
        super().__init__(ns)
        ipaddress.ip_address(ip)
        try:
            ok = len(bytes.fromhex(mac.replace(":", ""))) == 6
        except (AttributeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"invalid MAC address {mac!r}")
        self.ip = ip
        self.mac = mac
        self.dev = nl._check_ifname(dev, "dev")

    def describe(self) -> str:
        """What the item declares, in one line."""
        return f"arp {self.ip} lladdr {self.mac} dev {self.dev} in {_name(self._ns)}"

    def _apply(self, s: _Session) -> None:
        nl._add_neighbour(s.ipr(self._ns), self.ip, self.mac, self.dev, s.what(self._ns))

    def _undo(self, s: _Session) -> None:
        nl._delete_neighbour(s.ipr(self._ns), self.ip, self.dev, s.what(self._ns), True)


# -- one pass of a worker -------------------------------------------------------------------


class _Session:
    """The handles and netlink sockets one worker pass uses (one thread)."""

    def __init__(self, conf: Configurator) -> None:
        self._conf = conf
        self.handles: dict[Target, NsHandle] = {}
        self._failed: dict[Target, _Unresolved] = {}
        self._iprs: dict[Target, Any] = {}

    def handle(self, ref: Target) -> NsHandle:
        if ref in self.handles:
            return self.handles[ref]
        if ref in self._failed:
            raise self._failed[ref]
        try:
            h = self._conf._open(ref)
        except SharedNamespaceError:
            # Not "not there yet": it is there and is the host's.  Waiting
            # would be PENDING for ever with no retry; it is a failure.
            raise
        except (NamespaceNotFound, NotANamespace, UnavailableMicroserviceError) as e:
            msg = str(e) if _name(ref) in str(e) else f"{_name(ref)}: {e}"
            self._failed[ref] = _Unresolved(msg)
            raise self._failed[ref] from e
        self.handles[ref] = h
        return h

    def ns_id(self, ref: Target) -> tuple[int, int]:
        return self.handle(ref).ns_id

    def ipr(self, ref: Target) -> Any:
        if ref not in self._iprs:
            self._iprs[ref] = nl.iproute(self.handle(ref))
        return self._iprs[ref]

    def what(self, ref: Target) -> str:
        h = self.handles.get(ref)
        inode = f" (net:[{h.ns_id[1]}])" if h is not None and not h.closed else ""
        return _name(ref) + inode

    def close(self) -> None:
        for ipr in self._iprs.values():
            ipr.close()
        for h in self.handles.values():
            h.close()
        self._iprs.clear()
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
        # Namespaces (not microservices) kept open while items are applied
        # there, so the kernel cannot recycle their inode numbers unseen.
        self.pins: dict[Target, NsHandle] = {}
        self.thread = threading.Thread(
            target=self._main, name=f"nslib-cfg {_name(key)}", daemon=True
        )

    def trigger(self, force: bool = False) -> None:
        """Ask for a pass (caller holds the configurator's lock)."""
        self.dirty = True
        self.force = self.force or force
        self.wake.notify()

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
                        self.wake.wait(None if retry is None else retry - time.monotonic())
                    if self.stopping:
                        return
                    removals, self.removals = self.removals, []
                    dirty, force = self.dirty, self.force
                    self.dirty = self.force = False
                    items = list(self.items)
                s = _Session(self.conf)
                try:
                    for it in removals:
                        self._undo(s, it)
                    if removals:
                        # Undoing may take others' ground away (a route through
                        # a deleted veth): look again, and report the truth.
                        dirty = force = True
                    if dirty:
                        self._pass(s, items, force)
                        self._repin(s, items)
                finally:
                    s.close()
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
            _log.exception("configurator worker for %s died", _name(self.key))
            self._died(e)
        finally:
            for h in self.pins.values():
                h.close()
            self.pins.clear()

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

    def _pass(self, s: _Session, items: list[ConfigItem], force: bool) -> None:
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
                    ids = tuple(s.ns_id(ref) for ref in it.namespaces())
                except _Unresolved as u:
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
                    it._apply(s)
                except _Unresolved as u:
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

    def _repin(self, s: _Session, items: list[ConfigItem]) -> None:
        keep: dict[Target, NsHandle] = {}
        used = {
            ref
            for it in items
            if it._status is ItemStatus.APPLIED
            for ref in it.namespaces()
            if _watchable(ref)
        }
        for ref in used:
            h = s.handles.get(ref)
            if h is None:
                continue
            old = self.pins.pop(ref, None)
            if old is not None and old.same_namespace(h):
                keep[ref] = old
                continue
            if old is not None:
                old.close()
            keep[ref] = h.dup()
        for old in self.pins.values():
            old.close()
        self.pins = keep

    def _undo(self, s: _Session, it: ConfigItem) -> None:
        error: BaseException | None = None
        if it._applied_in is not None:
            try:
                ids = tuple(s.ns_id(ref) for ref in it.namespaces())
                if ids == it._applied_in:  # never undo in a namespace it was not applied in
                    it._undo(s)
            except _Unresolved:
                pass  # its namespace is gone, and the configuration with it
            except Exception as e:
                error = e
        self.conf._update(it, ItemStatus.REMOVED, error=error)


def _same_error(e: BaseException | None) -> tuple[type[BaseException], str] | None:
    """What makes two errors "the same failure" for change reporting."""
    return None if e is None else (type(e), str(e))


def _watchable(ref: Target) -> bool:
    # Named namespaces, paths and PIDs are polled; microservices come from
    # the tracker; the default namespace never changes.
    return ref is not None and ref.type != ReferenceType.MICROSERVICE


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
    :param poll_interval: seconds between checks of named, path and PID
        references.
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
            _check_target(ns, "ns"),
            _check_target(peer_ns, "peer_ns"),
            _addresses(addresses, "addresses"),
            _addresses(peer_addresses, "peer_addresses"),
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
            ifname, _check_target(ns, "ns"), new_name, _addresses(addresses, "addresses"), up
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
        return self._add(RouteItem(dst, _check_target(ns, "ns"), gateway, dev))

    def add_arp(self, ip: str, mac: str, *, ns: Target, dev: str) -> ArpItem:
        """Declare a permanent ARP (or NDP) entry *ip* -> *mac* on *dev* in *ns*.

        Removing the item deletes the entry.
        """
        return self._add(ArpItem(ip, mac, _check_target(ns, "ns"), dev))

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
                worker.wake.notify()
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
                w.wake.notify()
            for it in self._items:
                it._cond.notify_all()  # waiters: nothing will change any more
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._stop.set()
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
            item._owner = self
            item._cond = threading.Condition(self._lock)
            worker = self._worker_for(item.ns)  # before appending: it adopts items
            self._items.append(item)
            worker.items.append(item)
            for ref in item.namespaces():
                if _watchable(ref) and ref not in self._seen:
                    assert ref is not None
                    self._seen[ref] = self._ident(ref)
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
                it._backoff = min(it._backoff * 2, _BACKOFF_MAX)
            else:
                it._retry_at = None
                it._backoff = _BACKOFF_MIN
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
            return None  # missing, or a placeholder not mounted yet (pitfall 14)
        return (st.st_dev, st.st_ino)

    def _watch_main(self) -> None:
        while not self._stop.wait(self._poll_interval):
            with self._lock:
                refs = list(self._seen.items())
            for ref, seen in refs:
                now = self._ident(ref)
                if now == seen:
                    continue
                with self._lock:
                    if ref in self._seen:
                        self._seen[ref] = now
                        self._trigger_users(ref, False)
