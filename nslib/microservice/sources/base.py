"""What the microservice tracker needs from a container runtime.

A :class:`Source` turns one runtime (docker, podman, containerd) into three
operations: subscribe to its container events, list what runs, and look at
one container.  The tracker does the rest (threads, replay, resync, the
label table) identically for every runtime, so STARTED, RESTARTED, STOPPED
and CONFLICT mean the same whatever the source.
"""

from __future__ import annotations

import abc
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ContainerState",
    "EventStream",
    "Source",
    "SourceEvent",
    "SourceNotFound",
    "SourceUnavailable",
    "process_start_ns",
]

HEX_ID: Final = re.compile(r"[0-9a-f]{12,64}")
"""Docker and podman container IDs (full or short)."""

CONTAINERD_ID: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,74}[A-Za-z0-9])?")
"""containerd's identifier rule (``identifiers.Validate``): 76 characters at most."""


_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
_btime_ns: int | None = None


def _boot_time_ns() -> int:
    global _btime_ns
    if _btime_ns is None:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    _btime_ns = int(line.split()[1]) * 1_000_000_000
                    break
            else:
                _btime_ns = 0
    return _btime_ns


def process_start_ns(pid: int) -> int:
    """When process *pid* started (ns since the epoch, to the clock tick), or 0 if gone.

    For runtimes that keep no start time (containerd), or keep one that only
    an inspect can read: the process's own is stable for its whole life,
    which is all the tracker's identity of a run needs.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    fields = stat.rpartition(b")")[2].split()
    try:
        ticks = int(fields[19])  # field 22 of proc(5), counted after "(comm)"
    except (IndexError, ValueError):
        return 0
    return _boot_time_ns() + ticks * 1_000_000_000 // _CLK_TCK


class SourceUnavailable(Exception):
    """The runtime could not be reached or refused a request (retry later)."""


class SourceNotFound(Exception):
    """The runtime says the container does not exist (any more)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerState:
    """One container as the runtime describes it, in the tracker's terms.

    ``pid`` is 0 and ``running`` false when no process runs for it.  Times
    are nanoseconds since the epoch.  ``env`` is the ``KEY=VALUE`` list of the
    container's process; ``labels`` its runtime labels (for a Kubernetes pod
    sandbox, the pod's labels and annotations).  ``default_label`` is a
    label the source itself assigns (e.g. ``<namespace>/<pod>`` for a pod),
    used when neither the environment nor a label key names one.
    """

    container_id: str
    name: str
    pid: int
    running: bool
    created_ns: int
    started_at_ns: int
    env: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    network_mode: str = "default"
    pod: str | None = None
    default_label: str | None = None


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """One container event: when (runtime clock, ns; None if unknown), which, what.

    ``pid`` is the container's process when the event itself says so
    (containerd's ``/tasks/start``), else 0.
    """

    time_ns: int | None
    container_id: str
    action: str
    pid: int = 0


class EventStream(abc.ABC):
    """An open event subscription: iterate it on one thread, close it from any.

    Iteration ends (without an exception, or with any exception: the tracker
    treats both as a disconnect) when the connection breaks or :meth:`close`
    is called; :meth:`close` must make a blocked iteration return promptly
    and be idempotent.
    """

    @abc.abstractmethod
    def __iter__(self) -> Iterator[SourceEvent]:
        """The events, as they arrive."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the subscription; a blocked iteration returns promptly."""


class Source(abc.ABC):
    """A container runtime the tracker can follow.

    Implementations are used from the tracker's threads: :meth:`subscribe`
    and the stream from the reader thread, :meth:`inspect` and :meth:`sync`
    from the workers (a few threads: :meth:`inspect` may run on several at
    once, for different containers; :meth:`sync` runs alone), :meth:`close`
    from whichever thread stops the tracker.
    """

    #: Runtime kind shown to users: ``"docker"``, ``"podman"``, ``"containerd"``.
    kind: str = "?"
    #: True when :meth:`subscribe` can replay events since a past time.
    replays: bool = False
    #: Regular expression every container ID of this runtime matches.
    id_pattern: re.Pattern[str] = HEX_ID
    #: Event actions that only say a run ended (its process exited).  Such
    #: an event cannot start anything, so for a container the tracker does
    #: not hold it needs no :meth:`inspect`.  The default is docker's and
    #: podman's vocabulary; an action not listed here is always inspected.
    end_actions: frozenset[str] = frozenset({"die", "died"})
    #: Event actions after which the container no longer exists: the tracker
    #: drops it without an :meth:`inspect` (unless another event for the same
    #: ID, e.g. a new container of the same name, waits behind it).
    gone_actions: frozenset[str] = frozenset({"destroy", "remove"})
    #: Event actions that start a run: for the newest event of a container
    #: being one of these, the tracker first asks :meth:`started`.
    start_actions: frozenset[str] = frozenset({"start"})

    _closed: bool = False

    @property
    def closed(self) -> bool:
        """:meth:`close` was called."""
        return self._closed

    @property
    def name(self) -> str:
        """What ``nslib ms ls`` shows as the source (e.g. ``containerd:k8s.io``)."""
        return self.kind

    def now_ns(self) -> int:
        """The runtime's clock now (ns), for the first subscription's ``since``."""
        import time

        return time.time_ns()

    @abc.abstractmethod
    def subscribe(self, since_ns: int | None, label_key: str | None) -> EventStream:
        """Open the container event stream.

        :param since_ns: Replay events from this runtime time on (only when
            :attr:`replays`); None: live events only.
        :param label_key: When not None, only containers carrying this label
            key matter (the source may filter on it, or not).
        :raises SourceUnavailable: or any other exception: not connected.
        """

    @abc.abstractmethod
    def inspect(self, container_id: str) -> ContainerState:
        """The container's current state.

        :raises SourceNotFound: it does not exist.
        :raises Exception: anything else: state unknown (the tracker resyncs).
        """

    def started(self, event: SourceEvent) -> ContainerState | None:
        """The state of the container *event* just started, if known without asking.

        *event* is one of :attr:`start_actions`.  A start is the one event
        whose delay users see, and no runtime's start event but containerd's
        carries the process: a source that can learn it locally
        (from the event, or a file the runtime wrote before sending it) and
        knows the rest from an earlier look saves the :meth:`inspect` round
        trip, which a busy daemon answers slowly.  The answer must be what
        :meth:`inspect` would say at that moment, field for field (a later
        resync must see the same run).  The tracker uses it only if the
        process runs and its cgroup names the container; otherwise, and when
        this returns None (the default) or raises, it inspects.
        """
        return None

    @abc.abstractmethod
    def list_running(self, label_key: str | None) -> list[str]:
        """IDs of the containers that run now (may include some that do not)."""

    def sync(self, label_key: str | None) -> dict[str, ContainerState]:
        """Every running container's state: list, then inspect each.

        Sources that can do better than one request per container override it.
        """
        out: dict[str, ContainerState] = {}
        for cid in self.list_running(label_key):
            if self._closed:
                break  # the tracker is stopping: the answer is not used
            try:
                out[cid] = self.inspect(cid)
            except SourceNotFound:
                continue  # removed since the list: its events follow
        return out

    def close(self) -> None:
        """Release what the source opened; later calls may fail.  Idempotent."""
        self._closed = True

    def describe_error(self, exc: BaseException) -> str:
        """A short text for *exc*, with a hint when the runtime is not there."""
        import errno

        text = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            text = f"{text} (is the {self.kind} daemon running?)"
        return text
