"""Rootful podman as a microservice source (its API socket, and its events log file)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Final, Literal

from ...errors import DockerUnavailableError
from ._http import HTTPError, LineStream, UnixHTTP
from ._podman_events import FileEvents, events_file_for
from .base import ContainerState, EventStream, Source, SourceEvent, SourceNotFound
from .docker import state_from_inspect

__all__ = ["DEFAULT_PODMAN_URL", "PodmanSource"]

_log = logging.getLogger("nslib.microservice")

DEFAULT_PODMAN_URL: Final = "unix:///run/podman/podman.sock"
"""Rootful podman's API socket (``podman.socket``, or ``podman system service``)."""

_API: Final = "/v4.0.0/libpod"
# libpod's own names: "died" is what the docker-compatible endpoint of
# podman 4.3 never sends as "die", so a kill would go unseen there.
_EVENTS: Final = ["start", "died", "remove"]
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

    @property
    def events_via(self) -> str | None:
        """The events log file the last subscription follows, ``"api"``, or None (none yet)."""
        return self._events_via

    def subscribe(self, since_ns: int | None, label_key: str | None) -> EventStream:
        """Container ``start``, ``died`` and ``remove``, from the events file or the API."""
        self._check_open()
        path = self._file_path()
        if path is not None:
            guard = self._stream({"stream": "true", "filters": _GUARD_FILTERS})
            try:
                stream = FileEvents(path, since_ns, label_key, guard)
            except OSError as e:
                guard.close()
                _log.info(
                    "podman events file not usable (%s): using the API stream", e.strerror or e
                )
            else:
                self._events_via = path
                return stream
        filters: dict[str, list[str]] = {"type": ["container"], "event": _EVENTS}
        if label_key is not None:
            filters["label"] = [label_key]
        params: dict[str, str] = {"stream": "true", "filters": json.dumps(filters)}
        if since_ns is not None:
            # RFC 3339: podman reads a bare number as whole seconds.
            params["since"] = _rfc3339(since_ns)
        lines = self._stream(params)
        self._events_via = "api"
        return _PodmanEvents(lines)

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
        """The libpod container inspect."""
        self._check_open()
        try:
            info = self._http.get_json(f"{_API}/containers/{container_id}/json")
        except HTTPError as e:
            # Podman 4.3 answers 500 "no such container" for one removed
            # while it looked it up.
            if e.status == 404 or (e.status == 500 and "no such container" in str(e)):
                raise SourceNotFound(container_id) from e
            raise
        return state_from_inspect(info)

    def list_running(self, label_key: str | None) -> list[str]:
        """The libpod container list (running only)."""
        self._check_open()
        params = {"filters": json.dumps({"label": [label_key]})} if label_key else None
        return [str(e["Id"]) for e in self._http.get_json(f"{_API}/containers/json", params)]

    def close(self) -> None:
        """Close the kept-alive connection; later requests fail."""
        super().close()
        self._http.close()

    def _check_open(self) -> None:
        if self.closed:
            raise DockerUnavailableError("the microservice tracker is stopping")
