"""The netlink session: one rtnetlink socket bound to one namespace.

A :class:`Session` owns a NETLINK_ROUTE socket made inside its namespace by
the C core (no fork, the calling thread never moves) and a handle on that
namespace.  Every method acts in that namespace.  Open one per namespace
and reuse it: opening costs one ``socket(2)`` in C plus pyroute2's setup
(about 0.4 ms), each request a kernel round trip through pyroute2 (about
0.4 ms on a small VM, mostly decoding).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pyroute2
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .._resolve import NsRef, resolve
from ..errors import ClosedHandleError, LinkExists, LinkNotFound, NamespaceNotFound, NslibError
from ..handle import NsHandle
from ..switching import socket_in

__all__ = [
    "Address",
    "Interface",
    "LinkInfo",
    "LinkRef",
    "Session",
    "check_ifname",
    "iproute",
    "parse_address",
    "session",
]

NETLINK_ROUTE = 0
_IFF_UP = 0x1
_NUD_PERMANENT = 0x80
_RT_SCOPE_LINK = 253
_IFNAMSIZ = 16
_BUFSIZE = 1 << 20  # what pyroute2 asks for on its own sockets

#: An interface, by name or by index.
LinkRef = str | int
#: An address with its prefix, as :func:`parse_address` returns it.
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
#: An interface address with its prefix: ``"10.0.0.1/24"`` or an ``ip_interface``.
Address = str | Interface


# -- plain values -------------------------------------------------------------


def check_ifname(name: object, what: str = "interface name") -> str:
    """Return *name* if the kernel would accept it as an interface name.

    The rules of the kernel's ``dev_valid_name()``: 1 to 15 bytes, not
    ``.`` or ``..``, no ``/``, ``:``, NUL or white space.

    :param what: what the name is for, used in the error message.
    :raises TypeError: *name* is not a ``str``.
    :raises ValueError: the kernel would refuse the name.
    """
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


def parse_address(address: Address) -> Interface:
    """*address* (``"10.0.0.1/24"``, ``"fd00::1/64"``, an ``ip_interface``) as an ``ip_interface``.

    :raises TypeError: neither a ``str`` nor an ``ip_interface``.
    :raises ValueError: not an address with an optional prefix.
    """
    if isinstance(address, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return address
    if isinstance(address, str):
        return ipaddress.ip_interface(address)
    raise TypeError(f"address must be a str or an ip_interface, not {type(address).__name__}")


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What :meth:`Session.get_link` reports about one interface.

    ``addresses`` holds the IPv4 addresses and the IPv6 addresses that are
    not link-local (the kernel makes those itself), each with its prefix.
    It is empty when the link was looked up with ``addresses=False``.
    """

    index: int
    name: str
    mtu: int
    up: bool
    mac: str | None
    kind: str | None
    addresses: tuple[Interface, ...]


def _oserror(e: NetlinkError, what: str) -> OSError:
    """A netlink error as the ``OSError`` subclass its errno maps to."""
    code = e.code if isinstance(e.code, int) and e.code > 0 else errno.EIO
    return OSError(code, f"{os.strerror(code)}: {what}")


def _route_desc(dst: str, gateway: str | None, dev: LinkRef | None) -> str:
    return dst + (f" via {gateway}" if gateway else "") + (f" dev {dev}" if dev is not None else "")


# -- the socket ---------------------------------------------------------------


def iproute(ns: NsRef | None = None) -> pyroute2.IPRoute:
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


def _open_handle(ns: NsRef | None) -> NsHandle:
    """A handle of our own on *ns* (the caller's handle or fd stays theirs)."""
    if ns is None:
        return NsHandle.current()
    if isinstance(ns, NsHandle):
        return ns.dup()
    with resolve(ns) as r:
        # NsHandle() checks that it is a network namespace (a bare fd or a
        # path may be anything) and closes the dup if it is not.
        return NsHandle(fcntl.fcntl(r.fd, fcntl.F_DUPFD_CLOEXEC, 3), what=r.what)


# -- the session --------------------------------------------------------------


class Session:
    """An rtnetlink session bound to one network namespace.

    :param ns: the namespace: an :class:`~nslib.NsHandle`, a
        :class:`~nslib.NetNamespace` (not a microservice: resolve those
        through a plugin or tracker first), a path (a string starting with
        ``/``), a reference string (``"blue"`` or ``"name:blue"``,
        ``"pid:42"``, ``"path:..."``), an fd, or ``None`` for the calling
        thread's namespace.  The session keeps a handle of its own on it,
        so the caller may close theirs.

    Creating a session costs one socket made inside *ns* by the C core (the
    calling thread never moves, nothing forks) and one ``dup`` or open of
    the namespace.  A session is a context manager; :meth:`close` is
    idempotent, and any other method on a closed session raises
    :class:`~nslib.ClosedHandleError`.

    A session belongs to the thread that made it (pyroute2 binds its
    socket to that thread): using it on another thread raises
    ``RuntimeError``.

    Errors are ``OSError`` subclasses by errno, with messages naming the
    object and the namespace; :class:`~nslib.LinkNotFound` and
    :class:`~nslib.LinkExists` are raised for missing and clashing
    interfaces.

    :raises NamespaceNotFound: *ns* names a namespace that does not exist.
    :raises NotANamespace: *ns* is not a network namespace.
    :raises InvalidReference: *ns* is of a type that names no namespace.
    """

    def __init__(self, ns: NsRef | None = None) -> None:
        self._ipr: Any = None
        self._handle = _open_handle(ns)
        try:
            self._ipr = iproute(self._handle)
        except BaseException:
            self._handle.close()
            raise
        self._tid = threading.get_ident()
        self._what = f"{self._handle.what} (net:[{self._handle.ns_id[1]}])"

    # -- lifecycle -------------------------------------------------------------

    @property
    def what(self) -> str:
        """The namespace in words, with its inode: for messages."""
        return self._what

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._ipr is None

    @property
    def ns_id(self) -> tuple[int, int]:
        """``(st_dev, st_ino)`` of the session's namespace.

        :raises ClosedHandleError: the session is closed.
        """
        self._check()
        return self._handle.ns_id

    def handle(self) -> NsHandle:
        """A new handle on the session's namespace; the caller closes it.

        :raises ClosedHandleError: the session is closed.
        """
        self._check()
        return self._handle.dup()

    @property
    def iproute(self) -> pyroute2.IPRoute:
        """The underlying ``pyroute2.IPRoute``, for requests this class does not cover.

        It belongs to the session: do not close it.

        :raises ClosedHandleError: the session is closed.
        """
        self._check()
        ipr: pyroute2.IPRoute = self._ipr
        return ipr

    def close(self) -> None:
        """Close the socket and the namespace handle.  Idempotent."""
        ipr, self._ipr = self._ipr, None
        try:
            if ipr is not None:
                ipr.close()
        finally:
            self._handle.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<nslib.netlink.Session {state}: {self._what}>"

    def _check(self) -> Any:
        ipr = self._ipr
        if ipr is None:
            raise ClosedHandleError(f"netlink session is closed ({self._what})")
        if threading.get_ident() != self._tid:
            raise RuntimeError(
                f"netlink session of {self._what} used on another thread than the one "
                "that made it; open one session per thread"
            )
        return ipr

    # -- links -----------------------------------------------------------------

    def _link_msg(self, link: LinkRef) -> Any:
        ipr = self._check()
        if isinstance(link, bool) or not isinstance(link, int | str):
            raise TypeError(f"link must be a name or an index, not {type(link).__name__}")
        try:
            if isinstance(link, int):
                return ipr.link("get", index=link)[0]
            return ipr.link("get", ifname=check_ifname(link, "link"))[0]
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                desc = f"index {link}" if isinstance(link, int) else repr(link)
                raise LinkNotFound(f"no link {desc} in {self._what}") from None
            raise _oserror(e, f"looking up link {link!r} in {self._what}") from None

    def _addresses(self, index: int) -> tuple[Interface, ...]:
        found: list[Interface] = []
        for msg in self._check().addr("dump", index=index):
            if msg["index"] != index:
                continue
            if msg["family"] == socket.AF_INET6 and msg["scope"] == _RT_SCOPE_LINK:
                continue
            ip = msg.get("local") or msg.get("address")
            if ip:
                found.append(ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}"))
        return tuple(found)

    def _info(self, msg: Any, addresses: bool = True) -> LinkInfo:
        index = int(msg["index"])
        return LinkInfo(
            index=index,
            name=str(msg.get("ifname")),
            mtu=int(msg.get("mtu") or 0),
            up=bool(msg["flags"] & _IFF_UP),
            mac=msg.get("address"),
            kind=msg.get(("linkinfo", "kind")),
            addresses=self._addresses(index) if addresses else (),
        )

    def get_link(self, link: LinkRef, *, addresses: bool = True) -> LinkInfo:
        """Describe interface *link* (a name or an index).

        :param addresses: also list its addresses (one more request);
            with ``False``, :attr:`LinkInfo.addresses` is empty.
        :raises LinkNotFound: no such interface.
        :raises TypeError: *link* is neither a name nor an index.
        :raises ValueError: an invalid interface name.
        """
        return self._info(self._link_msg(link), addresses)

    def find_link(self, name: str) -> int | None:
        """The index of interface *name*, or ``None`` if there is none.

        :raises ValueError: an invalid interface name.
        """
        ipr = self._check()
        try:
            return int(ipr.link("get", ifname=check_ifname(name, "link"))[0]["index"])
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise _oserror(e, f"looking up link {name!r} in {self._what}") from None

    def link_index(self, link: LinkRef) -> int:
        """The index of *link*; an index is returned as it is, without a request.

        :raises LinkNotFound: no interface of that name.
        """
        self._check()
        if isinstance(link, int) and not isinstance(link, bool):
            return link
        return int(self._link_msg(link)["index"])

    def list_links(self) -> list[str]:
        """The names of every interface, in index order."""
        msgs = sorted(self._check().link("dump"), key=lambda m: m["index"])
        return [str(m.get("ifname")) for m in msgs]

    def _set_link(self, link: LinkRef, action: str, **attrs: Any) -> None:
        index = self.link_index(link)
        try:
            self._check().link("set", index=index, **attrs)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                raise LinkNotFound(f"no link {link!r} in {self._what}") from None
            raise _oserror(e, f"{action} link {link!r} in {self._what}") from None

    def set_link_up(self, link: LinkRef) -> None:
        """Set interface *link* administratively up (``ip link set up``).

        :raises LinkNotFound: no such interface.
        """
        self._set_link(link, "setting up", state="up")

    def set_link_down(self, link: LinkRef) -> None:
        """Set interface *link* administratively down.

        :raises LinkNotFound: no such interface.
        """
        self._set_link(link, "setting down", state="down")

    def set_mtu(self, link: LinkRef, mtu: int) -> None:
        """Set the MTU of interface *link*.

        :raises LinkNotFound: no such interface.
        :raises TypeError: *mtu* is not an ``int``.
        :raises OSError: EINVAL for an MTU the device refuses.
        """
        if isinstance(mtu, bool) or not isinstance(mtu, int):
            raise TypeError(f"mtu must be an int, not {type(mtu).__name__}")
        self._set_link(link, f"setting MTU {mtu} on", mtu=mtu)

    def delete_link(self, link: LinkRef, *, missing_ok: bool = False) -> None:
        """Delete interface *link* (a veth takes its peer with it).

        :raises LinkNotFound: no such interface (unless *missing_ok*).
        """
        try:
            index = self.link_index(link)
            self._check().link("del", index=index)
        except LinkNotFound:
            if not missing_ok:
                raise
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                if missing_ok:
                    return
                raise LinkNotFound(f"no link {link!r} in {self._what}") from None
            raise _oserror(e, f"deleting link {link!r} in {self._what}") from None

    def add_veth(
        self,
        name: str,
        peer_name: str,
        *,
        peer_ns: Session | NsRef | None = None,
        mtu: int | None = None,
    ) -> None:
        """Create a veth pair: *name* here, *peer_name* in *peer_ns*.

        Both ends are made by one request (the peer is placed with
        IFLA_NET_NS_FD), so either the whole pair exists afterwards or
        nothing does.  Both ends start down and without addresses.

        :param peer_ns: where the peer goes: another session, any namespace
            reference, or ``None`` for this session's namespace.
        :param mtu: the MTU of both ends (the kernel's default otherwise).
        :raises LinkExists: a name is taken in its namespace.
        :raises ValueError: an invalid interface name.
        :raises NamespaceNotFound: *peer_ns* does not exist.
        """
        check_ifname(name, "veth name")
        check_ifname(peer_name, "veth peer name")
        ipr = self._check()
        peer: dict[str, Any] = {"ifname": peer_name}
        peer_what = self._what
        with contextlib.ExitStack() as stack:
            if isinstance(peer_ns, Session):
                peer["net_ns_fd"] = peer_ns._handle.fileno()
                peer_what = peer_ns.what
            elif peer_ns is not None:
                r = stack.enter_context(resolve(peer_ns))
                peer["net_ns_fd"], peer_what = r.fd, r.what
            self._add_veth(ipr, name, peer_name, peer, peer_what, mtu)

    def _add_veth(
        self,
        ipr: Any,
        name: str,
        peer_name: str,
        peer: dict[str, Any],
        peer_what: str,
        mtu: int | None,
    ) -> None:
        try:
            extra: dict[str, Any] = {}
            if mtu is not None:
                peer["mtu"] = extra["mtu"] = mtu
            ipr.link("add", ifname=name, kind="veth", peer=peer, **extra)
        except NetlinkError as e:
            desc = f"veth pair {name!r} in {self._what} / {peer_name!r} in {peer_what}"
            if e.code == errno.EEXIST:
                raise LinkExists(
                    errno.EEXIST, f"cannot create {desc}: one of the names is taken"
                ) from None
            raise _oserror(e, f"creating {desc}") from None

    # -- addresses, routes, neighbours -----------------------------------------

    def add_address(self, link: LinkRef, address: Address, *, exist_ok: bool = False) -> None:
        """Add *address* (``"10.0.0.1/24"``) to interface *link*.

        :raises LinkNotFound: no such interface.
        :raises FileExistsError: the address is there already (unless *exist_ok*).
        :raises ValueError: not an address with a prefix.
        """
        iface = parse_address(address)
        index = self.link_index(link)
        try:
            self._check().addr(
                "add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen
            )
        except NetlinkError as e:
            if e.code == errno.EEXIST and exist_ok:
                return
            raise _oserror(e, f"adding address {iface} to link {link!r} in {self._what}") from None

    def delete_address(self, link: LinkRef, address: Address, *, missing_ok: bool = False) -> None:
        """Remove *address* from interface *link*.

        :raises LinkNotFound: no such interface (unless *missing_ok*).
        :raises OSError: EADDRNOTAVAIL if the address is not there (unless *missing_ok*).
        """
        iface = parse_address(address)
        try:
            index = self.link_index(link)
            self._check().addr(
                "del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen
            )
        except LinkNotFound:
            if not missing_ok:
                raise
        except NetlinkError as e:
            if missing_ok and e.code in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                return
            raise _oserror(
                e, f"deleting address {iface} from link {link!r} in {self._what}"
            ) from None

    def _route_spec(self, dst: str, gateway: str | None, dev: LinkRef | None) -> dict[str, Any]:
        if not isinstance(dst, str):
            raise TypeError(f"dst must be a str, not {type(dst).__name__}")
        if gateway is None and dev is None:
            raise ValueError(f"route to {dst} needs a gateway or a dev")
        spec: dict[str, Any] = {}
        if dst == "default":
            family = ipaddress.ip_address(gateway).version if gateway else 4
            spec["dst"] = "0.0.0.0/0" if family == 4 else "::/0"
        else:
            spec["dst"] = str(ipaddress.ip_network(dst, strict=False))
        if gateway is not None:
            spec["gateway"] = str(ipaddress.ip_address(gateway))
        if dev is not None:
            spec["oif"] = self.link_index(dev)
        return spec

    def add_route(
        self,
        dst: str,
        *,
        gateway: str | None = None,
        dev: LinkRef | None = None,
        exist_ok: bool = False,
        replace: bool = False,
    ) -> None:
        """Add a route to *dst* (``"10.1.0.0/24"`` or ``"default"``).

        Give a *gateway*, a *dev* (name or index), or both.

        :param replace: replace another route to *dst* (``ip route replace``).
        :raises LinkNotFound: *dev* does not exist.
        :raises FileExistsError: the route exists already (unless *exist_ok* or *replace*).
        :raises OSError: ENETUNREACH when the gateway is not reachable on-link.
        :raises ValueError: a malformed *dst* or *gateway*, or neither *gateway* nor *dev*.
        """
        spec = self._route_spec(dst, gateway, dev)
        try:
            self._check().route("replace" if replace else "add", **spec)
        except NetlinkError as e:
            if e.code == errno.EEXIST and exist_ok:
                return
            desc = _route_desc(dst, gateway, dev)
            raise _oserror(e, f"adding route {desc} in {self._what}") from None

    def delete_route(
        self,
        dst: str,
        *,
        gateway: str | None = None,
        dev: LinkRef | None = None,
        missing_ok: bool = False,
    ) -> None:
        """Delete the route to *dst*.

        :raises FileNotFoundError: no such route (unless *missing_ok*).
        :raises LinkNotFound: *dev* does not exist (unless *missing_ok*).
        """
        desc = _route_desc(dst, gateway, dev)
        try:
            spec = self._route_spec(dst, gateway, dev)
            self._check().route("del", **spec)
        except LinkNotFound:
            if not missing_ok:
                raise
        except NetlinkError as e:
            if missing_ok and e.code in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                return
            if e.code == errno.ESRCH:  # "No such process" reads badly for a route
                raise FileNotFoundError(errno.ENOENT, f"no route {desc} in {self._what}") from None
            raise _oserror(e, f"deleting route {desc} in {self._what}") from None

    def _neigh_spec(self, ip: str, dev: LinkRef) -> dict[str, Any]:
        addr = ipaddress.ip_address(ip)
        return {
            "dst": str(addr),
            "ifindex": self.link_index(dev),
            "family": socket.AF_INET if addr.version == 4 else socket.AF_INET6,
        }

    def add_neighbour(self, ip: str, mac: str, *, dev: LinkRef) -> None:
        """Add (or replace) a permanent ARP/NDP entry *ip* -> *mac* on *dev*.

        Replacing makes it idempotent: a second call with the same entry is
        a no-op, and one with a new MAC updates it.

        :raises LinkNotFound: *dev* does not exist.
        :raises ValueError: *ip* is not an IP address.
        """
        spec = self._neigh_spec(ip, dev)
        try:
            # replace: a permanent entry wins over whatever the kernel learned.
            self._check().neigh("replace", lladdr=mac, state=_NUD_PERMANENT, **spec)
        except NetlinkError as e:
            raise _oserror(
                e, f"adding neighbour {ip} lladdr {mac} dev {dev} in {self._what}"
            ) from None

    def delete_neighbour(self, ip: str, *, dev: LinkRef, missing_ok: bool = False) -> None:
        """Delete the neighbour entry for *ip* on *dev*.

        :raises FileNotFoundError: no such entry (unless *missing_ok*).
        :raises LinkNotFound: *dev* does not exist (unless *missing_ok*).
        """
        try:
            self._check().neigh("del", **self._neigh_spec(ip, dev))
        except LinkNotFound:
            if not missing_ok:
                raise
        except NetlinkError as e:
            if missing_ok and e.code in (errno.ENOENT, errno.ENODEV):
                return
            raise _oserror(e, f"deleting neighbour {ip} dev {dev} in {self._what}") from None

    # -- moving a link ---------------------------------------------------------

    def move_link(
        self,
        link: LinkRef,
        to: Session | NsRef,
        *,
        new_name: str | None = None,
        keep_config: bool = True,
    ) -> LinkInfo:
        """Move interface *link* (name or index) from this namespace into *to*.

        *new_name* renames the interface in the same request (``ip link set X
        netns N name Y``).

        The kernel drops an interface's addresses and sets it down when it
        changes namespace.  With *keep_config* (the default) its IPv4 and
        non-link-local IPv6 addresses, its MTU and its up state are read
        first and restored inside *to*.  Address labels, lifetimes and peer
        addresses are not carried over; IPv6 link-local addresses are
        regenerated by the kernel.

        Nothing is left half moved: a name clash in *to* is detected before
        the move; a move the kernel refuses leaves the interface where it
        was; and if restoring the configuration fails, the interface is moved
        back and its configuration restored here before the error is raised.

        :param to: a session of the target namespace (used for the restore),
            or any namespace reference (a session is opened for the move).
        :returns: the interface as it now is inside *to*.
        :raises LinkNotFound: no such interface here.
        :raises NamespaceNotFound: *to* does not exist.
        :raises LinkExists: *to* already has an interface of that name.
        :raises OSError: the kernel refused (e.g. EINVAL for a namespace-local
            device such as ``lo``); the message names the link and both namespaces.
        """
        self._check()
        if new_name is not None:
            check_ifname(new_name, "new_name")
        if isinstance(to, Session):
            return self._move(link, to, new_name, keep_config)
        with _opened_for_move(to, link, "target") as target:
            return self._move(link, target, new_name, keep_config)

    def _move(
        self, link: LinkRef, tgt: Session, new_name: str | None, keep_config: bool
    ) -> LinkInfo:
        info = self._info(self._link_msg(link))
        name = new_name or info.name
        desc = f"link {info.name!r}" + (f" (index {link})" if isinstance(link, int) else "")
        move_desc = f"{desc} from {self._what} to {tgt.what}"
        same = self.ns_id == tgt.ns_id
        if same and name == info.name:
            return info  # already there: nothing to do
        clash = LinkExists(
            errno.EEXIST,
            f"cannot move {move_desc}: {tgt.what} already has a link named {name!r}",
        )
        if tgt.find_link(name) is not None:
            raise clash
        attrs: dict[str, Any] = {} if same else {"net_ns_fd": tgt._handle.fileno()}
        if new_name is not None:
            attrs["ifname"] = new_name
        try:
            self._check().link("set", index=info.index, **attrs)
        except NetlinkError as e:
            # The kernel refused as a whole: the link is still here.
            if e.code == errno.EEXIST:
                raise clash from None
            raise _oserror(e, f"moving {move_desc}") from None
        if not keep_config:
            return tgt.get_link(name)
        try:
            index = tgt._restore(name, info)
        except (OSError, NslibError) as e:
            self._move_back(tgt, name, info, e)
            raise
        return tgt.get_link(index)

    def _restore(self, name: str, info: LinkInfo) -> int:
        """Re-apply *info*'s MTU, addresses and up state to *name*; return its index."""
        now = self.get_link(name, addresses=False)
        if info.mtu and now.mtu != info.mtu:
            self._set_link(now.index, f"restoring MTU {info.mtu} on", mtu=info.mtu)
        for iface in info.addresses:
            self.add_address(now.index, iface, exist_ok=True)
        if info.up:
            self.set_link_up(now.index)
        return now.index

    def _move_back(self, tgt: Session, name: str, info: LinkInfo, cause: Exception) -> None:
        """Undo a move whose configuration could not be restored (best effort)."""
        try:
            index = tgt.link_index(name)
            attrs: dict[str, Any] = {"net_ns_fd": self._handle.fileno()}
            if name != info.name:
                attrs["ifname"] = info.name
            tgt._check().link("set", index=index, **attrs)
            self._restore(info.name, info)
        except Exception as e:  # report both: the cause stays the raised error
            cause.add_note(f"moving the link back to {self._what} failed too: {e}")
        else:
            cause.add_note(f"the link was moved back to {self._what} with its configuration")


@contextmanager
def _opened_for_move(ns: NsRef | None, link: LinkRef, role: str) -> Iterator[Session]:
    """A session for one end of a move; a missing namespace names the link too."""
    try:
        s = Session(ns)
    except NamespaceNotFound as e:
        raise NamespaceNotFound(
            e.errno, f"cannot move link {link!r}: {role} namespace not found: {e.strerror}"
        ) from e
    with s:
        yield s


def session(ns: NsRef | None = None) -> Session:
    """Open a :class:`Session` on *ns* (``None``: the calling thread's namespace).

    :raises NamespaceNotFound: *ns* names a namespace that does not exist.
    :raises NotANamespace: *ns* is not a network namespace.
    """
    return Session(ns)
