"""The item types a :class:`~nslib.Configurator` applies, and what they may use.

An item is one declared piece of configuration for one target namespace.
The configurator's worker for that namespace calls :meth:`ConfigItem.apply`
whenever the item should be made so, and :meth:`ConfigItem.undo` when it is
removed, each time with an :class:`ApplyContext` that hands out netlink
sessions of the namespaces involved.

A new kind of item is a subclass of :class:`ConfigItem` that:

* validates its declaration in ``__init__`` (raise ``ValueError`` /
  ``TypeError`` there, not at apply time) and calls ``super().__init__(ns)``;
* lists every namespace it touches in :meth:`~ConfigItem.namespaces`
  (target first): the item is applied only when all of them resolve, and
  again whenever one of them is replaced (a container restart);
* makes itself so, idempotently, in :meth:`~ConfigItem.apply`, using only
  ``ctx.session(ref)`` (and the public :mod:`nslib.netlink` API), and undoes
  itself in :meth:`~ConfigItem.undo`;
* says what it is in :meth:`~ConfigItem.describe` and ``kind``.

It is declared through :meth:`Configurator.add` (or a small ``add_*``
method of the configurator that builds it).
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from .. import netlink as nl
from ..errors import InvalidReference, LinkExists, LinkNotFound
from ..handle import NsHandle
from ..reference import NetNamespace, ReferenceType

if TYPE_CHECKING:
    from . import Configurator

__all__ = [
    "ApplyContext",
    "ArpItem",
    "ConfigItem",
    "ItemStatus",
    "MoveItem",
    "RouteItem",
    "Target",
    "Unresolved",
    "VethItem",
]

#: A target namespace; ``None`` is the plugin's default namespace.
Target = NetNamespace | None

BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0


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


class Unresolved(Exception):
    """A namespace an item needs does not resolve: the item is PENDING.

    Raised by :meth:`ApplyContext.session`; an item lets it propagate.
    """


class ApplyContext(Protocol):
    """What an item's :meth:`~ConfigItem.apply` and :meth:`~ConfigItem.undo` get.

    Valid during one call, on the worker's thread only.
    """

    def session(self, ref: Target) -> nl.Session:
        """The netlink session of namespace *ref* (``None``: the plugin's default).

        Owned by the configurator: never close it.

        :raises Unresolved: *ref* does not resolve now.
        """
        ...

    def handle(self, ref: Target) -> NsHandle:
        """The namespace *ref* resolves to in this pass, for what is not netlink.

        (Running a program inside it, for example.)  Owned by the
        configurator and closed after the pass: never close it, ``dup()``
        it to keep it.

        :raises Unresolved: *ref* does not resolve now.
        """
        ...


def target_name(ref: Target) -> str:
    """*ref* in words, for messages."""
    return "the default namespace" if ref is None else str(ref)


def check_target(ref: object, what: str) -> Target:
    """*ref* as a target namespace, or a ``TypeError``/``InvalidReference``."""
    if ref is None:
        return None
    if not isinstance(ref, NetNamespace):
        raise TypeError(f"{what} must be a NetNamespace or None, not {type(ref).__name__}")
    if ref.type == ReferenceType.UNDEFINED:
        raise InvalidReference(f"{what}: an UNDEFINED reference names no namespace")
    if ref.type == ReferenceType.FD and not ref.reference:
        return None  # the Ligato vpp-agent's spelling of the default namespace
    return ref


def check_addresses(values: Iterable[nl.Address], what: str) -> tuple[nl.Interface, ...]:
    """*values* parsed as addresses with prefixes (a lone ``str`` is refused)."""
    if isinstance(values, str):
        raise TypeError(f"{what} must be a sequence of addresses, not a single str")
    return tuple(nl.parse_address(v) for v in values)


class ConfigItem:
    """One declared piece of configuration.  Made by :class:`Configurator` methods.

    The declaration (``ns`` and the fields of each subclass) is read-only;
    the state (:attr:`status`, :attr:`error`, :attr:`waiting_for`,
    :attr:`generation`) changes as the configurator works.

    Subclasses implement :meth:`apply` and :meth:`undo` (see the module
    documentation for how to add a kind of item).
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
        self._backoff = BACKOFF_MIN

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

    @property
    def was_applied(self) -> bool:
        """Whether the item is (or, if it failed since, was last) applied somewhere."""
        return self._applied_in is not None

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
            return removed or (owner is not None and owner.closed)

        with self._cond:
            ok = self._cond.wait_for(lambda: done() or hopeless(), timeout)
            if not done() and hopeless():
                why = "removed" if self._status is ItemStatus.REMOVED else "its configurator closed"
                raise RuntimeError(f"{self!r} will not become {status.name}: {why}")
            if not ok:
                want = status.name + (f" (generation >= {generation})" if generation else "")
                raise TimeoutError(f"{self!r} not {want} after {timeout} s{self._detail()}")
        return self

    def _detail(self) -> str:
        if self._status is ItemStatus.FAILED and self._error is not None:
            return f": {type(self._error).__name__}: {self._error}"
        if self._status is ItemStatus.PENDING and self._waiting_for:
            return f": waiting for {self._waiting_for}"
        return ""

    def describe(self) -> str:
        """What the item declares, in one line."""
        return f"{self.kind} in {target_name(self._ns)}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}: {self._status.name}>"

    def apply(self, ctx: ApplyContext) -> None:
        """Make the item so, idempotently: what is there already is left alone.

        Called on the worker thread of the item's namespace.  An exception
        makes the item FAILED (and retried); :class:`Unresolved` makes it
        PENDING.
        """
        raise NotImplementedError

    def undo(self, ctx: ApplyContext) -> None:
        """Undo the item, tolerating that it is partly or wholly gone already.

        Called only in the namespaces the item was last applied in.
        """
        raise NotImplementedError

    def release(self, ctx: ApplyContext) -> None:
        """Give back what the item holds outside a namespace that went away.

        Called instead of :meth:`undo` when the item was applied and a
        namespace it was applied in is gone: the item becomes PENDING (a
        microservice stopped, a named namespace was deleted) or is being
        removed.  What an item made inside that namespace went with it, so
        the default does nothing; an item that also holds something
        elsewhere (a CNI attachment's address reservation) releases it here.
        ``ctx.handle(None)`` still resolves.  An exception makes the item
        FAILED (retried), or is the error of its removal.
        """


class VethItem(ConfigItem):
    """A veth pair: ``name`` in ``ns``, ``peer_name`` in ``peer_ns``, both up."""

    kind = "veth"

    def __init__(
        self,
        name: str,
        peer_name: str,
        ns: Target,
        peer_ns: Target,
        addresses: tuple[nl.Interface, ...],
        peer_addresses: tuple[nl.Interface, ...],
        mtu: int | None,
    ) -> None:
        super().__init__(ns)
        self.name = nl.check_ifname(name, "veth name")
        self.peer_name = nl.check_ifname(peer_name, "veth peer name")
        self.peer_ns = peer_ns
        self.addresses = addresses
        self.peer_addresses = peer_addresses
        self.mtu = mtu

    def namespaces(self) -> tuple[Target, ...]:
        """The target namespace, then the peer's (when different)."""
        return (self._ns,) if self.peer_ns == self._ns else (self._ns, self.peer_ns)

    def describe(self) -> str:
        """What the item declares, in one line."""
        return (
            f"veth {self.name} in {target_name(self._ns)} / "
            f"{self.peer_name} in {target_name(self.peer_ns)}"
        )

    def apply(self, ctx: ApplyContext) -> None:
        """Create the pair if it is missing; set MTU, addresses and up on both ends."""
        s, p = ctx.session(self._ns), ctx.session(self.peer_ns)
        # Create first and look only on a clash: the common case is one request.
        try:
            s.add_veth(self.name, self.peer_name, peer_ns=p, mtu=self.mtu)
        except LinkExists:
            self._existing(s, p)
        for sess, link, addrs in (
            (s, self.name, self.addresses),
            (p, self.peer_name, self.peer_addresses),
        ):
            info = sess.get_link(link, addresses=False)  # by index from here on
            if self.mtu is not None and info.mtu != self.mtu:
                sess.set_mtu(info.index, self.mtu)
            for iface in addrs:
                sess.add_address(info.index, iface, exist_ok=True)
            if not info.up:
                sess.set_link_up(info.index)

    def _existing(self, s: nl.Session, p: nl.Session) -> None:
        """A name is taken: ours already (fine), or a stale end of ours, or a clash."""
        index = s.find_link(self.name)
        if index is not None:
            if s.get_link(index, addresses=False).kind != "veth":
                raise LinkExists(
                    errno.EEXIST, f"{s.what} has a link named {self.name!r} that is not a veth"
                )
            if p.find_link(self.peer_name) is None:
                raise LinkNotFound(
                    f"{self.name!r} exists in {s.what} but its peer {self.peer_name!r} "
                    f"is not in {p.what}"
                )
            return
        # The peer name is taken.  Still applied elsewhere (another container
        # took the label over without a STOPPED in between): the old pair is
        # ours and its end here blocks the name.  Delete it (the other end
        # goes with it) and try once more.
        stale = p.find_link(self.peer_name)
        clash = LinkExists(
            errno.EEXIST,
            f"cannot create {self.describe()}: {p.what} already has "
            f"a link named {self.peer_name!r}",
        )
        if stale is None or not self.was_applied:
            raise clash
        if p.get_link(stale, addresses=False).kind != "veth":
            raise clash
        p.delete_link(stale, missing_ok=True)
        s.add_veth(self.name, self.peer_name, peer_ns=p, mtu=self.mtu)

    def undo(self, ctx: ApplyContext) -> None:
        """Delete the pair (the peer goes with it)."""
        ctx.session(self._ns).delete_link(self.name, missing_ok=True)


class MoveItem(ConfigItem):
    """An existing interface of the default namespace, moved into ``ns``."""

    kind = "move"

    def __init__(
        self,
        ifname: str,
        ns: Target,
        new_name: str | None,
        addresses: tuple[nl.Interface, ...],
        up: bool,
    ) -> None:
        super().__init__(ns)
        self.ifname = nl.check_ifname(ifname, "ifname")
        self.new_name = None if new_name is None else nl.check_ifname(new_name, "new_name")
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
        return f"move {self.ifname}{rename} into {target_name(self._ns)}"

    def apply(self, ctx: ApplyContext) -> None:
        """Move the interface in (keeping its configuration) unless it is there."""
        s = ctx.session(self._ns)
        if s.find_link(self.target_name) is None:
            ctx.session(None).move_link(self.ifname, s, new_name=self.new_name, keep_config=True)
        for iface in self.addresses:
            s.add_address(self.target_name, iface, exist_ok=True)
        if self.up:
            s.set_link_up(self.target_name)

    def undo(self, ctx: ApplyContext) -> None:
        """Move the interface back to the default namespace, under its old name."""
        if self._ns is None:
            return  # "moved" into the default namespace: nothing to move back
        s = ctx.session(self._ns)
        if s.find_link(self.target_name) is None:
            return
        s.move_link(
            self.target_name,
            ctx.session(None),
            new_name=self.ifname if self.new_name else None,
            keep_config=True,
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
            nl.check_ifname(dev, "dev")
        if gateway is None and dev is None:
            raise ValueError(f"route to {dst} needs a gateway or a dev")
        self.dst = dst
        self.gateway = gateway
        self.dev = dev

    def describe(self) -> str:
        """What the item declares, in one line."""
        via = f" via {self.gateway}" if self.gateway else ""
        dev = f" dev {self.dev}" if self.dev is not None else ""
        return f"route {self.dst}{via}{dev} in {target_name(self._ns)}"

    def apply(self, ctx: ApplyContext) -> None:
        """Add the route; replace: converge even if another route to dst exists."""
        ctx.session(self._ns).add_route(
            self.dst, gateway=self.gateway, dev=self.dev, exist_ok=True, replace=True
        )

    def undo(self, ctx: ApplyContext) -> None:
        """Delete the route."""
        ctx.session(self._ns).delete_route(
            self.dst, gateway=self.gateway, dev=self.dev, missing_ok=True
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
        self.dev = nl.check_ifname(dev, "dev")

    def describe(self) -> str:
        """What the item declares, in one line."""
        return f"arp {self.ip} lladdr {self.mac} dev {self.dev} in {target_name(self._ns)}"

    def apply(self, ctx: ApplyContext) -> None:
        """Add (or replace) the entry."""
        ctx.session(self._ns).add_neighbour(self.ip, self.mac, dev=self.dev)

    def undo(self, ctx: ApplyContext) -> None:
        """Delete the entry."""
        ctx.session(self._ns).delete_neighbour(self.ip, dev=self.dev, missing_ok=True)
