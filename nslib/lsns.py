"""Every namespace of every kind on the host, as ``lsns`` lists them, and what holds each.

:func:`namespaces` returns one :class:`NsEntry` per namespace, deduplicated
by kind and inode.  For each it gives what ``lsns`` gives (type, inode,
number of processes, the lowest PID in it, that process's user and
command) and what ``lsns`` does not look at:

* threads: a thread can be in another network, UTS, IPC, mount or cgroup
  namespace than its process (``setns`` and ``unshare`` are per thread),
  and such a namespace is invisible to ``lsns``, which reads only
  ``/proc/<pid>/ns``.  Every thread of a multithreaded process is looked at;
* bind mounts: ``nsfs`` mounts of the namespace in the calling thread's
  mount namespace, and in every other mount namespace (mounts that are
  mere copies of ours excluded);
* open fds: ``/proc/<pid>/fd/*`` that refer to it;
* for network namespaces, the nsid the caller's namespace knows it by.

A namespace held only by a bind mount or an fd (no process inside) is
listed too, with ``nprocs`` 0 and no PID.  Processes that exit during the
scan are skipped; processes that cannot be read are listed in
:attr:`Listing.unreadable`.  Run as root to see everything.

:meth:`Listing.to_json` writes ``lsns -J``'s keys (``ns``, ``type``,
``nprocs``, ``pid``, ``user``, ``command``) plus the extra ones, so
tools that read ``lsns -J`` can read it.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ._procfs import MountInfo, nsfs_dev, parse_mountinfo
from .kinds import ALL_KINDS, NsKind

__all__ = ["FdHolder", "Listing", "MountHolder", "NsEntry", "namespaces"]

# Races with exiting processes and threads: skip, never fail.
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENOTDIR)
# The kinds a single thread can hold apart from its process.
_PER_THREAD = frozenset({NsKind.NET, NsKind.UTS, NsKind.IPC, NsKind.MNT, NsKind.CGROUP})
_NAMES = {k.proc_name: k for k in ALL_KINDS}


@dataclass(frozen=True, slots=True)
class MountHolder:
    """An ``nsfs`` bind mount of the namespace."""

    #: The mount point, as bytes were decoded by ``os.fsdecode`` (exact round trip).
    path: str
    #: ``None``: the caller's mount namespace; else a process in the mount
    #: namespace that has it (reach it as ``/proc/PID/root/PATH``).
    via_pid: int | None = None


@dataclass(frozen=True, slots=True)
class FdHolder:
    """An open fd that refers to the namespace."""

    pid: int
    fd: int


@dataclass(frozen=True, slots=True)
class NsEntry:
    """One namespace and what holds it."""

    kind: NsKind
    ino: int
    dev: int
    #: Processes whose main thread is inside, as ``lsns`` counts them.
    pids: tuple[int, ...] = ()
    #: ``(pid, tid)`` of threads inside while their process is not.
    threads: tuple[tuple[int, int], ...] = ()
    mounts: tuple[MountHolder, ...] = ()
    fds: tuple[FdHolder, ...] = ()
    #: The nsid the caller's network namespace knows it by (NET only).
    nsid: int | None = None
    #: ``lsns``'s PID, USER and COMMAND: the lowest PID inside.
    pid: int | None = None
    user: str | None = None
    command: str | None = None

    @property
    def nprocs(self) -> int:
        """How many processes are inside (``lsns``'s NPROCS)."""
        return len(self.pids)

    @property
    def held_by(self) -> tuple[str, ...]:
        """What keeps it alive: ``processes``, ``threads``, ``mounts``, ``fds``."""
        out = []
        if self.pids:
            out.append("processes")
        if self.threads:
            out.append("threads")
        if self.mounts:
            out.append("mounts")
        if self.fds:
            out.append("fds")
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        """``lsns -J``'s keys first, then nslib's."""
        return {
            "ns": self.ino,
            "type": self.kind.proc_name,
            "nprocs": self.nprocs,
            "pid": self.pid,
            "user": self.user,
            "command": self.command,
            "dev": self.dev,
            "pids": list(self.pids),
            "threads": [list(t) for t in self.threads],
            "mounts": [{"path": m.path, "via_pid": m.via_pid} for m in self.mounts],
            "fds": [{"pid": f.pid, "fd": f.fd} for f in self.fds],
            "nsid": self.nsid,
            "held_by": list(self.held_by),
        }


@dataclass(frozen=True, slots=True)
class Listing:
    """The result of :func:`namespaces`."""

    entries: tuple[NsEntry, ...]
    #: ``pid -> reason`` for processes that could not be read.
    unreadable: dict[int, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[NsEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, kind: NsKind, ino: int) -> NsEntry | None:
        """The namespace of this kind and inode, if listed."""
        for e in self.entries:
            if e.kind is kind and e.ino == ino:
                return e
        return None

    def to_dict(self) -> dict[str, Any]:
        """``{"namespaces": [...], "unreadable": {...}}`` (``lsns -J``'s top key)."""
        return {
            "namespaces": [e.to_dict() for e in self.entries],
            "unreadable": {str(k): v for k, v in sorted(self.unreadable.items())},
        }

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as JSON text (exact: names and paths are not escaped)."""
        return json.dumps(self.to_dict(), **kwargs)


class _Acc:
    __slots__ = ("fds", "mounts", "opener", "pids", "threads")

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.threads: list[tuple[int, int]] = []
        self.mounts: list[MountHolder] = []
        self.fds: list[FdHolder] = []
        self.opener: str | None = None


_Key = tuple[NsKind, int]


class _Scan:
    def __init__(self, kinds: tuple[NsKind, ...]) -> None:
        self.kinds = kinds
        self.wanted = frozenset(kinds)
        self.names = [(k, k.proc_name) for k in kinds]
        self.acc: dict[_Key, _Acc] = {}
        self.unreadable: dict[int, str] = {}
        self.dev = nsfs_dev()
        self.mnt_of: dict[int, int] = {}  # pid -> its mount namespace inode

    def get(self, key: _Key, opener: str | None) -> _Acc:
        a = self.acc.get(key)
        if a is None:
            a = self.acc[key] = _Acc()
        if a.opener is None:
            a.opener = opener
        return a

    def deny(self, pid: int, e: OSError) -> None:
        self.unreadable.setdefault(pid, e.strerror or str(e))

    def processes(self, pids: list[int]) -> None:
        # readlink, not stat: "net:[4026531840]" names the namespace without
        # following the link into nsfs, at half the cost of a stat.
        readlink = os.readlink
        for pid in pids:
            base = f"/proc/{pid}/ns/"
            own: dict[NsKind, int] = {}
            for kind, name in self.names:
                path = base + name
                try:
                    ino = _ino(readlink(path), name)
                except OSError as e:
                    if e.errno not in _GONE:
                        self.deny(pid, e)
                    continue
                own[kind] = ino
                self.get((kind, ino), path).pids.append(pid)
            if NsKind.MNT in own:
                self.mnt_of[pid] = own[NsKind.MNT]
            if own and self.wanted & _PER_THREAD:
                self.threads(pid, own)

    def threads(self, pid: int, own: dict[NsKind, int]) -> None:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return
        if len(tids) < 2:
            return
        kinds = [(k, n) for k, n in self.names if k in _PER_THREAD and k in own]
        for name in tids:
            tid = int(name)
            if tid == pid:
                continue
            base = f"/proc/{pid}/task/{tid}/ns/"
            for kind, kname in kinds:
                path = base + kname
                try:
                    ino = _ino(os.readlink(path), kname)
                except OSError:
                    continue
                if ino != own[kind]:
                    self.get((kind, ino), path).threads.append((pid, tid))

    def mounts(self) -> None:
        try:
            mine = os.stat("/proc/thread-self/ns/mnt").st_ino
        except OSError:
            mine = None
        own: set[tuple[bytes, _Key]] = set()
        self._mounts("/proc/thread-self/mountinfo", None, own, record=True)
        others: dict[int, int] = {}
        for pid, ino in self.mnt_of.items():
            if ino != mine:
                others.setdefault(ino, pid)
        if not self.mnt_of and mine is not None:
            # MNT was not scanned: find the other mount namespaces anyway.
            for pid in _pids():
                try:
                    ino = os.stat(f"/proc/{pid}/ns/mnt").st_ino
                except OSError:
                    continue
                if ino != mine:
                    others.setdefault(ino, pid)
        for pid in others.values():
            self._mounts(f"/proc/{pid}/mountinfo", pid, own, record=False)

    def _mounts(
        self, path: str, via: int | None, own: set[tuple[bytes, _Key]], *, record: bool
    ) -> None:
        try:
            found = _nsfs_mounts(path)
        except OSError:
            return
        for m in found:
            root = m.ns_root
            if root is None:
                continue
            kind = _NAMES.get(root[0].decode("ascii", "replace"))
            if kind is None or kind not in self.wanted:
                continue
            key = (kind, root[1])
            if record:
                own.add((m.mount_point, key))
            elif (m.mount_point, key) in own:
                continue  # a copy of one of ours (every unshare -m child has them)
            mp = os.fsdecode(m.mount_point)
            opener = mp if via is None else f"/proc/{via}/root{mp}"
            a = self.get(key, opener)
            entry = MountHolder(mp, via)
            if entry not in a.mounts:
                a.mounts.append(entry)

    def fds(self, pids: list[int]) -> None:
        readlink = os.readlink
        for pid in pids:
            fd_dir = f"/proc/{pid}/fd/"
            try:
                names = os.listdir(fd_dir)
            except OSError as e:
                if e.errno not in _GONE:
                    self.deny(pid, e)
                continue
            for name in names:
                try:
                    link = readlink(fd_dir + name)
                except OSError:
                    continue
                # "net:[4026531840]"; sockets are "socket:[...]", never a kind.
                kind_name, sep, rest = link.partition(":[")
                if not sep:
                    continue
                kind = _NAMES.get(kind_name)
                if kind is None or kind not in self.wanted or not rest.endswith("]"):
                    continue
                try:
                    ino = int(rest[:-1])
                except ValueError:
                    continue
                self.get((kind, ino), fd_dir + name).fds.append(FdHolder(pid, int(name)))

    def nsids(self) -> dict[int, int]:
        from ._nsid import Rtnl

        out: dict[int, int] = {}
        try:
            rtnl = Rtnl()
        except OSError:
            return out
        with rtnl:
            for (kind, ino), a in self.acc.items():
                if kind is not NsKind.NET or a.opener is None:
                    continue
                try:
                    fd = os.open(a.opener, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    if os.fstat(fd).st_ino != ino:
                        continue  # the path now names something else
                    value = rtnl.get(fd)
                except OSError:
                    continue
                finally:
                    os.close(fd)
                if value is not None:
                    out[ino] = value
        return out

    def result(self, nsid: bool) -> list[NsEntry]:
        ids = self.nsids() if nsid and NsKind.NET in self.wanted else {}
        users: dict[int, str] = {}
        about: dict[int, tuple[str | None, str | None]] = {}  # pid -> (user, command)
        out = []
        for (kind, ino), a in self.acc.items():
            pids = tuple(sorted(a.pids))
            pid = pids[0] if pids else None
            user = command = None
            if pid is not None:
                # One process often holds several of them (unshare -muinp).
                known = about.get(pid)
                if known is None:
                    known = about[pid] = (_user(pid, users), _command(pid))
                user, command = known
            out.append(
                NsEntry(
                    kind=kind,
                    ino=ino,
                    dev=self.dev,
                    pids=pids,
                    threads=tuple(sorted(a.threads)),
                    mounts=tuple(sorted(a.mounts, key=lambda m: (m.via_pid or 0, m.path))),
                    fds=tuple(sorted(a.fds, key=lambda f: (f.pid, f.fd))),
                    nsid=ids.get(ino) if kind is NsKind.NET else None,
                    pid=pid,
                    user=user,
                    command=command,
                )
            )
        # lsns's order: by inode.
        out.sort(key=lambda e: (e.ino, ALL_KINDS.index(e.kind)))
        return out


def namespaces(
    kinds: Iterable[NsKind | str] | None = None,
    *,
    mounts: bool = True,
    fds: bool = True,
    nsid: bool = True,
) -> Listing:
    """Every namespace of the given *kinds* (default: all) on the host.

    :param kinds: :class:`~nslib.kinds.NsKind` values or names.
    :param mounts: also look for ``nsfs`` bind mounts (in every mount namespace).
    :param fds: also look at every process's open fds.
    :param nsid: look up each network namespace's nsid (from the caller's
        network namespace).
    :raises InvalidReference: an unknown kind.

    Never raises for processes that vanish during the scan.
    """
    chosen = ALL_KINDS if kinds is None else tuple(dict.fromkeys(NsKind.parse(k) for k in kinds))
    scan = _Scan(tuple(k for k in ALL_KINDS if k in chosen))
    pids = _pids()
    scan.processes(pids)
    if mounts:
        scan.mounts()
    if fds:
        scan.fds(pids)
    return Listing(tuple(scan.result(nsid)), dict(sorted(scan.unreadable.items())))


def _ino(link: str, name: str) -> int:
    # "net:[4026531840]" -> 4026531840
    try:
        return int(link[len(name) + 2 : -1])
    except ValueError:
        raise OSError(errno.EINVAL, f"unexpected namespace link {link!r}") from None


def _nsfs_mounts(path: str) -> list[MountInfo]:
    """The nsfs mounts of a ``mountinfo`` file, through the shared parser.

    Only the lines of nsfs mounts are parsed: a host with hundreds of mount
    namespaces of a thousand mounts each has far more of the others.  Paths
    are escaped in ``mountinfo``, so ``" - nsfs "`` can only be the
    separator followed by the filesystem type.
    """
    with open(path, "rb", buffering=0) as f:
        chunks = []
        while chunk := f.read(1 << 16):
            chunks.append(chunk)
    data = b"".join(chunks)
    if b" - nsfs " not in data:
        return []
    return parse_mountinfo(b"\n".join(ln for ln in data.split(b"\n") if b" - nsfs " in ln))


def _pids() -> list[int]:
    return sorted(int(n) for n in os.listdir("/proc") if n.isdigit())


def _user(pid: int, cache: dict[int, str]) -> str | None:
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    name = cache.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        cache[uid] = name
    return name


def _command(pid: int, limit: int = 4096) -> str | None:
    # As lsns: the command line, or for a kernel thread its name.
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(limit)
    except OSError:
        raw = b""
    if raw:
        return os.fsdecode(raw.rstrip(b"\0").replace(b"\0", b" "))
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return os.fsdecode(f.read().rstrip(b"\n"))
    except OSError:
        return None
