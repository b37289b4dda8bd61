r"""Every network namespace on the host, with what keeps each one alive.

A network namespace lives while anything holds it.  :func:`inventory` looks
at every kind of holder the kernel exposes and deduplicates namespaces by
``(st_dev, st_ino)``:

* threads: ``/proc/<pid>/task/<tid>/ns/net`` for every thread of every
  process (a thread switched into a namespace holds it as much as a whole
  process does; ``ip netns pids`` only looks at the main thread);
* bind mounts: every ``nsfs`` mount of a network namespace in *every*
  mount namespace: the calling thread's (``/proc/thread-self/mountinfo``:
  named namespaces under the run directory, ``/run/docker/netns/*``,
  anywhere), each other one a process or thread is in (one
  ``/proc/<pid>/task/<tid>/mountinfo`` per mount namespace), and mount
  namespaces that no process is in but an fd or a bind mount keeps alive
  (read from a throwaway thread that joins them).  Each mount says which
  mount namespace has it and a process in it.  ``lsns`` misses a
  namespace held only by a mount in another mount namespace;
* open fds: ``/proc/<pid>/fd/*`` of a network namespace, whether opened
  through ``/proc/<pid>/ns/net`` (the link reads ``net:[<ino>]``) or
  through a bind mount (the link reads its path, or ``/`` once the name
  was deleted; these are recognised by nsfs's device and ``NS_GET_NSTYPE``);
* sockets (opt-in, ``sockets=True``): a socket keeps the namespace it was
  created in alive.  The only way to learn which one is ``SIOCGSKNS`` on
  the socket itself, so each socket fd is borrowed with ``pidfd_getfd(2)``
  (needs ptrace rights over the owner), asked, and closed again.  It costs
  a few syscalls per socket on the host, hence opt-in;
* nsid only: a namespace that has an nsid in the calling thread's namespace but
  none of the above was found for (its holder could not be inspected) is
  listed with ``dev == ino == 0`` and :attr:`NamespaceInfo.nsid` set: the
  kernel tells that it is alive, not which inode it is.

Each namespace also carries its names, its nsid as seen from the calling
*thread's* namespace (``RTM_GETNSID`` over a netlink socket made in it, the
view ``ip netns list-id`` gives from there; nsids are per viewing namespace,
so a thread inside ``entered(x)`` sees ``x``'s table), and, when a docker daemon
answers within a short timeout, the containers and microservice labels
that run in it.  Processes that cannot be inspected (``EACCES``, as for
PID 1 in some sandboxes even as root) are listed in
:attr:`Inventory.unreadable`; processes that exit during the scan are
skipped.

Text from the host (paths, command lines, names) is kept exact: bytes that
are not UTF-8 are decoded with ``surrogateescape`` (``os.fsdecode``), so
``os.fsencode`` gives the original bytes back; in :meth:`Inventory.to_json`
they appear as ``\udcXX`` escapes.  Printing them to a terminal is the
caller's business (``nslib ls`` escapes them).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from . import _syscalls as sys_
from ._docker_state import label_of
from ._nsid import Rtnl
from ._procfs import nsfs_dev, read_mountinfo
from .names import DEFAULT_RUN_DIR

__all__ = [
    "ContainerEntry",
    "FdEntry",
    "Inventory",
    "MountEntry",
    "NamespaceInfo",
    "ProcessEntry",
    "inventory",
]

NsId = tuple[int, int]

# Races with exiting processes and threads: skip, never fail.
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENOTDIR)


@dataclass(frozen=True, slots=True)
class ProcessEntry:
    """A process with at least one thread in the namespace."""

    pid: int
    #: The command line (``[comm]`` for kernel threads), shortened.
    command: str
    #: The ids of its threads that are in the namespace.
    threads: tuple[int, ...]
    #: Whether every thread of the process is in it (the usual case).
    all_threads: bool


@dataclass(frozen=True, slots=True)
class MountEntry:
    """An ``nsfs`` bind mount of the namespace."""

    path: str
    #: ``None`` for the caller's mount namespace; otherwise a process in the
    #: mount namespace that has it (reach the path as ``/proc/PID/root/PATH``),
    #: or 0 when no process is in it (an fd or a bind mount keeps it alive).
    via_pid: int | None = None
    #: The inode of the mount namespace that has the mount (``mnt:[N]``).
    mnt_ns: int | None = None


@dataclass(frozen=True, slots=True)
class FdEntry:
    """An open fd that keeps the namespace alive."""

    pid: int
    fd: int
    command: str
    #: ``"ns"``: an open namespace file; ``"socket"``: a socket created there.
    kind: str = "ns"


@dataclass(frozen=True, slots=True)
class ContainerEntry:
    """A docker container running in the namespace."""

    id: str
    name: str
    pid: int
    #: The microservice label, if any, by the tracker's rule: ``MICROSERVICE_LABEL``
    #: in its environment, else the configured docker label (an empty value is none).
    label: str | None
    #: docker's ``HostConfig.NetworkMode`` (``host`` and ``container:X`` share).
    network_mode: str


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    """One network namespace and everything known about it."""

    dev: int
    ino: int
    #: Names under the run directory (``ip netns`` names).
    names: tuple[str, ...] = ()
    #: Every nsfs bind mount of it, the named ones included.
    mounts: tuple[MountEntry, ...] = ()
    #: Its nsid in the calling thread's namespace (what ``ip netns list-id``
    #: shows there), if one is assigned; every namespace is asked, named or not.
    nsid: int | None = None
    processes: tuple[ProcessEntry, ...] = ()
    fds: tuple[FdEntry, ...] = ()
    containers: tuple[ContainerEntry, ...] = ()
    #: Whether it is the namespace of the thread that took the inventory.
    current: bool = False

    @property
    def ns_id(self) -> NsId:
        """``(st_dev, st_ino)``, as :attr:`NsHandle.ns_id <nslib.NsHandle.ns_id>`."""
        return (self.dev, self.ino)

    @property
    def pids(self) -> tuple[int, ...]:
        """Processes with at least one thread inside."""
        return tuple(p.pid for p in self.processes)

    @property
    def thread_count(self) -> int:
        """How many threads are inside."""
        return sum(len(p.threads) for p in self.processes)

    @property
    def held_by(self) -> tuple[str, ...]:
        """What keeps it alive, most durable first: ``mounts``, ``processes``, ``fds``, ``sockets``.

        ``("nsid",)`` for a namespace known only by its nsid (``ino == 0``).
        Empty only for a namespace the scan reached some other way (a
        container whose process could not be inspected).
        """
        kinds = []
        if self.mounts:
            kinds.append("mounts")
        if self.processes:
            kinds.append("processes")
        if any(f.kind == "ns" for f in self.fds):
            kinds.append("fds")
        if any(f.kind == "socket" for f in self.fds):
            kinds.append("sockets")
        if not kinds and self.ino == 0 and self.nsid is not None:
            kinds.append("nsid")
        return tuple(kinds)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (derived fields included)."""
        d = asdict(self)
        d["ns_id"] = f"{self.dev}:{self.ino}"
        d["pids"] = list(self.pids)
        d["thread_count"] = self.thread_count
        d["held_by"] = list(self.held_by)
        return d


@dataclass(frozen=True, slots=True)
class Inventory:
    """The result of :func:`inventory`."""

    namespaces: tuple[NamespaceInfo, ...]
    run_dir: str
    #: ``pid -> reason`` for processes whose threads or fds could not be read.
    unreadable: dict[int, str] = field(default_factory=dict)
    #: ``"ok"``, ``"not asked"``, or why the docker daemon could not be used.
    docker: str = "not asked"
    #: Whether socket holders were looked for (``sockets=True``).
    sockets: bool = False

    def get(self, ns_id: NsId) -> NamespaceInfo | None:
        """The namespace with this ``(st_dev, st_ino)``, if listed."""
        for ns in self.namespaces:
            if ns.ns_id == ns_id:
                return ns
        return None

    def named(self, name: str) -> NamespaceInfo | None:
        """The namespace bound to *name* under the run directory, if any."""
        for ns in self.namespaces:
            if name in ns.names:
                return ns
        return None

    def __iter__(self) -> Iterator[NamespaceInfo]:
        return iter(self.namespaces)

    def __len__(self) -> int:
        return len(self.namespaces)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "run_dir": self.run_dir,
            "docker": self.docker,
            "sockets": self.sockets,
            "unreadable": {str(k): v for k, v in sorted(self.unreadable.items())},
            "namespaces": [ns.to_dict() for ns in self.namespaces],
        }

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), **kwargs)


# -- the scan ------------------------------------------------------------------


class _Acc:
    """Mutable per-namespace accumulator."""

    __slots__ = ("asked", "containers", "fds", "mounts", "names", "nsid", "opener", "threads")

    def __init__(self) -> None:
        self.threads: dict[int, list[int]] = {}
        self.mounts: list[MountEntry] = []
        self.names: list[str] = []
        self.fds: list[FdEntry] = []
        self.containers: list[ContainerEntry] = []
        self.opener: str | None = None  # a path that opens it, for the nsid query
        # Its nsid, once asked with an fd in hand (namespaces no path opens:
        # held by a socket, or by a mount in a mount namespace no process is in).
        self.nsid: int | None = None
        self.asked = False


class _Scan:
    def __init__(self, run_dir: str, rtnl: Rtnl | None) -> None:
        self.run_dir = os.path.realpath(run_dir)
        #: A netlink socket in the calling thread's namespace, for nsids (or None).
        self.rtnl = rtnl
        self.ns: dict[NsId, _Acc] = {}
        self.unreadable: dict[int, str] = {}
        self.all_tids: dict[int, int] = {}
        self.commands: dict[int, str] = {}
        self.leader_ns: dict[int, NsId] = {}
        #: mount namespace inode -> a ``/proc/<pid>/task/<tid>`` in it, and that pid.
        self.mnt_spaces: dict[int, tuple[str, int]] = {}
        #: mount namespaces no process is in: inode -> a path that opens it.
        self.mnt_orphans: dict[int, str] = {}

    def acc(self, key: NsId, opener: str | None) -> _Acc:
        a = self.ns.get(key)
        if a is None:
            a = self.ns[key] = _Acc()
        if a.opener is None:
            a.opener = opener
        return a

    def ask(self, key: NsId, fd: int) -> None:
        """Look up the nsid of namespace *key* now, through *fd* (open on it)."""
        a = self.ns.get(key)
        if self.rtnl is None or a is None or a.asked:
            return
        with contextlib.suppress(OSError):
            a.nsid = self.rtnl.get(fd)
            a.asked = True

    def deny(self, pid: int, e: OSError) -> None:
        self.unreadable.setdefault(pid, e.strerror or str(e))

    def command(self, pid: int) -> str:
        cmd = self.commands.get(pid)
        if cmd is None:
            cmd = self.commands[pid] = _command(pid)
        return cmd

    # Threads ------------------------------------------------------------------

    def threads(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError as e:
                if e.errno not in _GONE:
                    self.deny(pid, e)
                continue
            seen = 0
            for name in tids:
                task = f"/proc/{pid}/task/{name}"
                path = f"{task}/ns/net"
                try:
                    st = os.stat(path)
                except OSError as e:
                    if e.errno not in _GONE:
                        self.deny(pid, e)
                    continue
                key = (st.st_dev, st.st_ino)
                tid = int(name)
                self.acc(key, path).threads.setdefault(pid, []).append(tid)
                if tid == pid:
                    self.leader_ns[pid] = key
                seen += 1
                # Mount namespaces are per thread too (a thread that unshared
                # CLONE_FS|CLONE_NEWNS, as `ip netns exec` helpers do).
                try:
                    mnt = os.stat(f"{task}/ns/mnt").st_ino
                except OSError:
                    continue
                self.mnt_spaces.setdefault(mnt, (task, pid))
            self.all_tids[pid] = seen

    # Mounts -------------------------------------------------------------------

    def mounts(self) -> None:
        # thread-self, not self: the mount namespace is per thread, and the
        # caller's own is this thread's (/proc/self is the main thread's).
        try:
            mine: int | None = os.stat("/proc/thread-self/ns/mnt").st_ino
        except OSError:
            mine = None
        own: set[tuple[bytes, NsId]] = set()
        try:
            found = _nsfs_mounts("/proc/thread-self/mountinfo")
        except OSError:
            found = []
        for mp, key, kind in found:
            if kind == b"net":
                own.add((mp, key))
                path = os.fsdecode(mp)
                self._mount(key, MountEntry(path, None, mine), path)
            elif kind == b"mnt":
                self.mnt_orphans.setdefault(key[1], os.fsdecode(mp))
        # Every other mount namespace once.  Their copies of our mounts (every
        # `ip netns exec` child has them) are not news.
        for ino, (task, pid) in self.mnt_spaces.items():
            if ino == mine:
                continue
            try:
                found = _nsfs_mounts(f"{task}/mountinfo")
            except OSError as e:
                if e.errno not in _GONE:
                    self.deny(pid, e)
                continue
            for mp, key, kind in found:
                if kind == b"mnt":
                    self.mnt_orphans.setdefault(key[1], f"/proc/{pid}/root" + os.fsdecode(mp))
                elif (mp, key) not in own:
                    path = os.fsdecode(mp)
                    self._mount(key, MountEntry(path, pid, ino), f"/proc/{pid}/root{path}")

    def orphan_mounts(self) -> None:
        """Mount namespaces that no process is in, kept alive by fds or bind mounts."""
        seen = set(self.mnt_spaces)
        todo = [(ino, p) for ino, p in self.mnt_orphans.items() if ino not in seen]
        while todo:
            ino, path = todo.pop()
            seen.add(ino)
            found, ids = _foreign_mountinfo(path, ino, self.rtnl)
            for mp, key, kind in found:
                if kind == b"mnt":
                    if key[1] not in seen:
                        todo.append((key[1], ""))  # reachable only from inside: skip
                elif kind == b"net":
                    self._mount(key, MountEntry(os.fsdecode(mp), 0, ino), None)
                    a = self.ns[key]
                    if key in ids and not a.asked:
                        a.nsid, a.asked = ids[key], True

    def _mount(self, key: NsId, entry: MountEntry, opener: str | None) -> None:
        a = self.acc(key, opener)
        if entry in a.mounts:
            return
        a.mounts.append(entry)
        if entry.via_pid is None and os.path.dirname(entry.path) == self.run_dir:
            a.names.append(os.path.basename(entry.path))

    # Fds and sockets ----------------------------------------------------------

    def fds(self, pids: list[int], sockets: bool) -> None:
        me = os.getpid()
        nsfs = nsfs_dev()
        for pid in pids:
            fd_dir = f"/proc/{pid}/fd"
            try:
                names = os.listdir(fd_dir)
            except OSError as e:
                if e.errno not in _GONE:
                    self.deny(pid, e)
                continue
            socks: list[int] = []
            for name in names:
                path = f"{fd_dir}/{name}"
                try:
                    link = os.readlink(path)
                except OSError:
                    continue
                if link.startswith("socket:["):
                    if sockets:
                        socks.append(int(name))
                    continue
                if link.startswith("mnt:["):
                    self.mnt_orphans.setdefault(int(link[5:-1]), path)
                    continue
                if not link.startswith(("net:[", "/")):
                    continue  # pipe:[..], anon_inode:.., other namespace kinds
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if st.st_dev != nsfs:
                    continue
                if not link.startswith("net:[") and not _is_netns(path, st):
                    # Opened through a bind mount: the link names the mount
                    # point (or "/" once it was detached), not the kind.
                    continue
                if pid == me and not _still_ns(int(name), st):
                    continue  # the fd was closed and reused mid-scan
                key = (st.st_dev, st.st_ino)
                self.acc(key, path).fds.append(FdEntry(pid, int(name), self.command(pid)))
            if socks:
                self._sockets(pid, socks)

    def _sockets(self, pid: int, fds: list[int]) -> None:
        try:
            pidfd = _pidfd_open(pid)
        except OSError as e:
            if e.errno not in _GONE:
                self.deny(pid, e)
            return
        try:
            for fd in fds:
                try:
                    key = _socket_ns(pidfd, fd, self)
                except OSError as e:
                    if e.errno in (errno.EPERM, errno.EACCES):
                        self.deny(pid, e)
                        return
                    continue  # closed meanwhile, or not a socket SIOCGSKNS knows
                own = self.leader_ns.get(pid)
                if key == own:
                    continue  # a socket in the process's own namespace holds nothing new
                a = self.acc(key, None)
                a.fds.append(FdEntry(pid, fd, self.command(pid), "socket"))
        finally:
            os.close(pidfd)

    # Docker -------------------------------------------------------------------

    def docker(self, timeout: float, label_env: str, label_key: str | None) -> str:
        found, status = _containers(timeout, label_env, label_key)
        for c in found:
            key = self.leader_ns.get(c.pid)
            opener = f"/proc/{c.pid}/ns/net"
            if key is None:
                try:
                    st = os.stat(opener)
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
            self.acc(key, opener).containers.append(c)
        return status

    # Nsids --------------------------------------------------------------------

    def nsids(self) -> tuple[dict[NsId, int], set[int]]:
        """``(nsid of each namespace that has one, every nsid assigned)``.

        Both are the calling thread's view: its namespace's nsid table,
        through a netlink socket made in it (``RTM_GETNSID`` per namespace,
        as ``ip netns list-id`` does for named ones, and one dump).
        """
        rtnl = self.rtnl
        if rtnl is None:
            return {}, set()
        out: dict[NsId, int] = {}
        for key, a in self.ns.items():
            if not a.asked and a.opener is not None:
                got = _nsid_at(rtnl, a.opener, key)
                if got:
                    a.nsid, a.asked = got[key], True
            if a.nsid is not None:
                out[key] = a.nsid
        try:
            every = set(rtnl.dump())
        except OSError:
            every = set()
        return out, every

    # Result -------------------------------------------------------------------

    def result(self, nsid: bool) -> list[NamespaceInfo]:
        try:
            st = os.stat("/proc/thread-self/ns/net")
            current: NsId | None = (st.st_dev, st.st_ino)
        except OSError:
            current = None
        ids, every = self.nsids() if nsid else ({}, set())
        out = []
        for key, a in self.ns.items():
            procs = tuple(
                ProcessEntry(
                    pid,
                    self.command(pid),
                    tuple(sorted(tids)),
                    len(tids) == self.all_tids.get(pid, len(tids)),
                )
                for pid, tids in sorted(a.threads.items())
            )
            out.append(
                NamespaceInfo(
                    dev=key[0],
                    ino=key[1],
                    names=tuple(sorted(a.names)),
                    mounts=tuple(sorted(a.mounts, key=lambda m: (m.via_pid or 0, m.path))),
                    nsid=ids.get(key),
                    processes=procs,
                    fds=tuple(sorted(a.fds, key=lambda f: (f.pid, f.fd))),
                    containers=tuple(sorted(a.containers, key=lambda c: c.name)),
                    current=key == current,
                )
            )
        # Alive (an nsid dies with its namespace) but held by nothing we could
        # see: a process we may not inspect, say.  The kernel gives no inode.
        for n in sorted(every - set(ids.values())):
            out.append(NamespaceInfo(dev=0, ino=0, nsid=n))
        # The caller's own namespace first, then named ones, then the rest.
        out.sort(key=lambda n: (not n.current, not n.names, n.names, n.ino))
        return out


def inventory(
    *,
    run_dir: str | None = None,
    docker: bool = True,
    docker_timeout: float = 2.0,
    label_env: str = "MICROSERVICE_LABEL",
    label_key: str | None = None,
    sockets: bool = False,
    nsid: bool = True,
) -> Inventory:
    """List every network namespace on the host; see the module docstring.

    :param run_dir: where named namespaces live (default ``/run/netns``);
        nsfs mounts directly in it give :attr:`NamespaceInfo.names`.
    :param docker: ask the docker daemon (``DOCKER_HOST``) for containers.
        An unreachable daemon is reported in :attr:`Inventory.docker`, never
        raised.  Every request to it shares one deadline, so asking costs at
        most about *docker_timeout* seconds in all; a daemon too slow for it
        yields the containers inspected in time and a ``"too slow: ..."``
        status.
    :param label_env: the environment variable naming a microservice.
    :param label_key: a docker label naming a microservice, used when the
        environment variable is absent or empty; the same rule as
        :class:`~nslib.MicroserviceTracker` (the last ``label_env`` entry
        wins, an empty value is no label).
    :param sockets: also find namespaces held only by sockets (slower; see
        the module docstring).
    :param nsid: look up each namespace's nsid in the calling thread's
        namespace: a namespace reached by a path (a name, a mount, a thread,
        an fd) through that path, one held only by a socket or by a mount in
        a mount namespace no process is in through the fd the scan had in
        hand.  Nsids nobody could be matched to are listed as rows of their
        own (``held_by == ("nsid",)``).

    Needs root to see other users' processes; without it the scan is
    partial and :attr:`Inventory.unreadable` says where.  Never raises for
    processes that vanish during the scan.
    """
    rtnl = None
    if nsid:
        with contextlib.suppress(OSError):  # no rtnetlink here: no nsids
            rtnl = Rtnl()  # in the calling thread's namespace: the view nsids are from
    try:
        scan = _Scan(run_dir or DEFAULT_RUN_DIR, rtnl)
        pids = _pids()
        scan.threads(pids)
        scan.fds(pids, sockets)  # also finds mount namespaces kept only by an fd
        scan.mounts()
        scan.orphan_mounts()
        status = scan.docker(docker_timeout, label_env, label_key) if docker else "not asked"
        return Inventory(
            namespaces=tuple(scan.result(nsid)),
            run_dir=run_dir or DEFAULT_RUN_DIR,
            unreadable=dict(sorted(scan.unreadable.items())),
            docker=status,
            sockets=sockets,
        )
    finally:
        if rtnl is not None:
            rtnl.close()


# -- helpers -------------------------------------------------------------------


def _pids() -> list[int]:
    return sorted(int(n) for n in os.listdir("/proc") if n.isdigit())


def _command(pid: int, limit: int = 120) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(4096)
    except OSError:
        raw = b""
    if raw:
        text = os.fsdecode(raw.rstrip(b"\0").replace(b"\0", b" "))
    else:  # a kernel thread or a zombie: no command line
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                text = "[" + os.fsdecode(f.read().strip()) + "]"
        except OSError:
            text = "?"
    return text if len(text) <= limit else text[: limit - 3] + "..."


_NS_ROOT = re.compile(rb"([a-z]+):\[([0-9]+)\]")


def _nsfs_mounts(path: str) -> list[tuple[bytes, NsId, bytes]]:
    """``(mount point, (dev, ino), kind)`` of every net or mnt namespace nsfs mount."""
    found = []
    for m in read_mountinfo(path):
        if m.fstype != b"nsfs":
            continue
        # The root inside nsfs is "net:[ino]" (older kernels: "/net:[ino]").
        r = _NS_ROOT.fullmatch(m.root.lstrip(b"/"))
        if r is None or r.group(1) not in (b"net", b"mnt"):
            continue
        found.append((m.mount_point, (os.makedev(m.major, m.minor), int(r.group(2))), r.group(1)))
    return found


def _foreign_mountinfo(
    path: str, ino: int, rtnl: Rtnl | None
) -> tuple[list[tuple[bytes, NsId, bytes]], dict[NsId, int | None]]:
    """:func:`_nsfs_mounts` of a mount namespace no process is in, via *path*.

    Read from a throwaway thread that unshares its filesystem context and
    joins that mount namespace (the caller never moves); nothing if it
    cannot be opened or joined.  Only that thread can open the network
    namespaces mounted there, so it also asks *rtnl* (a socket in the
    caller's namespace, which any thread may use) for their nsids: the
    second item maps each one it could ask to its nsid.
    """
    out: list[list[tuple[bytes, NsId, bytes]]] = []
    ids: dict[NsId, int | None] = {}
    if not path:
        return [], ids

    def look() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if os.fstat(fd).st_ino != ino:
                return  # the path names something else now
            sys_.unshare(_CLONE_FS, "a private filesystem context for the inventory")
            sys_.setns(fd, sys_.CLONE_NEWNS, f"mount namespace mnt:[{ino}]")
            found = _nsfs_mounts("/proc/thread-self/mountinfo")
            out.append(found)
            if rtnl is not None:
                for mp, key, kind in found:
                    if kind == b"net" and key not in ids:
                        ids.update(_nsid_at(rtnl, mp, key))
        except OSError:
            return
        finally:
            os.close(fd)

    t = threading.Thread(target=look, name="nslib-inventory-mnt", daemon=True)
    t.start()
    t.join()
    return (out[0] if out else []), ids


def _nsid_at(rtnl: Rtnl, path: str | bytes, key: NsId) -> dict[NsId, int | None]:
    """``{key: nsid}`` if *path* opens namespace *key* and the kernel answers, else ``{}``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != key:
            return {}  # the path now names something else (PID reuse, a new mount)
        return {key: rtnl.get(fd)}
    except OSError:
        return {}
    finally:
        os.close(fd)


_CLONE_FS = 0x00000200
_NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3)


def _is_netns(path: str, st: os.stat_result) -> bool:
    """Whether *path* (an nsfs file, e.g. ``/proc/PID/fd/N``) is a network namespace."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == sys_.CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def _still_ns(fd: int, st: os.stat_result) -> bool:
    try:
        now = os.fstat(fd)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


_SIOCGSKNS = 0x894C


def _pidfd_open(pid: int) -> int:
    return sys_.pidfd_open(pid)


def _pidfd_getfd(pidfd: int, fd: int) -> int:
    return sys_.pidfd_getfd(pidfd, fd)


def _socket_ns(pidfd: int, fd: int, scan: _Scan) -> NsId:
    """The namespace a socket of another process was created in.

    No path opens a namespace held only by a socket, so its nsid is asked
    for here, while the fd ``SIOCGSKNS`` gave is open.
    """
    dup = _pidfd_getfd(pidfd, fd)
    try:
        if not stat.S_ISSOCK(os.fstat(dup).st_mode):
            raise OSError(errno.ENOTSOCK, "not a socket any more")
        nsfd = fcntl.ioctl(dup, _SIOCGSKNS)
        try:
            st = os.fstat(nsfd)
            key = (st.st_dev, st.st_ino)
            if key not in scan.ns and scan.rtnl is not None:  # else asked through a path
                scan.acc(key, None)
                scan.ask(key, nsfd)
        finally:
            os.close(nsfd)
    finally:
        os.close(dup)
    return key


def _containers(
    timeout: float, label_env: str, label_key: str | None
) -> tuple[list[ContainerEntry], str]:
    """Running containers and ``"ok"``, or what could be had and why not; never raises.

    The whole exchange (the client's version check, the list, one inspect
    per container) shares one deadline of *timeout* seconds: docker-py
    reads ``api.timeout`` at every request, so each one is given only what
    is left.  (``containers.list()`` would inspect every container with a
    full *timeout* of its own.)
    """
    try:
        import docker
        import docker.errors
        import requests.exceptions
    except ImportError:
        return [], "docker SDK not installed"
    deadline = time.monotonic() + timeout
    try:
        client = docker.from_env(timeout=timeout)
    except Exception as e:
        return [], f"not reachable: {_short(e)}"
    api = client.api
    found: list[ContainerEntry] = []
    listed: list[dict[str, Any]] | None = None
    answered = 0
    try:
        api.timeout = deadline - time.monotonic()
        if api.timeout <= 0:
            raise TimeoutError
        listed = api.containers()  # running ones, one request
        for entry in listed:
            api.timeout = deadline - time.monotonic()
            if api.timeout <= 0:
                raise TimeoutError
            try:
                attrs = api.inspect_container(entry["Id"])
            except docker.errors.NotFound:
                answered += 1
                continue  # removed since the list
            answered += 1
            pid = int((attrs.get("State") or {}).get("Pid") or 0)
            if pid <= 0:
                continue
            found.append(
                ContainerEntry(
                    id=str(attrs["Id"]),
                    name=(attrs.get("Name") or "").lstrip("/"),
                    pid=pid,
                    # The tracker's own rule, so `nslib ls` and `nslib ms ls` agree.
                    label=label_of(attrs, label_env, label_key),
                    network_mode=(attrs.get("HostConfig") or {}).get("NetworkMode") or "",
                )
            )
        return found, "ok"
    except Exception as e:
        timed_out = isinstance(e, TimeoutError | requests.exceptions.Timeout)
        if not timed_out and time.monotonic() < deadline:
            return found, f"not reachable: {_short(e)}"
        if listed is None:
            return found, f"too slow: no container list within {timeout:g} s"
        return found, (
            f"too slow: {len(listed) - answered} of {len(listed)} running containers "
            f"not inspected within {timeout:g} s"
        )
    finally:
        client.close()


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."
