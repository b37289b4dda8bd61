"""Thin rtnetlink helpers over pyroute2 that work inside any namespace, without forking.

:func:`iproute` gives a ``pyroute2.IPRoute`` whose netlink socket was made
inside the target namespace by the C core (:func:`nslib.socket_in`).  A
socket keeps the namespace it was born in for life, so every request sent
through it acts there, whatever thread sends it, and the calling thread never
runs Python code elsewhere.  pyroute2's own ``IPRoute(netns=...)`` forks a
helper process for each socket instead (and needs the name in /run/netns).

The helpers below (:func:`add_veth`, :func:`add_address`, :func:`add_route`,
:func:`add_neighbour`, :func:`set_link_up`, :func:`move_link`, ...) accept
the namespace as any reference: an :class:`~nslib.NsHandle`, a
:class:`~nslib.NetNamespace` (not a microservice: resolve those through a
plugin or tracker first), a namespace file path, an fd, or ``None`` for the
calling thread's namespace.  Errors are ``OSError`` subclasses by errno,
with messages naming the object and the namespace;
:class:`~nslib.LinkNotFound` and :class:`~nslib.LinkExists` are raised for
missing and clashing interfaces.

Requires pyroute2 >= 0.9 (the ``use_socket=`` constructor argument of the
asyncio core; see :func:`iproute`).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .errors import LinkExists, LinkNotFound, NamespaceNotFound, NslibError
from .handle import NsHandle
from .reference import NetNamespace, NsLike
from .switching import _resolve, socket_in

__all__ = [
    "Address",
    "LinkInfo",
    "LinkRef",
    "add_address",
    "add_neighbour",
    "add_route",
    "add_veth",
    "delete_address",
    "delete_link",
    "delete_neighbour",
    "delete_route",
    "get_link",
    "iproute",
    "list_links",
    "move_link",
    "set_link_down",
    "set_link_up",
    "set_mtu",
]

NETLINK_ROUTE = 0
_IFF_UP = 0x1
_NUD_PERMANENT = 0x80
_RT_SCOPE_LINK = 253
_RT_SCOPE_HOST = 254
_IFNAMSIZ = 16
_BUFSIZE = 1 << 20  # what pyroute2 asks for on its own sockets

#: An interface, by name or by index.
LinkRef = str | int
#: An interface address with its prefix: ``"10.0.0.1/24"`` or an ``ip_interface``.
Address = str | ipaddress.IPv4Interface | ipaddress.IPv6Interface
_Iface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


# -- the socket ---------------------------------------------------------------


def iproute(ns: NsLike | None = None) -> IPRoute:
    """A ``pyroute2.IPRoute`` whose every request acts inside *ns*.

    The NETLINK_ROUTE socket is created inside *ns* by the C core and handed
    to pyroute2 through its ``use_socket=`` argument: no fork, no helper
    process, and the calling thread stays home.  ``None`` means the calling
    thread's own namespace.  Close the result (or use it as a context
    manager); closing it closes the socket.

    Use it from the thread that created it: pyroute2 0.9 refuses a
    ``use_socket`` instance on another thread (``RuntimeError``), which is
    safer than two threads reading replies off one socket.  Make one per
    thread instead; it costs one ``socket(2)``.

    :raises NamespaceNotFound: *ns* names a namespace that does not exist.
    :raises NotANamespace: *ns* is not a network namespace.
    """
    if ns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0)
    else:
        sock = socket_in(ns, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFSIZE)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFSIZE)
        return IPRoute(use_socket=sock)
    except BaseException:
        sock.close()
        raise


def _describe(ns: NsLike | None) -> str:
    if ns is None:
        return "the calling thread's namespace"
    if isinstance(ns, NsHandle):
        return ns.what
    if isinstance(ns, NetNamespace):
        return str(ns)
    if isinstance(ns, int):
        return f"fd {ns}"
    return f"path:{os.fspath(ns)}"


@contextmanager
def _rtnl(ns: NsLike | None) -> Iterator[tuple[Any, str]]:
    what = _describe(ns)
    ipr = iproute(ns)
    try:
        yield ipr, what
    finally:
        ipr.close()


def _oserror(e: NetlinkError, what: str) -> OSError:
    """A netlink error as the ``OSError`` subclass its errno maps to."""
    code = e.code if isinstance(e.code, int) and e.code > 0 else errno.EIO
    return OSError(code, f"{os.strerror(code)}: {what}")


# -- links --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What :func:`get_link` reports about one interface.

    ``addresses`` holds the IPv4 addresses and the IPv6 addresses that are
    not link-local (the kernel makes those itself), each with its prefix.
    """

    index: int
    name: str
    mtu: int
    up: bool
    mac: str | None
    kind: str | None
    addresses: tuple[_Iface, ...]


def _check_ifname(name: object, what: str) -> str:
    # The kernel's dev_valid_name(): fail early with a clear ValueError.
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if (
        not name
        or name in (".", "..")
        or len(name.encode()) >= _IFNAMSIZ
        or any(c in name for c in "/:\0")
        or any(c.isspace() for c in name)
    ):
        raise ValueError(f"invalid interface name {name!r} ({what})")
    return name


def _link_msg(ipr: Any, link: LinkRef, what: str) -> Any:
    if isinstance(link, bool) or not isinstance(link, int | str):
        raise TypeError(f"link must be a name or an index, not {type(link).__name__}")
    try:
        if isinstance(link, int):
            return ipr.link("get", index=link)[0]
        return ipr.link("get", ifname=_check_ifname(link, "link"))[0]
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            desc = f"index {link}" if isinstance(link, int) else repr(link)
            raise LinkNotFound(f"no link {desc} in {what}") from None
        raise _oserror(e, f"looking up link {link!r} in {what}") from None


def _find(ipr: Any, name: str) -> int | None:
    try:
        return int(ipr.link("get", ifname=name)[0]["index"])
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise


def _index(ipr: Any, link: LinkRef, what: str) -> int:
    if isinstance(link, int) and not isinstance(link, bool):
        return link
    return int(_link_msg(ipr, link, what)["index"])


def _addresses(ipr: Any, index: int) -> tuple[_Iface, ...]:
    found: list[_Iface] = []
    for msg in ipr.addr("dump", index=index):
        if msg["index"] != index:
            continue
        if msg["family"] == socket.AF_INET6 and msg["scope"] == _RT_SCOPE_LINK:
            continue
        ip = msg.get("local") or msg.get("address")
        if ip:
            found.append(ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}"))
    return tuple(found)


def _info(ipr: Any, msg: Any) -> LinkInfo:
    index = int(msg["index"])
    return LinkInfo(
        index=index,
        name=str(msg.get("ifname")),
        mtu=int(msg.get("mtu") or 0),
        up=bool(msg["flags"] & _IFF_UP),
        mac=msg.get("address"),
        kind=msg.get(("linkinfo", "kind")),
        addresses=_addresses(ipr, index),
    )


def get_link(link: LinkRef, *, ns: NsLike | None = None) -> LinkInfo:
    """Describe interface *link* (a name or an index) of *ns*.

    :raises LinkNotFound: *ns* has no such interface.
    """
    with _rtnl(ns) as (ipr, what):
        return _info(ipr, _link_msg(ipr, link, what))


def list_links(ns: NsLike | None = None) -> list[str]:
    """The names of every interface in *ns*, in index order."""
    with _rtnl(ns) as (ipr, _what):
        msgs = sorted(ipr.link("dump"), key=lambda m: m["index"])
        return [str(m.get("ifname")) for m in msgs]


def _set_link(ipr: Any, link: LinkRef, what: str, action: str, **attrs: Any) -> None:
    index = _index(ipr, link, what)
    try:
        ipr.link("set", index=index, **attrs)
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            raise LinkNotFound(f"no link {link!r} in {what}") from None
        raise _oserror(e, f"{action} link {link!r} in {what}") from None


def set_link_up(link: LinkRef, *, ns: NsLike | None = None) -> None:
    """Set interface *link* of *ns* administratively up (``ip link set up``).

    :raises LinkNotFound: *ns* has no such interface.
    """
    with _rtnl(ns) as (ipr, what):
        _set_link(ipr, link, what, "setting up", state="up")


def set_link_down(link: LinkRef, *, ns: NsLike | None = None) -> None:
    """Set interface *link* of *ns* administratively down.

    :raises LinkNotFound: *ns* has no such interface.
    """
    with _rtnl(ns) as (ipr, what):
        _set_link(ipr, link, what, "setting down", state="down")


def set_mtu(link: LinkRef, mtu: int, *, ns: NsLike | None = None) -> None:
    """Set the MTU of interface *link* of *ns*.

    :raises LinkNotFound: *ns* has no such interface.
    :raises OSError: EINVAL for an MTU the device refuses.
    """
    with _rtnl(ns) as (ipr, what):
        _set_link(ipr, link, what, f"setting MTU {mtu} on", mtu=mtu)


def delete_link(link: LinkRef, *, ns: NsLike | None = None, missing_ok: bool = False) -> None:
    """Delete interface *link* of *ns* (a veth takes its peer with it).

    :raises LinkNotFound: *ns* has no such interface (unless *missing_ok*).
    """
    with _rtnl(ns) as (ipr, what):
        _delete_link(ipr, link, what, missing_ok)


def _delete_link(ipr: Any, link: LinkRef, what: str, missing_ok: bool) -> None:
    try:
        index = _index(ipr, link, what)
        ipr.link("del", index=index)
    except LinkNotFound:
        if not missing_ok:
            raise
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            if missing_ok:
                return
            raise LinkNotFound(f"no link {link!r} in {what}") from None
        raise _oserror(e, f"deleting link {link!r} in {what}") from None


def add_veth(
    name: str,
    peer_name: str,
    *,
    ns: NsLike | None = None,
    peer_ns: NsLike | None = None,
    mtu: int | None = None,
) -> None:
    """Create a veth pair: *name* inside *ns*, *peer_name* inside *peer_ns*.

    Both ends are made by one request (the peer is placed with
    IFLA_NET_NS_FD), so either the whole pair exists afterwards or nothing
    does.  Both ends start down and without addresses.  ``None`` means the
    calling thread's namespace, for either end.

    :raises LinkExists: a name is taken in its namespace.
    :raises ValueError: an invalid interface name.
    """
    _check_ifname(name, "veth name")
    _check_ifname(peer_name, "veth peer name")
    with _rtnl(ns) as (ipr, what):
        peer_fd, peer_own, peer_what = (-1, None, what) if peer_ns is None else _resolve(peer_ns)
        try:
            peer: dict[str, Any] = {"ifname": peer_name}
            extra: dict[str, Any] = {}
            if peer_fd >= 0:
                peer["net_ns_fd"] = peer_fd
            if mtu is not None:
                peer["mtu"] = extra["mtu"] = mtu
            ipr.link("add", ifname=name, kind="veth", peer=peer, **extra)
        except NetlinkError as e:
            desc = f"veth pair {name!r} in {what} / {peer_name!r} in {peer_what}"
            if e.code == errno.EEXIST:
                raise LinkExists(
                    errno.EEXIST, f"cannot create {desc}: one of the names is taken"
                ) from None
            raise _oserror(e, f"creating {desc}") from None
        finally:
            if peer_own is not None:
                peer_own.close()


# -- addresses, routes, neighbours --------------------------------------------


def _iface(address: Address) -> _Iface:
    if isinstance(address, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return address
    if isinstance(address, str):
        return ipaddress.ip_interface(address)
    raise TypeError(f"address must be a str or an ip_interface, not {type(address).__name__}")


def _add_address(ipr: Any, link: LinkRef, address: Address, what: str, exist_ok: bool) -> None:
    iface = _iface(address)
    index = _index(ipr, link, what)
    try:
        ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    except NetlinkError as e:
        if e.code == errno.EEXIST and exist_ok:
            return
        raise _oserror(e, f"adding address {iface} to link {link!r} in {what}") from None


def add_address(
    link: LinkRef, address: Address, *, ns: NsLike | None = None, exist_ok: bool = False
) -> None:
    """Add *address* (``"10.0.0.1/24"``) to interface *link* of *ns*.

    :raises LinkNotFound: *ns* has no such interface.
    :raises FileExistsError: the address is there already (unless *exist_ok*).
    """
    with _rtnl(ns) as (ipr, what):
        _add_address(ipr, link, address, what, exist_ok)


def delete_address(
    link: LinkRef, address: Address, *, ns: NsLike | None = None, missing_ok: bool = False
) -> None:
    """Remove *address* from interface *link* of *ns*.

    :raises LinkNotFound: *ns* has no such interface (unless *missing_ok*).
    :raises OSError: EADDRNOTAVAIL if the address is not there (unless *missing_ok*).
    """
    iface = _iface(address)
    with _rtnl(ns) as (ipr, what):
        try:
            index = _index(ipr, link, what)
            ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except LinkNotFound:
            if not missing_ok:
                raise
        except NetlinkError as e:
            if missing_ok and e.code in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                return
            raise _oserror(e, f"deleting address {iface} from link {link!r} in {what}") from None


def _route_spec(
    ipr: Any, dst: str, gateway: str | None, dev: LinkRef | None, what: str
) -> dict[str, Any]:
    if not isinstance(dst, str):
        raise TypeError(f"dst must be a str, not {type(dst).__name__}")
    spec: dict[str, Any] = {}
    if dst == "default":
        family = ipaddress.ip_address(gateway).version if gateway else 4
        spec["dst"] = "0.0.0.0/0" if family == 4 else "::/0"
    else:
        net = ipaddress.ip_network(dst, strict=False)
        spec["dst"] = str(net)
    if gateway is not None:
        spec["gateway"] = str(ipaddress.ip_address(gateway))
    if dev is not None:
        spec["oif"] = _index(ipr, dev, what)
    if gateway is None and dev is None:
        raise ValueError(f"route to {dst} needs a gateway or a dev")
    return spec


def _add_route(
    ipr: Any,
    dst: str,
    gateway: str | None,
    dev: LinkRef | None,
    what: str,
    exist_ok: bool,
    replace: bool = False,
) -> None:
    spec = _route_spec(ipr, dst, gateway, dev, what)
    try:
        ipr.route("replace" if replace else "add", **spec)
    except NetlinkError as e:
        if e.code == errno.EEXIST and exist_ok:
            return
        raise _oserror(e, f"adding route {_route_desc(dst, gateway, dev)} in {what}") from None


def _route_desc(dst: str, gateway: str | None, dev: LinkRef | None) -> str:
    return dst + (f" via {gateway}" if gateway else "") + (f" dev {dev}" if dev is not None else "")


def add_route(
    dst: str,
    *,
    ns: NsLike | None = None,
    gateway: str | None = None,
    dev: LinkRef | None = None,
    exist_ok: bool = False,
) -> None:
    """Add a route to *dst* (``"10.1.0.0/24"`` or ``"default"``) in *ns*.

    Give a *gateway*, a *dev* (name or index), or both.

    :raises LinkNotFound: *dev* does not exist in *ns*.
    :raises FileExistsError: the route exists already (unless *exist_ok*).
    :raises OSError: ENETUNREACH when the gateway is not reachable on-link.
    """
    with _rtnl(ns) as (ipr, what):
        _add_route(ipr, dst, gateway, dev, what, exist_ok)


def delete_route(
    dst: str,
    *,
    ns: NsLike | None = None,
    gateway: str | None = None,
    dev: LinkRef | None = None,
    missing_ok: bool = False,
) -> None:
    """Delete the route to *dst* in *ns*.

    :raises FileNotFoundError: no such route (ESRCH; unless *missing_ok*).
    """
    with _rtnl(ns) as (ipr, what):
        _delete_route(ipr, dst, gateway, dev, what, missing_ok)


def _delete_route(
    ipr: Any,
    dst: str,
    gateway: str | None,
    dev: LinkRef | None,
    what: str,
    missing_ok: bool,
) -> None:
    try:
        spec = _route_spec(ipr, dst, gateway, dev, what)
        ipr.route("del", **spec)
    except LinkNotFound:
        if not missing_ok:
            raise
    except NetlinkError as e:
        if missing_ok and e.code in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
            return
        err = _oserror(e, f"deleting route {_route_desc(dst, gateway, dev)} in {what}")
        if e.code == errno.ESRCH:  # "No such process" reads badly for a route
            err = FileNotFoundError(
                errno.ENOENT, f"no route {_route_desc(dst, gateway, dev)} in {what}"
            )
        raise err from None


def _neigh_spec(ipr: Any, ip: str, dev: LinkRef, what: str) -> dict[str, Any]:
    addr = ipaddress.ip_address(ip)
    return {
        "dst": str(addr),
        "ifindex": _index(ipr, dev, what),
        "family": socket.AF_INET if addr.version == 4 else socket.AF_INET6,
    }


def _add_neighbour(ipr: Any, ip: str, mac: str, dev: LinkRef, what: str) -> None:
    spec = _neigh_spec(ipr, ip, dev, what)
    try:
        # replace: a permanent entry wins over whatever the kernel learned.
        ipr.neigh("replace", lladdr=mac, state=_NUD_PERMANENT, **spec)
    except NetlinkError as e:
        raise _oserror(e, f"adding neighbour {ip} lladdr {mac} dev {dev} in {what}") from None


def add_neighbour(ip: str, mac: str, *, dev: LinkRef, ns: NsLike | None = None) -> None:
    """Add (or replace) a permanent ARP/NDP entry *ip* -> *mac* on *dev* in *ns*.

    Replacing makes it idempotent: a second call with the same entry is a
    no-op, and one with a new MAC updates it.

    :raises LinkNotFound: *dev* does not exist in *ns*.
    """
    with _rtnl(ns) as (ipr, what):
        _add_neighbour(ipr, ip, mac, dev, what)


def delete_neighbour(
    ip: str, *, dev: LinkRef, ns: NsLike | None = None, missing_ok: bool = False
) -> None:
    """Delete the neighbour entry for *ip* on *dev* in *ns*.

    :raises FileNotFoundError: no such entry (unless *missing_ok*).
    """
    with _rtnl(ns) as (ipr, what):
        _delete_neighbour(ipr, ip, dev, what, missing_ok)


def _delete_neighbour(ipr: Any, ip: str, dev: LinkRef, what: str, missing_ok: bool) -> None:
    try:
        ipr.neigh("del", **_neigh_spec(ipr, ip, dev, what))
    except LinkNotFound:
        if not missing_ok:
            raise
    except NetlinkError as e:
        if missing_ok and e.code in (errno.ENOENT, errno.ENODEV):
            return
        raise _oserror(e, f"deleting neighbour {ip} dev {dev} in {what}") from None


# -- moving a link ------------------------------------------------------------


def _ns_id(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def _restore(ipr: Any, name: str, info: LinkInfo, what: str) -> int:
    """Re-apply *info*'s MTU, addresses and up state to *name*; return its index."""
    msg = _link_msg(ipr, name, what)
    index = int(msg["index"])
    if info.mtu and int(msg.get("mtu") or 0) != info.mtu:
        _set_link(ipr, index, what, f"restoring MTU {info.mtu} on", mtu=info.mtu)
    for iface in info.addresses:
        _add_address(ipr, index, iface, what, exist_ok=True)
    if info.up:
        _set_link(ipr, index, what, "setting up", state="up")
    return index


def move_link(
    link: LinkRef,
    ns: NsLike,
    *,
    new_name: str | None = None,
    keep_config: bool = True,
    src: NsLike | None = None,
) -> LinkInfo:
    """Move interface *link* (name or index, looked up in *src*) into namespace *ns*.

    *ns* and *src* may be any reference or handle; *src* defaults to the
    calling thread's namespace.  *new_name* renames the interface in the
    same request (``ip link set X netns N name Y``).

    The kernel drops an interface's addresses and sets it down when it
    changes namespace.  With *keep_config* (the default) its IPv4 and
    non-link-local IPv6 addresses, its MTU and its up state are read first
    and restored inside *ns*.  Address labels, lifetimes and peer addresses
    are not carried over; IPv6 link-local addresses are regenerated by the
    kernel.

    Nothing is left half moved: a name clash in *ns* is detected before the
    move; a move the kernel refuses leaves the interface where it was; and
    if restoring the configuration fails, the interface is moved back and
    its configuration restored in *src* before the error is raised.

    :returns: the interface as it now is inside *ns*.
    :raises LinkNotFound: *src* has no such interface.
    :raises NamespaceNotFound: *ns* or *src* does not exist.
    :raises LinkExists: *ns* already has an interface of that name.
    :raises OSError: the kernel refused (e.g. EINVAL for a namespace-local
        device such as ``lo``); the message names the link and both namespaces.
    """
    if new_name is not None:
        _check_ifname(new_name, "new_name")
    tgt_fd, tgt_own, tgt_what = _open_for(ns, link, "target")
    try:
        src_own: NsHandle | None
        if src is None:
            src_own = NsHandle.current()
            src_fd, src_what = src_own.fileno(), _describe(None)
        else:
            src_fd, src_own, src_what = _open_for(src, link, "source")
        try:
            return _move(link, tgt_fd, tgt_what, src_fd, src_what, new_name, keep_config)
        finally:
            if src_own is not None:
                src_own.close()
    finally:
        if tgt_own is not None:
            tgt_own.close()


def _open_for(ns: NsLike, link: LinkRef, role: str) -> tuple[int, NsHandle | None, str]:
    """Resolve a namespace for a move; a missing one names the link too."""
    try:
        fd, own, what = _resolve(ns)
    except NamespaceNotFound as e:
        raise NamespaceNotFound(
            e.errno, f"cannot move link {link!r}: {role} namespace not found: {e.strerror}"
        ) from e
    st = os.fstat(fd)
    return fd, own, f"{what} (net:[{st.st_ino}])"


def _move(
    link: LinkRef,
    tgt_fd: int,
    tgt_what: str,
    src_fd: int,
    src_what: str,
    new_name: str | None,
    keep_config: bool,
) -> LinkInfo:
    with _rtnl(src_fd) as (sipr, _), _rtnl(tgt_fd) as (tipr, _):
        msg = _link_msg(sipr, link, src_what)
        info = _info(sipr, msg)
        name = new_name or info.name
        desc = f"link {info.name!r}" + (f" (index {link})" if isinstance(link, int) else "")
        move_desc = f"{desc} from {src_what} to {tgt_what}"
        same = _ns_id(src_fd) == _ns_id(tgt_fd)
        if same and name == info.name:
            return info  # already there: nothing to do
        if _find(tipr, name) is not None:
            raise LinkExists(
                errno.EEXIST,
                f"cannot move {move_desc}: {tgt_what} already has a link named {name!r}",
            )
        attrs: dict[str, Any] = {} if same else {"net_ns_fd": tgt_fd}
        if new_name is not None:
            attrs["ifname"] = new_name
        try:
            sipr.link("set", index=info.index, **attrs)
        except NetlinkError as e:
            # The kernel refused as a whole: the link is still in src.
            if e.code == errno.EEXIST:
                raise LinkExists(
                    errno.EEXIST,
                    f"cannot move {move_desc}: {tgt_what} already has a link named {name!r}",
                ) from None
            raise _oserror(e, f"moving {move_desc}") from None
        if not keep_config:
            return _info(tipr, _link_msg(tipr, name, tgt_what))
        try:
            index = _restore(tipr, name, info, tgt_what)
        except (OSError, NslibError) as e:
            _move_back(tipr, sipr, name, info, src_fd, src_what, e)
            raise
        return _info(tipr, _link_msg(tipr, index, tgt_what))


def _move_back(
    tipr: Any, sipr: Any, name: str, info: LinkInfo, src_fd: int, src_what: str, cause: Exception
) -> None:
    """Undo a move whose configuration could not be restored (best effort)."""
    try:
        index = int(tipr.link("get", ifname=name)[0]["index"])
        attrs: dict[str, Any] = {"net_ns_fd": src_fd}
        if name != info.name:
            attrs["ifname"] = info.name
        tipr.link("set", index=index, **attrs)
        _restore(sipr, info.name, info, src_what)
    except Exception as e:  # report both: the cause stays the raised error
        cause.add_note(f"moving the link back to {src_what} failed too: {e}")
    else:
        cause.add_note(f"the link was moved back to {src_what} with its configuration")
