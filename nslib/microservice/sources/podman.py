"""Rootful podman as a microservice source, through its API socket (libpod endpoints)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Final

from ...errors import DockerUnavailableError
from ._http import HTTPError, LineStream, UnixHTTP
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

    Uses podman's own (libpod) endpoints: its event stream reports ``died``
    for kills, crashes and self-exits alike, which its docker-compatible
    endpoint does not (podman 4.3 sends no ``die`` there).  Podman keeps its
    events in a log, so a reconnection replays what was missed.  Containers
    of a pod share the pod's (infra container's) namespace, which the tracker
    reaches through each container's PID; ``--network none`` containers
    too.

    :param url: ``unix://`` URL of the API socket (default: the rootful one).
    :param timeout: Seconds per list or inspect request.
    :raises ValueError: *url* is not a ``unix://`` URL.
    """

    kind = "podman"
    replays = True

    def __init__(self, url: str = DEFAULT_PODMAN_URL, *, timeout: float = 10.0) -> None:
        self.url = url
        self._http = UnixHTTP(url, timeout)

    def subscribe(self, since_ns: int | None, label_key: str | None) -> EventStream:
        """The libpod ``/events`` stream: container ``start``, ``died``, ``remove``."""
        filters: dict[str, list[str]] = {"type": ["container"], "event": _EVENTS}
        if label_key is not None:
            filters["label"] = [label_key]
        params: dict[str, str] = {"stream": "true", "filters": json.dumps(filters)}
        if since_ns is not None:
            # RFC 3339: podman reads a bare number as whole seconds.
            params["since"] = _rfc3339(since_ns)
        self._check_open()
        try:
            lines = self._http.stream_lines(f"{_API}/events", params)
        except HTTPError as e:
            raise DockerUnavailableError(f"podman refused the event stream: {e}") from e
        return _PodmanEvents(lines)

    def inspect(self, container_id: str) -> ContainerState:
        """The libpod container inspect."""
        self._check_open()
        try:
            info = self._http.get_json(f"{_API}/containers/{container_id}/json")
        except HTTPError as e:
            if e.status == 404:
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
