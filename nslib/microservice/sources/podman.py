"""Rootful podman as a microservice source (its API socket, and its events log file)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Final, Literal

from ...errors import DockerUnavailableError
from ._http import HTTPError, LineStream, UnixHTTP
from ._podman_events import FileEvents, events_file_for
from .base import (
    ContainerState,
    EventStream,
    Source,
    SourceEvent,
    SourceNotFound,
    process_start_ns,
)
from .docker import state_from_inspect

__all__ = ["DEFAULT_PODMAN_URL", "PodmanSource"]

_log = logging.getLogger("nslib.microservice")

DEFAULT_PODMAN_URL: Final = "unix:///run/podman/podman.sock"
"""Rootful podman's API socket (``podman.socket``, or ``podman system service``)."""

_API: Final = "/v4.0.0/libpod"
# libpod's own names: "died" is what the docker-compatible endpoint of
# podman 4.3 never sends as "die", so a kill would go unseen there.  "create"
# and "rename" only keep what a start is answered from up to date.
_EVENTS: Final = ["create", "start", "died", "rename", "remove"]
_ACTIONS: Final = frozenset(_EVENTS)
# After these a container's remembered state is wrong (or useless).
_FORGET: Final = frozenset({"rename", "remove"})
_KNOWN_MAX: Final = 4096  # containers whose state a start is answered from
_PID_FILE_MAX: Final = 32  # a PID in decimal, with some room for a newline
_SPEC_MAX: Final = 1 << 20  # an OCI config.json is about 10 KiB
# O_NONBLOCK: a FIFO in place of a file must not block a worker before fstat.
_O_READ: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# The file-following stream keeps this one open only to learn that the
# service went away; no such event is ever logged.
_GUARD_FILTERS: Final = json.dumps({"type": ["system"], "event": ["renumber"]})


class _PodmanEvents(EventStream):
    def __init__(self, lines: LineStream) -> None:
        self._lines = lines

    def __iter__(self) -> Iterator[SourceEvent]:
        for line in self._lines:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            actor = ev.get("Actor") or {}
            cid = actor.get("ID") or ev.get("id")
            if not isinstance(cid, str) or not cid:
                continue
            t = ev.get("timeNano")
            yield SourceEvent(t if isinstance(t, int) else None, cid, str(ev.get("Action") or ""))

    def close(self) -> None:
        self._lines.close()


class _Forgetting(EventStream):
    """Passes events on, after telling the source which containers changed."""

    def __init__(self, inner: EventStream, forget: Callable[[str], None]) -> None:
        self._inner = inner
        self._forget = forget

    def __iter__(self) -> Iterator[SourceEvent]:
        for ev in self._inner:
            if ev.action in _FORGET:
                self._forget(ev.container_id)  # before anyone can act on the event
            yield ev

    def close(self) -> None:
        self._inner.close()


@dataclasses.dataclass(frozen=True, slots=True)
class _Known:
    """What a start does not change, and where the rest is read.

    Podman writes the container's OCI spec (``config.json``, whose process
    environment its inspect reports: it adds ``HOME`` and ``HOSTNAME`` at
    each init) and the OCI runtime its PID file, both before the start.
    """

    state: ContainerState  # pid 0, not running, started_at_ns 0
    pid_file: str
    spec_file: str


def _read_small(path: str, limit: int) -> bytes | None:
    """A regular file (not a symbolic link) of root's or ours, of *limit* bytes at most."""
    try:
        fd = os.open(path, _O_READ)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (0, os.geteuid()):
            return None
        chunks = []
        size = 0
        while chunk := os.read(fd, limit + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return None
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _read_pid(path: str) -> int | None:
    """The PID in the OCI runtime's PID file (decimal text), or None."""
    data = _read_small(path, _PID_FILE_MAX)
    text = b"" if data is None else data.strip()
    if not text.isdigit() or len(text) > 10:
        return None
    pid = int(text)
    return pid if 0 < pid < 1 << 31 else None


def _read_env(path: str) -> tuple[str, ...] | None:
    """The process environment of the OCI spec at *path*, or None."""
    data = _read_small(path, _SPEC_MAX)
    if data is None:
        return None
    try:
        spec = json.loads(data)
    except ValueError:  # also bad UTF-8, or rewritten as we read it
        return None
    process = spec.get("process") if isinstance(spec, dict) else None
    env = process.get("env") if isinstance(process, dict) else None
    if not isinstance(env, list) or not all(isinstance(e, str) for e in env):
        return None
    return tuple(env)


def _rfc3339(ns: int) -> str:
    whole = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{ns % 1_000_000_000:09d}Z"


class PodmanSource(Source):
    """Follows rootful podman through its API socket (``podman system service``).

    Uses podman's own (libpod) endpoints: its events report ``died`` for
    kills, crashes and self-exits alike, which its docker-compatible
    endpoint does not (podman 4.3 sends no ``die`` there).  Podman keeps its
    events in a log, so a reconnection replays what was missed.  Containers
    of a pod share the pod's (infra container's) namespace, which the tracker
    reaches through each container's PID; ``--network none`` containers
    too.

    Starts without an inspect: podman's inspect is the slow end of the way
    from a start to the callback (a p95 of tens of milliseconds with a few
    hundred containers running).  The source also follows ``create`` (and
    ``rename``) events, so the tracker inspects each container once before
    it starts; :meth:`inspect` remembers what a start does not change (name,
    labels, network mode, pod) and where the rest will be: the PID file the
    OCI runtime writes and the OCI spec podman writes (with the process
    environment its inspect reports), both before podman logs the start.  A
    start is then answered from those files (regular files owned by root,
    or by this process's user, not symbolic links); anything missing or
    odd, and a PID whose cgroup does not name the container (the tracker
    checks), is answered by an inspect.  What is remembered is dropped on
    ``rename`` and ``remove``, on a new subscription, and beyond 4096
    containers.

    Podman's own ``StartedAt`` is in its database only, so
    ``Microservice.started_at`` of a podman container is its process's
    start time as the kernel has it (to the clock tick), from
    :meth:`inspect` and a start alike, as for containerd: stable for the
    whole run, and new for each run.

    Events come from podman's events log *file* when podman writes one
    (``events_logger = "file"``) and this process can read it: followed
    with inotify, an event is seen as soon as podman writes it, where the
    ``/events`` endpoint of podman 4.3 polls that file and answers about a
    tenth of a second later.  Otherwise (journald, a file this process may
    not read, a service it cannot identify) they come from the API's
    ``/events`` stream.  Either way the service must answer: a stopped
    service ends the stream, and the tracker resyncs when it is back.

    :param url: ``unix://`` URL of the API socket (default: the rootful one).
    :param timeout: Seconds per list or inspect request.
    :param events_file: ``"auto"`` (default): the file the service behind
        *url* writes, found from its command line (``--events-backend``,
        ``--tmpdir``) and its containers.conf (``CONTAINERS_CONF``,
        ``events_logger``, ``events_logfile_path``, ``tmp_dir``; by
        default ``/run/libpod/events/events.log``); for a socket-activated
        service, only on the default socket, from this process's
        containers.conf.  A path: that file (it may not exist yet; its
        directory must).  None: always the API stream.
    :raises ValueError: *url* is not a ``unix://`` URL.
    """

    kind = "podman"
    replays = True

    def __init__(
        self,
        url: str = DEFAULT_PODMAN_URL,
        *,
        timeout: float = 10.0,
        events_file: str | os.PathLike[str] | Literal["auto"] | None = "auto",
    ) -> None:
        self.url = url
        self._http = UnixHTTP(url, timeout)
        self._events_file: str | None = None if events_file is None else os.fspath(events_file)
        self._events_via: str | None = None
        # container ID -> what a start does not change, newest use last.  A
        # worker's inspect that began before an event made it wrong must not
        # store it: each forgetting takes a new generation, and an inspect
        # stores only if nothing it looked at was forgotten since it began.
        self._known_lock = threading.Lock()
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._generation = 0
        self._forgotten: OrderedDict[str, int] = OrderedDict()  # ID -> its generation
        self._forgotten_floor = 0  # the newest generation no longer in _forgotten

    @property
    def events_via(self) -> str | None:
        """The events log file the last subscription follows, ``"api"``, or None (none yet)."""
        return self._events_via

    def subscribe(self, since_ns: int | None, label_key: str | None) -> EventStream:
        """Container ``create``, ``start``, ``died``, ``rename`` and ``remove``.

        From the events file or the API.
        """
        self._check_open()
        # A new subscription may follow a gap in which events were lost.
        self._forget_all()
        path = self._file_path()
        if path is not None:
            guard = self._stream({"stream": "true", "filters": _GUARD_FILTERS})
            try:
                stream = FileEvents(path, since_ns, label_key, guard, actions=_ACTIONS)
            except OSError as e:
                guard.close()
                _log.info(
                    "podman events file not usable (%s): using the API stream", e.strerror or e
                )
            except BaseException:
                guard.close()
                raise
            else:
                self._events_via = path
                return _Forgetting(stream, self._forget)
        filters: dict[str, list[str]] = {"type": ["container"], "event": _EVENTS}
        if label_key is not None:
            filters["label"] = [label_key]
        params: dict[str, str] = {"stream": "true", "filters": json.dumps(filters)}
        if since_ns is not None:
            # RFC 3339: podman reads a bare number as whole seconds.
            params["since"] = _rfc3339(since_ns)
        lines = self._stream(params)
        self._events_via = "api"
        return _Forgetting(_PodmanEvents(lines), self._forget)

    def _file_path(self) -> str | None:
        if self._events_file is None:
            return None
        if self._events_file != "auto":
            return str(self._events_file)
        try:
            return events_file_for(self.url)
        except OSError:
            return None  # the service is not there: the API stream says so

    def _stream(self, params: dict[str, str]) -> LineStream:
        try:
            return self._http.stream_lines(f"{_API}/events", params)
        except HTTPError as e:
            raise DockerUnavailableError(f"podman refused the event stream: {e}") from e

    def inspect(self, container_id: str) -> ContainerState:
        """The libpod container inspect (``started_at_ns``: its process's start)."""
        self._check_open()
        with self._known_lock:
            generation = self._generation
        try:
            info = self._http.get_json(f"{_API}/containers/{container_id}/json")
        except HTTPError as e:
            # Podman 4.3 answers 500 "no such container" for one removed
            # while it looked it up.
            if e.status == 404 or (e.status == 500 and "no such container" in str(e)):
                raise SourceNotFound(container_id) from e
            raise
        st = state_from_inspect(info)
        if not st.created_ns:
            return st  # data it could not read: nothing to remember
        fixed = dataclasses.replace(st, pid=0, running=False, started_at_ns=0)
        pid_file = info.get("PidFile")
        spec_file = info.get("OCIConfigPath")
        if not spec_file:  # not initialised yet: where podman will write it
            static = info.get("StaticDir")
            spec_file = os.path.join(static, "config.json") if isinstance(static, str) else None
        if (
            isinstance(pid_file, str)
            and isinstance(spec_file, str)
            and os.path.isabs(pid_file)
            and os.path.isabs(spec_file)
        ):
            self._remember(st.container_id, _Known(fixed, pid_file, spec_file), generation)
        if not st.running:
            return st
        started = process_start_ns(st.pid)
        if not started:
            return fixed  # its process is gone already: so is the run
        return dataclasses.replace(st, started_at_ns=started)

    def started(self, event: SourceEvent) -> ContainerState | None:
        """The remembered state with the PID file's process (see the class docstring)."""
        with self._known_lock:
            known = self._known.get(event.container_id)
            if known is not None:
                self._known.move_to_end(event.container_id)
        if known is None:
            return None
        pid = _read_pid(known.pid_file)
        if pid is None:
            return None
        env = _read_env(known.spec_file)
        if env is None:
            return None
        started = process_start_ns(pid)
        if not started:
            return None
        return dataclasses.replace(
            known.state, pid=pid, running=True, started_at_ns=started, env=env
        )

    def _remember(self, cid: str, known: _Known, generation: int) -> None:
        with self._known_lock:
            if generation < max(self._forgotten_floor, self._forgotten.get(cid, 0)):
                return  # forgotten while it was inspected: what it saw may be old
            self._known[cid] = known
            self._known.move_to_end(cid)
            while len(self._known) > _KNOWN_MAX:
                self._known.popitem(last=False)

    def _forget(self, cid: str) -> None:
        with self._known_lock:
            self._generation += 1
            self._known.pop(cid, None)
            self._forgotten[cid] = self._generation
            self._forgotten.move_to_end(cid)
            while len(self._forgotten) > _KNOWN_MAX:
                self._forgotten_floor = self._forgotten.popitem(last=False)[1]

    def _forget_all(self) -> None:
        with self._known_lock:
            self._generation += 1
            self._forgotten_floor = self._generation
            self._forgotten.clear()
            self._known.clear()

    def list_running(self, label_key: str | None) -> list[str]:
        """The libpod container list (running only)."""
        self._check_open()
        params = {"filters": json.dumps({"label": [label_key]})} if label_key else None
        return [str(e["Id"]) for e in self._http.get_json(f"{_API}/containers/json", params)]

    def close(self) -> None:
        """Close the kept-alive connection; later requests fail."""
        super().close()
        self._http.close()
        self._forget_all()

    def _check_open(self) -> None:
        if self.closed:
            raise DockerUnavailableError("the microservice tracker is stopping")
