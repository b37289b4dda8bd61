"""nsids: the numbers a network namespace gives its peers (private; see :mod:`nslib.named`).

An nsid is not a property of a namespace: namespace A may know namespace B
as nsid 3 while C knows B as 0 or not at all (ip-netns(8), "set").  Every
call here therefore says *from where* it looks: a ``NETLINK_ROUTE``
socket made inside the viewing namespace (default: the calling thread's),
over which ``RTM_GETNSID`` / ``RTM_NEWNSID`` name the peer by an fd of
ours (``NETNSA_FD``, looked up in this process's fd table whatever
namespace the socket lives in).  That is what ``ip netns list-id``,
``ip -n X netns list-id`` and ``ip netns set`` do.

The messages are a few fixed-size structs, packed here directly: pyroute2
0.9's synchronous ``nlm_request`` cannot dump (``KeyError: 'nlm_generator'``),
and the monitor asks for one nsid per event, where pyroute2's import and
socket set-up would cost more than the question (about 15 us raw).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from types import TracebackType
from typing import Literal

from ._procfs import nsfs_dev
from .errors import InvalidReference, NslibError
from .handle import NsHandle
from .names import validate_run_dir
from .reference import NetNamespace, NsLike, ReferenceType

__all__ = ["NSID_AUTO", "NsidTaken", "Rtnl", "list_ids", "nsid", "set_nsid"]

RTM_NEWNSID = 88
RTM_DELNSID = 89
RTM_GETNSID = 90
RTNLGRP_NSID = 28
NETNSA_NSID = 1
NETNSA_FD = 3
NETNSA_CURRENT_NSID = 5
#: ``NETNSA_NSID`` meaning "not assigned" in answers and "choose one" in requests.
NSID_AUTO = -1

_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_DUMP = 0x300
_NLM_F_ACK_TLVS = 0x200
_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10
_NETLINK_EXT_ACK = 11
_NLMSGERR_ATTR_MSG = 1
_HDR = struct.Struct("=IHHII")


class NsidTaken(FileExistsError, NslibError):
    """The nsid is already used for another namespace, or the namespace already has one.

    The kernel never changes an nsid once assigned (until one of the two
    namespaces goes away), as ip-netns(8) says.
    """


def parse_nsid_msg(data: bytes, off: int, length: int) -> tuple[int | None, int | None]:
    """``(NETNSA_NSID, NETNSA_CURRENT_NSID)`` of one RTM_*NSID message at *off*."""
    nsid = current = None
    pos = off + 16 + 4  # header + rtgenmsg (padded to 4)
    end = off + length
    while pos + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, pos)
        if alen < 4:
            break
        if alen >= 8:
            (value,) = struct.unpack_from("=i", data, pos + 4)
            if atype & 0x3FFF == NETNSA_NSID:
                nsid = value if value >= 0 else None
            elif atype & 0x3FFF == NETNSA_CURRENT_NSID:
                current = value if value >= 0 else None
        pos += (alen + 3) & ~3
    return nsid, current


class Rtnl:
    """A NETLINK_ROUTE socket for nsid questions, seen from one namespace.

    :param ns: the viewing namespace (anything :func:`nslib.socket_in`
        takes); ``None`` is the calling thread's.  The socket stays in that
        namespace whatever thread uses it.  Not for concurrent use.
    """

    def __init__(self, ns: NsLike | None = None) -> None:
        if ns is None:
            sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
            )
        else:
            from .switching import socket_in

            sock = socket_in(ns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            sock.bind((0, 0))
            for opt in (_NETLINK_CAP_ACK, _NETLINK_EXT_ACK):
                with contextlib.suppress(OSError):  # older kernels: no message, same errno
                    sock.setsockopt(_SOL_NETLINK, opt, 1)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._seq = 0

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _send(self, kind: int, flags: int, attrs: bytes) -> int:
        self._seq += 1
        body = struct.pack("=B3x", socket.AF_UNSPEC) + attrs
        self._sock.send(_HDR.pack(16 + len(body), kind, flags, self._seq, 0) + body)
        return self._seq

    def _replies(self, seq: int, what: str, dump: bool) -> list[tuple[bytes, int, int]]:
        """The messages answering request *seq*: ``(buffer, offset, length)`` each.

        A dump ends with NLMSG_DONE, an acknowledged request with an
        NLMSG_ERROR (0: success), a plain GET with its one answer.
        """
        out: list[tuple[bytes, int, int]] = []
        while True:
            data = self._sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, kind, flags, rseq, _pid = _HDR.unpack_from(data, off)
                if length < 16:
                    return out
                if rseq == seq:
                    if kind == _NLMSG_ERROR:
                        (err,) = struct.unpack_from("=i", data, off + 16)
                        if err:
                            raise self._error(-err, data, off, length, flags, what)
                        return out
                    if kind == _NLMSG_DONE:
                        return out
                    out.append((data, off, length))
                off += (length + 3) & ~3
            if out and not dump:
                return out

    @staticmethod
    def _error(err: int, data: bytes, off: int, length: int, flags: int, what: str) -> OSError:
        detail = ""
        if flags & _NLM_F_ACK_TLVS:
            pos = off + 16 + 4 + 16  # header, error, the capped request header
            while pos + 4 <= off + length:
                alen, atype = struct.unpack_from("=HH", data, pos)
                if alen < 4:
                    break
                if atype == _NLMSGERR_ATTR_MSG:
                    detail = (
                        data[pos + 4 : pos + alen].split(b"\0", 1)[0].decode("utf-8", "replace")
                    )
                pos += (alen + 3) & ~3
        msg = f"{os.strerror(err)}: {what}" + (f" ({detail})" if detail else "")
        if err == errno.EEXIST:
            return NsidTaken(err, msg)
        return OSError(err, msg)

    def get(self, fd: int) -> int | None:
        """The nsid this socket's namespace gives the namespace open at *fd*, or ``None``."""
        seq = self._send(RTM_GETNSID, _NLM_F_REQUEST, struct.pack("=HHI", 8, NETNSA_FD, fd))
        for data, off, length in self._replies(seq, f"RTM_GETNSID for fd {fd}", False):
            return parse_nsid_msg(data, off, length)[0]
        return None

    def set(self, fd: int, nsid: int, what: str) -> None:
        """Give the namespace at *fd* the nsid *nsid* (:data:`NSID_AUTO`: the kernel picks).

        :raises NsidTaken: *nsid* is used, or the namespace has an nsid already.
        """
        attrs = struct.pack("=HHi", 8, NETNSA_NSID, nsid) + struct.pack("=HHI", 8, NETNSA_FD, fd)
        seq = self._send(RTM_NEWNSID, _NLM_F_REQUEST | _NLM_F_ACK, attrs)
        self._replies(seq, what, False)

    def dump(self) -> list[int]:
        """Every nsid this socket's namespace has assigned, sorted."""
        seq = self._send(RTM_GETNSID, _NLM_F_REQUEST | _NLM_F_DUMP, b"")
        ids = [parse_nsid_msg(d, o, n)[0] for d, o, n in self._replies(seq, "RTM_GETNSID", True)]
        return sorted(i for i in ids if i is not None)


# -- the public calls, re-exported by nslib.named ------------------------------------------


def _viewer(ns: NsLike | None, run_dir: str | None) -> Rtnl:
    """A socket in the viewing namespace; a named one is looked up in *run_dir*."""
    if isinstance(ns, NetNamespace) and ns.type == ReferenceType.NSID:
        with NsHandle.from_name(ns.reference, run_dir=run_dir) as h:
            return Rtnl(h)
    return Rtnl(ns)


def _check_nsid(value: object) -> int:
    if value == "auto":
        return NSID_AUTO
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise InvalidReference(f"nsid must be an int from 0 to 2**31-1 or 'auto', not {value!r}")
    return value


def nsid(name: str, *, run_dir: str | None = None, ns: NsLike | None = None) -> int | None:
    """The nsid of the named namespace *name*, as the namespace *ns* sees it.

    *ns* is the viewing namespace: ``None`` (the default) is the calling
    thread's, which is what ``ip netns list-id`` shows; any namespace
    reference (``NetNamespace.named("red")``, looked up in *run_dir*, a
    handle, a path, ...) gives ``ip -n red netns list-id``'s view.
    ``None`` when that namespace has no nsid for it.

    :raises NamespaceNotFound: no such name.
    :raises NotANamespace: a stale placeholder.
    """
    with NsHandle.from_name(name, run_dir=run_dir) as h, _viewer(ns, run_dir) as r:
        return r.get(h.fileno())


def set_nsid(
    name: str,
    nsid: int | Literal["auto"],
    *,
    run_dir: str | None = None,
    ns: NsLike | None = None,
) -> int:
    """Give the named namespace *name* an nsid in namespace *ns*, like ``ip netns set NAME NSID``.

    *ns* (default: the calling thread's namespace) is the namespace whose
    table gets the entry; ``ip -n red netns set blue 3`` is
    ``set_nsid("blue", 3, ns=NetNamespace.named("red"))``.  ``"auto"`` lets the kernel
    pick the lowest free number.  An nsid, once set, stays until one of the
    two namespaces is gone.

    :returns: the nsid now assigned.
    :raises NsidTaken: *nsid* is used for another namespace, or *name*
        already has one (also a ``FileExistsError``, errno EEXIST).
    :raises InvalidReference: *nsid* is not an int in [0, 2**31) or ``"auto"``.
    :raises NamespaceNotFound: no such name.
    """
    value = _check_nsid(nsid)
    with NsHandle.from_name(name, run_dir=run_dir) as h, _viewer(ns, run_dir) as r:
        r.set(h.fileno(), value, f"setting nsid {nsid} for {name!r}")
        got = r.get(h.fileno())
    assert got is not None
    return got


def list_ids(*, run_dir: str | None = None, ns: NsLike | None = None) -> dict[int, str | None]:
    """Every nsid the namespace *ns* has assigned, with a name for each where one exists.

    Like ``ip netns list-id`` (``ns=None``: the calling thread's namespace)
    or ``ip -n X netns list-id`` (``ns=NetNamespace.named("X")``).  The name is one of the
    names in *run_dir* bound to that namespace (the first in sorted order
    when there are several); ``None`` for namespaces without a name there,
    e.g. a container's.
    """
    d = validate_run_dir(run_dir)
    with _viewer(ns, run_dir) as r:
        ids: dict[int, str | None] = dict.fromkeys(r.dump())
        if not ids:
            return ids
        try:
            entries = sorted(os.listdir(d))
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        for entry in entries:
            try:
                fd = os.open(os.path.join(d, entry), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if os.fstat(fd).st_dev != nsfs_dev():
                    continue  # a placeholder: its fd is no namespace
                got = r.get(fd)
            except OSError:
                continue
            finally:
                os.close(fd)
            if got is not None and got in ids and ids[got] is None:
                ids[got] = entry
    return ids
