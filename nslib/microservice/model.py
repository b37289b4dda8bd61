"""What the microservice tracker reports, and how a microservice's namespace is opened.

:class:`Microservice` is one run of a labelled container;
:meth:`Microservice.open_namespace` opens its network namespace without
ever handing out another process's (a pidfd, or a ``/proc/<pid>``
directory fd, and a cgroup check).  :class:`MicroserviceEvent` and
:class:`TrackerHealth` are what :class:`~nslib.microservice.MicroserviceTracker`
delivers and reports.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import select
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from .. import _syscalls as sys_
from .._docker_state import EventKind
from ..errors import NamespaceNotFound, SharedNamespaceError, UnavailableMicroserviceError
from ..handle import NsHandle
from .sources.base import CONTAINERD_ID, HEX_ID

__all__ = ["Microservice", "MicroserviceEvent", "TrackerHealth"]


def _stat_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


# The fallback for the host's namespace (see _host_ns_id): the process's own
# (its main thread's) namespace when this module was first imported, i.e.
# before the program had any chance to switch its main thread elsewhere.
_HOME_NS_AT_IMPORT = _stat_id("/proc/self/ns/net")


def _host_ns_id() -> tuple[int, int] | None:
    """``(dev, ino)`` of the host's network namespace, as well as can be known.

    PID 1's namespace when it can be read (in the host's PID namespace, that
    is the host's).  PID 1's namespaces may be unreadable even to root (some
    sandboxes); then the process's own namespace as captured at import, which
    is right for a tracker running on the host network as documented, and
    unaffected by any thread entering a namespace later.  Never the calling
    thread's or the main thread's current namespace: either may be a
    container's at the time of the call.
    """
    return _stat_id("/proc/1/ns/net") or _HOME_NS_AT_IMPORT


def _ns_to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).replace(
        microsecond=(ns % 1_000_000_000) // 1000
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Microservice:
    """One running container holding a microservice label (one *run* of it).

    A restarted container keeps its ``container_id`` but gets a new ``pid``,
    ``started_at_ns`` and namespace, so a ``Microservice`` is stale after a
    restart; :meth:`open_namespace` notices and refuses.

    ``network_mode`` is docker's ``HostConfig.NetworkMode``: ``"none"``,
    ``"default"``/``"bridge"`` or a network name mean the container has a
    namespace of its own.  ``"host"`` means its namespace *is* the host's,
    and ``"container:<id>"`` means it shares another container's; see
    :meth:`open_namespace` for what nslib does then.
    """

    label: str
    container_id: str
    name: str
    pid: int
    created_ns: int
    """``Created`` in nanoseconds since the epoch (full precision)."""
    started_at_ns: int
    """When this run started, in nanoseconds since the epoch: docker's
    ``State.StartedAt``; for podman and containerd the process's own start
    time (to the clock tick), which a start can be answered with without
    asking the runtime."""
    network_mode: str = "default"
    source: str = "docker"
    """The runtime it comes from: ``docker``, ``podman`` or ``containerd:<namespace>``."""
    pod: str | None = None
    """The pod it belongs to (podman pod ID, or ``<namespace>/<name>`` of a Kubernetes pod)."""

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"label must be a non-empty str, not {self.label!r}")
        id_re = CONTAINERD_ID if self.source.startswith("containerd") else HEX_ID
        if not isinstance(self.container_id, str) or not id_re.fullmatch(self.container_id):
            raise ValueError(f"container_id must be a container ID, not {self.container_id!r}")
        if isinstance(self.pid, bool) or not isinstance(self.pid, int) or self.pid <= 0:
            raise ValueError(f"pid must be a positive int, not {self.pid!r}")

    @property
    def created(self) -> datetime:
        """``Created`` as an aware UTC datetime (microseconds; see ``created_ns``)."""
        return _ns_to_datetime(self.created_ns)

    @property
    def started_at(self) -> datetime:
        """``StartedAt`` as an aware UTC datetime (see ``started_at_ns``)."""
        return _ns_to_datetime(self.started_at_ns)

    @property
    def shares_network(self) -> bool:
        """True for ``--network host`` and ``--network container:X``."""
        return self.network_mode == "host" or self.network_mode.startswith("container:")

    @property
    def network_container(self) -> str | None:
        """For ``--network container:X``, the ID (or name) of X; else None."""
        if self.network_mode.startswith("container:"):
            return self.network_mode.partition(":")[2]
        return None

    def open_namespace(self, *, allow_shared: bool = False) -> NsHandle:
        """Open this container's network namespace; never someone else's.

        The process is pinned by a pidfd; its ``cgroup`` must name the
        container, and the namespace comes from the pidfd itself
        (``ioctl(PIDFD_GET_NET_NAMESPACE)``, Linux 6.11+), so a PID reused
        at any point can never hand out another process's namespace.  On
        older kernels the process is pinned by a ``/proc/<pid>`` directory
        fd instead, and ``cgroup`` and ``ns/net`` are read through it (the
        fd gives ESRCH once the process exits).

        Shared namespaces:

        * ``--network host``: the namespace is the host's, and configuring
          "the microservice's namespace" would silently configure the host,
          so this raises unless *allow_shared* is true.
        * ``--network container:X``: the namespace is X's, which is where the
          microservice's traffic lives; it is returned (see
          :attr:`shares_network`).
        * As a last guard, the host's namespace is refused unless
          *allow_shared* (e.g. ``container:X`` with X on the host network).
          "The host's" is PID 1's namespace, or, where that cannot be read,
          this process's own as it was when :mod:`nslib.microservice` was
          first imported; what any thread has entered since does not matter.

        The check needs the container's ID in ``/proc/<pid>/cgroup`` as this
        process sees it (cgroupfs ``/…/<id>`` and systemd ``docker-<id>.scope``
        both qualify); a tracker inside its own cgroup namespace may not see
        it, and then this refuses.

        :raises SharedNamespaceError: the namespace is the host's and
            *allow_shared* is false (an :class:`UnavailableMicroserviceError`).
        :raises UnavailableMicroserviceError: the process is gone, or belongs
            to another container or to none (a reused PID).
        :raises OSError: any other failure (e.g. ``PermissionError``).
        """
        what = f"microservice {self.label!r} (container {self.container_id[:12]}, pid {self.pid})"
        if self.network_mode == "host" and not allow_shared:
            raise SharedNamespaceError(
                f"{what} runs with --network host: its namespace is the host's; "
                "pass allow_shared=True to open it anyway"
            )
        fd = _netns_by_pidfd(self.pid, self.container_id, what)
        if fd is None:
            fd = _netns_by_proc(self.pid, self.container_id, what)
        handle = NsHandle._adopt(fd, what)
        if not allow_shared and self.network_mode != "host":
            try:
                # The host's namespace, not /proc/self's: that is the main
                # thread's *current* one, which may be a container's (the main
                # thread inside nslib.entered()), which would wrongly refuse
                # that container and let the host's through.
                same = handle.ns_id == _host_ns_id()
            except BaseException:
                handle.close()
                raise
            if same:
                handle.close()
                raise SharedNamespaceError(
                    f"{what}: its namespace is the host's (shared network, "
                    f"mode {self.network_mode!r}); pass allow_shared=True to open it anyway"
                )
        return handle


# linux/pidfd.h (6.11+): PIDFD_GET_NET_NAMESPACE = _IO(PIDFS_IOCTL_MAGIC 0xFF, 4).
# Debian 12's kernel headers (6.1) do not have it; the tests check that it
# returns exactly /proc/<pid>/ns/net.
PIDFD_GET_NET_NAMESPACE: Final = 0xFF04
_pidfd_ns_works = True  # cleared for good on a kernel without the ioctl


_AT_FDCWD: Final = -100


def _readable(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


def _exited(what: str) -> UnavailableMicroserviceError:
    return UnavailableMicroserviceError(f"{what}: the process has exited")


def _netns_by_pidfd(pid: int, container_id: str, what: str) -> int | None:
    """The namespace fd via a checked pidfd, or None where pidfds cannot do it."""
    global _pidfd_ns_works
    if not _pidfd_ns_works:
        return None
    try:
        pidfd = sys_.pidfd_open(pid)
    except NamespaceNotFound:
        raise _exited(what) from None
    except OSError:
        return None  # no pidfds here (an old kernel, a seccomp filter)
    try:
        try:
            cgroup = _read_at(_AT_FDCWD, f"/proc/{pid}/cgroup")
        except (FileNotFoundError, ProcessLookupError):
            raise _exited(what) from None
        # The pidfd is still not readable: the process read above was the
        # pinned one, not a later holder of the PID.
        if _readable(pidfd):
            raise _exited(what)
        if not names_container(cgroup, container_id):
            raise UnavailableMicroserviceError(
                f"{what}: process {pid} is not in the container's cgroup "
                "(the container stopped and its PID was reused?)"
            )
        try:
            fd: int = fcntl.ioctl(pidfd, PIDFD_GET_NET_NAMESPACE)
        except ProcessLookupError:
            raise _exited(what) from None
        except OSError as e:
            if e.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                _pidfd_ns_works = False  # before 6.11: /proc it is
                return None
            raise
        return fd
    finally:
        os.close(pidfd)


def _netns_by_proc(pid: int, container_id: str, what: str) -> int:
    """The namespace fd through a ``/proc/<pid>`` directory fd (kernels before 6.11)."""
    try:
        dfd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        raise _exited(what) from None
    try:
        try:
            cgroup = _read_at(dfd, "cgroup")
        except (FileNotFoundError, ProcessLookupError):
            raise _exited(what) from None
        if not names_container(cgroup, container_id):
            raise UnavailableMicroserviceError(
                f"{what}: process {pid} is not in the container's cgroup "
                "(the container stopped and its PID was reused?)"
            )
        try:
            return sys_.open_netns(b"ns/net", what, dirfd=dfd)
        except NamespaceNotFound:
            raise _exited(what) from None
    finally:
        os.close(dfd)


def _read_at(dfd: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=None if dfd == _AT_FDCWD else dfd)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


# The runtimes' cgroup names for a container: "<id>" (cgroupfs: docker,
# containerd's ctr, Kubernetes), "<runtime>-<id>.scope" (systemd driver),
# "libpod-<id>" (podman with cgroupfs).
_CGROUP_PREFIXES = r"(?:docker-|libpod-|cri-containerd-|crio-|containerd-)?"


def names_container(cgroup: str, container_id: str) -> bool:
    # A whole path component must name the ID, never a part of one (a
    # containerd ID "web" must not match the cgroup of a container "x-web").
    pat = re.compile(rf"{_CGROUP_PREFIXES}{re.escape(container_id)}(?:\.scope)?")
    for line in cgroup.splitlines():
        path = line.split(":", 2)[-1]
        if any(pat.fullmatch(part) for part in path.split("/")):
            return True
    return False


@dataclass(frozen=True, slots=True)
class MicroserviceEvent:
    """A change of a label, delivered to :meth:`MicroserviceTracker.subscribe` callbacks.

    ``microservice`` is the new holder (STARTED, RESTARTED, CONFLICT) or the
    one that stopped (STOPPED).  For CONFLICT, ``claimants`` lists every
    running claimant, winner first.  ``daemon_time_ns`` is the ``timeNano``
    of the daemon event whose processing found the change, or None when a
    resync found it.
    """

    kind: EventKind
    label: str
    microservice: Microservice
    claimants: tuple[Microservice, ...] = ()
    daemon_time_ns: int | None = None


@dataclass(frozen=True, slots=True)
class TrackerHealth:
    """A snapshot of :meth:`MicroserviceTracker.health`."""

    started: bool
    stopped: bool
    connected: bool
    """An event stream is open."""
    in_sync: bool
    """Connected, and the resync after the last (re)connection finished."""
    synced_once: bool
    last_error: str | None
    """The most recent problem, kept after recovery (see ``last_error_time``)."""
    last_error_time: float | None
    reconnects: int
    """Successful subscriptions after the first."""
    last_event_time: float | None
    """``timeNano`` (as Unix seconds) of the newest daemon event received."""
    events_received: int
    duplicates_dropped: int
    resyncs: int
    callback_errors: int
    """Exceptions raised by callbacks (each logged, none stops delivery)."""
    process_exits: int = 0
    """Stops seen first through a container process's pidfd (before any daemon event)."""
    starts_without_inspect: int = 0
    """Starts the source answered itself (``Source.started``) instead of an inspect."""


def runs_in_container(pid: int, container_id: str) -> bool:
    """Process *pid* runs, and its cgroup (as this process sees it) names the container."""
    try:
        cgroup = _read_at(_AT_FDCWD, f"/proc/{pid}/cgroup")
    except OSError:
        return False
    return names_container(cgroup, container_id)
