"""A minimal rtnetlink client for CNI plugins: veth pairs, addresses, routes.

pyroute2 takes about 0.3 s to import, longer than a whole Go plugin runs;
a plugin process is short-lived, so the handful of messages a point-to-point
plugin needs are built here with :mod:`struct` (kernel layouts from
``<linux/rtnetlink.h>``, ``<linux/if_link.h>``, ``<linux/veth.h>``).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct

__all__ = ["Rtnl"]

NETLINK_ROUTE = 0
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE = 24
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RTN_UNICAST = 254, 3, 0, 253, 1

_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table proto scope type flags
_HDR = struct.Struct("=IHHII")


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def _name(name: str) -> bytes:
    return name.encode() + b"\0"


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while len(data) >= 4:
        n, kind = struct.unpack_from("=HH", data)
        if n < 4:
            break
        out[kind & 0x3FFF] = data[4:n]
        data = data[(n + 3) & ~3 :]
    return out


class Rtnl:
    """One rtnetlink socket; its namespace is the one it was created in.

    :param sock: an ``AF_NETLINK``/``NETLINK_ROUTE`` socket (for another
        namespace: :func:`nslib.socket_in`); ``None`` opens one here.
    """

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, kind: int, flags: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
        self._seq += 1
        seq = self._seq
        self.sock.send(_HDR.pack(_HDR.size + len(body), kind, flags | NLM_F_REQUEST, seq, 0) + body)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + _HDR.size <= len(data):
                n, t, _fl, s, _pid = _HDR.unpack_from(data, off)
                payload = data[off + _HDR.size : off + n]
                off += (n + 3) & ~3
                if s != seq:
                    continue
                if t == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", payload)
                    if err:
                        raise OSError(-err, f"{os.strerror(-err)}: {what}")
                    return replies
                if t == NLMSG_DONE:
                    return replies
                replies.append((t, payload))
                if not flags & 0x300:  # not a dump: one answer and done
                    return replies

    def link(self, name: str) -> tuple[int, str] | None:
        """``(ifindex, mac)`` of link *name*, or ``None`` if there is none."""
        body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name))
        try:
            replies = self._request(RTM_GETLINK, 0, body, f"get link {name}")
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        for _t, payload in replies:
            _f, _ty, index, _fl, _c = _IFINFO.unpack_from(payload)
            mac = _attrs(payload[_IFINFO.size :]).get(IFLA_ADDRESS, b"")
            return index, ":".join(f"{b:02x}" for b in mac)
        return None

    def add_veth(self, name: str, peer: str, peer_ns_fd: int, mtu: int | None = None) -> None:
        """Create veth *name* here with its *peer* created directly in the namespace *peer_ns_fd*.

        :raises FileExistsError: *name* exists here (or *peer* there).
        """
        mtu_attr = _attr(IFLA_MTU, struct.pack("=I", mtu)) if mtu else b""
        peer_msg = (
            _IFINFO.pack(0, 0, 0, 0, 0)
            + _attr(IFLA_IFNAME, _name(peer))
            + _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_ns_fd))
            + mtu_attr
        )
        info = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(
            IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_msg)
        )
        body = (
            _IFINFO.pack(0, 0, 0, 0, 0)
            + _attr(IFLA_IFNAME, _name(name))
            + mtu_attr
            + _attr(IFLA_LINKINFO, info)
        )
        self._request(
            RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, f"add veth {name}/{peer}"
        )

    def set_up(self, index: int) -> None:
        """Bring link *index* up."""
        body = _IFINFO.pack(0, 0, index, IFF_UP, IFF_UP)
        self._request(RTM_NEWLINK, NLM_F_ACK, body, f"set link {index} up")

    def delete_link(self, name: str) -> bool:
        """Delete link *name*; ``False`` if there was none."""
        body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name))
        try:
            self._request(RTM_DELLINK, NLM_F_ACK, body, f"delete link {name}")
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    def add_address(self, index: int, address: str, peer: str | None = None) -> None:
        """Add *address* (CIDR form) to link *index*; with *peer*, point-to-point to it.

        An existing identical address is left alone.
        """
        ip = ipaddress.ip_interface(address)
        fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        body = _IFADDR.pack(fam, ip.network.prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        body += _attr(IFA_LOCAL, ip.ip.packed)
        dst = ipaddress.ip_address(peer) if peer else ip.ip
        body += _attr(IFA_ADDRESS, dst.packed)
        with contextlib.suppress(FileExistsError):
            self._request(
                RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, f"add {address}"
            )

    def addresses(self, index: int) -> list[str]:
        """The addresses of link *index* (``IFA_LOCAL`` or ``IFA_ADDRESS``, CIDR form)."""
        out = []
        body = _IFADDR.pack(0, 0, 0, 0, 0)
        for _t, payload in self._request(RTM_GETADDR, 0x300, body, "dump addresses"):
            _fam, plen, _f, _s, idx = _IFADDR.unpack_from(payload)
            if idx != index:
                continue
            a = _attrs(payload[_IFADDR.size :])
            raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
            if raw:
                out.append(f"{ipaddress.ip_address(raw)}/{plen}")
        return out

    def add_route(self, dst: str, gateway: str | None, index: int) -> None:
        """Route *dst* (CIDR) through *gateway* (or on-link) out of link *index*.

        An existing identical route is left alone.
        """
        net = ipaddress.ip_network(dst, strict=False)
        fam = socket.AF_INET if net.version == 4 else socket.AF_INET6
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        body = _RTMSG.pack(
            fam, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0
        )
        if net.prefixlen:
            body += _attr(RTA_DST, net.network_address.packed)
        if gateway:
            body += _attr(RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
        body += _attr(RTA_OIF, struct.pack("=I", index))
        with contextlib.suppress(FileExistsError):
            self._request(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, f"route {dst}")
