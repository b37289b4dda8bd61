"""rtnetlink inside any namespace, without forking: sessions and one-call helpers.

A :class:`Session` is bound to one namespace: its NETLINK_ROUTE socket was
made inside that namespace by the C core (:func:`nslib.socket_in`).  A
socket keeps the namespace it was born in for life, so every request sent
through it acts there, and the calling thread never runs Python code
elsewhere.  pyroute2's own ``IPRoute(netns=...)`` forks a helper process for
each socket instead (and needs the name in /run/netns)::

    here = nslib.netlink.Session()          # the calling thread's namespace
    with nslib.netlink.Session(NetNamespace.named("blue")) as blue, here:
        blue.add_veth("eth1", "blue0", peer_ns=here)
        blue.add_address("eth1", "10.0.0.2/30")
        blue.set_link_up("eth1")

The module-level helpers (:func:`add_veth`, :func:`add_address`,
:func:`add_route`, :func:`add_neighbour`, :func:`set_link_up`,
:func:`move_link`, ...) open a session, do one thing and close it: handy
for one call, wasteful for many (a session costs about as much as a
request).  They accept the namespace as any reference: an
:class:`~nslib.NsHandle`, a :class:`~nslib.NetNamespace` (not a
microservice: resolve those through a plugin or tracker first), a path (a
string starting with ``/``), a reference string (``"blue"`` is the named
namespace blue, as for ``ip netns``; ``"pid:42"``, ``"path:..."``), an fd,
or ``None`` for the calling thread's namespace.  Errors
are ``OSError`` subclasses by errno, with messages naming the object and the
namespace; :class:`~nslib.LinkNotFound` and :class:`~nslib.LinkExists` are
raised for missing and clashing interfaces.

:func:`iproute` gives the bare ``pyroute2.IPRoute`` on such a socket.

Requires pyroute2 >= 0.9 (the ``use_socket=`` constructor argument of the
asyncio core; see :func:`iproute`).
"""

from __future__ import annotations

from .._resolve import NsRef
from . import session as _session
from .session import (
    LinkInfo,
    Session,
    _opened_for_move,
    check_ifname,
    iproute,
    parse_address,
    session,
)

__all__ = [
    "Address",
    "Interface",
    "LinkInfo",
    "LinkRef",
    "Session",
    "add_address",
    "add_neighbour",
    "add_route",
    "add_veth",
    "check_ifname",
    "delete_address",
    "delete_link",
    "delete_neighbour",
    "delete_route",
    "get_link",
    "iproute",
    "list_links",
    "move_link",
    "parse_address",
    "session",
    "set_link_down",
    "set_link_up",
    "set_mtu",
]

#: An interface, by name or by index.
LinkRef = _session.LinkRef
#: An address with its prefix, as :func:`parse_address` returns it.
Interface = _session.Interface
#: An interface address with its prefix: ``"10.0.0.1/24"`` or an ``ip_interface``.
Address = _session.Address


def get_link(link: LinkRef, *, ns: NsRef | None = None) -> LinkInfo:
    """Describe interface *link* (a name or an index) of *ns*.

    :raises LinkNotFound: *ns* has no such interface.
    """
    with Session(ns) as s:
        return s.get_link(link)


def list_links(ns: NsRef | None = None) -> list[str]:
    """The names of every interface in *ns*, in index order."""
    with Session(ns) as s:
        return s.list_links()


def set_link_up(link: LinkRef, *, ns: NsRef | None = None) -> None:
    """Set interface *link* of *ns* administratively up (``ip link set up``).

    :raises LinkNotFound: *ns* has no such interface.
    """
    with Session(ns) as s:
        s.set_link_up(link)


def set_link_down(link: LinkRef, *, ns: NsRef | None = None) -> None:
    """Set interface *link* of *ns* administratively down.

    :raises LinkNotFound: *ns* has no such interface.
    """
    with Session(ns) as s:
        s.set_link_down(link)


def set_mtu(link: LinkRef, mtu: int, *, ns: NsRef | None = None) -> None:
    """Set the MTU of interface *link* of *ns*.

    :raises LinkNotFound: *ns* has no such interface.
    :raises OSError: EINVAL for an MTU the device refuses.
    """
    with Session(ns) as s:
        s.set_mtu(link, mtu)


def delete_link(link: LinkRef, *, ns: NsRef | None = None, missing_ok: bool = False) -> None:
    """Delete interface *link* of *ns* (a veth takes its peer with it).

    :raises LinkNotFound: *ns* has no such interface (unless *missing_ok*).
    """
    with Session(ns) as s:
        s.delete_link(link, missing_ok=missing_ok)


def add_veth(
    name: str,
    peer_name: str,
    *,
    ns: NsRef | None = None,
    peer_ns: NsRef | None = None,
    mtu: int | None = None,
) -> None:
    """Create a veth pair: *name* inside *ns*, *peer_name* inside *peer_ns*.

    Both ends are made by one request (the peer is placed with
    IFLA_NET_NS_FD), so either the whole pair exists afterwards or nothing
    does.  Both ends start down and without addresses.  ``ns=None`` means
    the calling thread's namespace; ``peer_ns=None`` means *ns* (both ends
    in one namespace).

    :raises LinkExists: a name is taken in its namespace.
    :raises ValueError: an invalid interface name.
    """
    check_ifname(name, "veth name")
    check_ifname(peer_name, "veth peer name")
    with Session(ns) as s:
        s.add_veth(name, peer_name, peer_ns=peer_ns, mtu=mtu)


def add_address(
    link: LinkRef, address: Address, *, ns: NsRef | None = None, exist_ok: bool = False
) -> None:
    """Add *address* (``"10.0.0.1/24"``) to interface *link* of *ns*.

    :raises LinkNotFound: *ns* has no such interface.
    :raises FileExistsError: the address is there already (unless *exist_ok*).
    """
    with Session(ns) as s:
        s.add_address(link, address, exist_ok=exist_ok)


def delete_address(
    link: LinkRef, address: Address, *, ns: NsRef | None = None, missing_ok: bool = False
) -> None:
    """Remove *address* from interface *link* of *ns*.

    :raises LinkNotFound: *ns* has no such interface (unless *missing_ok*).
    :raises OSError: EADDRNOTAVAIL if the address is not there (unless *missing_ok*).
    """
    parse_address(address)  # a bad address fails before any socket is made
    with Session(ns) as s:
        s.delete_address(link, address, missing_ok=missing_ok)


def add_route(
    dst: str,
    *,
    ns: NsRef | None = None,
    gateway: str | None = None,
    dev: LinkRef | None = None,
    exist_ok: bool = False,
    replace: bool = False,
) -> None:
    """Add a route to *dst* (``"10.1.0.0/24"`` or ``"default"``) in *ns*.

    Give a *gateway*, a *dev* (name or index), or both.

    :param replace: replace another route to *dst* (``ip route replace``).
    :raises LinkNotFound: *dev* does not exist in *ns*.
    :raises FileExistsError: the route exists already (unless *exist_ok*).
    :raises OSError: ENETUNREACH when the gateway is not reachable on-link.
    """
    with Session(ns) as s:
        s.add_route(dst, gateway=gateway, dev=dev, exist_ok=exist_ok, replace=replace)


def delete_route(
    dst: str,
    *,
    ns: NsRef | None = None,
    gateway: str | None = None,
    dev: LinkRef | None = None,
    missing_ok: bool = False,
) -> None:
    """Delete the route to *dst* in *ns*.

    :raises FileNotFoundError: no such route (ESRCH; unless *missing_ok*).
    """
    with Session(ns) as s:
        s.delete_route(dst, gateway=gateway, dev=dev, missing_ok=missing_ok)


def add_neighbour(ip: str, mac: str, *, dev: LinkRef, ns: NsRef | None = None) -> None:
    """Add (or replace) a permanent ARP/NDP entry *ip* -> *mac* on *dev* in *ns*.

    Replacing makes it idempotent: a second call with the same entry is a
    no-op, and one with a new MAC updates it.

    :raises LinkNotFound: *dev* does not exist in *ns*.
    """
    with Session(ns) as s:
        s.add_neighbour(ip, mac, dev=dev)


def delete_neighbour(
    ip: str, *, dev: LinkRef, ns: NsRef | None = None, missing_ok: bool = False
) -> None:
    """Delete the neighbour entry for *ip* on *dev* in *ns*.

    :raises FileNotFoundError: no such entry (unless *missing_ok*).
    """
    with Session(ns) as s:
        s.delete_neighbour(ip, dev=dev, missing_ok=missing_ok)


def move_link(
    link: LinkRef,
    ns: NsRef,
    *,
    new_name: str | None = None,
    keep_config: bool = True,
    src: NsRef | None = None,
) -> LinkInfo:
    """Move interface *link* (name or index, looked up in *src*) into namespace *ns*.

    *ns* and *src* may be any reference or handle; *src* defaults to the
    calling thread's namespace.  See :meth:`Session.move_link` for what
    is kept and how a failure is undone.

    :returns: the interface as it now is inside *ns*.
    :raises LinkNotFound: *src* has no such interface.
    :raises NamespaceNotFound: *ns* or *src* does not exist.
    :raises LinkExists: *ns* already has an interface of that name.
    :raises OSError: the kernel refused (e.g. EINVAL for a namespace-local
        device such as ``lo``); the message names the link and both namespaces.
    """
    if new_name is not None:
        check_ifname(new_name, "new_name")
    with (
        _opened_for_move(ns, link, "target") as target,
        _opened_for_move(src, link, "source") as source,
    ):
        return source.move_link(link, target, new_name=new_name, keep_config=keep_config)
