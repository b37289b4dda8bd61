"""The docker daemon as a microservice source (the Docker SDK for Python)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Final

from ..._docker_state import parse_time_ns
from ...errors import DockerUnavailableError
from ._http import HTTPError, UnixHTTP
from .base import HEX_ID, ContainerState, EventStream, Source, SourceEvent, SourceNotFound

__all__ = ["DockerSource"]

_log = logging.getLogger("nslib.microservice")

_CLIENT_TIMEOUT: Final = 10  # seconds per list/inspect request of a client we build
# "remove" is podman's "destroy" (its docker-compatible socket works too).
_EVENTS: Final = ["start", "die", "destroy", "remove"]
_FULL_ID: Final = re.compile(r"[0-9a-f]{64}")
# config.v2.json is a few KiB; one far larger is not worth parsing on the
# latency path (the inspect answers it).
_STATE_FILE_MAX: Final = 1 << 20
# O_NONBLOCK: a FIFO in place of a file must not block a worker before fstat.
_O_STATE: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class _DockerEvents(EventStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[SourceEvent]:
        for ev in self._stream:
            actor = ev.get("Actor") or {}
            cid = actor.get("ID") or ev.get("id")
            if not isinstance(cid, str):
                continue
            t = ev.get("timeNano")
            action = ev.get("Action") or ev.get("status") or ""
            yield SourceEvent(t if isinstance(t, int) else None, cid, str(action))

    def close(self) -> None:
        """Close the client if this source built it; no new one is built after."""
        _close_quietly(self._stream)


def _close_quietly(stream: Any) -> None:
    with contextlib.suppress(Exception):  # closing twice, or a half-torn-down socket
        stream.close()


def state_from_inspect(info: Mapping[str, Any], log: logging.Logger = _log) -> ContainerState:
    """A :class:`ContainerState` from docker's (or podman's) ``inspect`` answer.

    Unexpected data gives a state that is not running (and a warning): such
    a container is never a microservice, and the tracker goes on.
    """
    state = info.get("State") or {}
    cid = str(info.get("Id") or "")
    config = info.get("Config") or {}
    pid = state.get("Pid") or 0
    running = bool(state.get("Running")) and isinstance(pid, int) and pid > 0
    name = str(info.get("Name") or "").lstrip("/")
    try:
        created = parse_time_ns(str(info["Created"]))
        started = parse_time_ns(str(state["StartedAt"])) if running else 0
    except (KeyError, ValueError) as e:
        if running:
            log.warning("ignoring container %s: unexpected inspect data: %s", cid[:12], e)
        return ContainerState(
            container_id=cid, name=name, pid=0, running=False, created_ns=0, started_at_ns=0
        )
    labels = config.get("Labels") or {}
    return ContainerState(
        container_id=cid,
        name=name,
        pid=pid if running else 0,
        running=running,
        created_ns=created,
        started_at_ns=started,
        env=tuple(str(e) for e in (config.get("Env") or ())),
        labels={str(k): str(v) for k, v in labels.items()},
        network_mode=str((info.get("HostConfig") or {}).get("NetworkMode") or "default"),
        pod=str(info.get("Pod")) if info.get("Pod") else None,
    )


class DockerSource(Source):
    """Follows a docker daemon through the Docker SDK for Python.

    :param client: A ``docker.DockerClient`` (or ``docker.APIClient``); it is
        not closed by :meth:`close`.  None builds one from the environment
        (``DOCKER_HOST``, as ``docker.from_env``) lazily and retried, so a
        daemon that is not up yet is not an error; that one is closed.

    :param state_files: Answer a ``start`` from the files the daemon writes
        (see below) instead of an inspect.  False: always inspect.

    Events: ``start``, ``die``, ``destroy`` (and podman's ``remove``),
    replayed with ``since`` after a reconnection.  With only a label key, the
    daemon filters by it.

    Starts without an inspect: the inspect after a start is the slow part
    of the way from the start to the callback (measured on 2 cores with 100
    containers running and 50 churning: inspect p95 10-13 ms, reading the
    two files 0.2 ms p50, under 2 ms p95).  dockerd writes ``containers/<id>/config.v2.json``
    (the state: running, PID, start time, name, environment, labels) and
    ``hostconfig.json`` (the network mode) under its root directory before
    it sends the ``start`` event, so :meth:`started` reads them: each must
    be a regular file owned by root, not a symbolic link, at most 1 MiB, and
    name the container, running with a PID.  Anything else (a missing or
    unreadable file, another ID, a stopped container, bad JSON) is answered
    by an inspect, as is a PID whose cgroup does not name the container (the
    tracker checks).  The root directory is asked from the daemon once per
    subscription (``GET /info``); the files are not used when the daemon is
    not on a local unix socket, when the client is not the SDK's own (a
    wrapper or subclass that changes ``inspect_container`` sees every
    inspect), or when the ``containers`` directory is not there, as for a
    tracker in a container given only the socket, or podman's
    docker-compatible socket.
    """

    kind = "docker"
    replays = True

    def __init__(self, client: Any = None, *, state_files: bool = True) -> None:
        self._client: Any = client
        self._owns_client = client is None
        self._lock = threading.Lock()
        self._state_files = state_files
        # "<DockerRootDir>/containers" of the current subscription, or None.
        self._state_dir: str | None = None
        # The files' first answer in a subscription is checked against an
        # inspect (a daemon whose files say something else turns them off).
        self._files_checked = False
        # Inspects over the client's own unix socket without the SDK's
        # layers (a third of its CPU time, and a connection per worker).
        self._raw: tuple[Any, UnixHTTP | None, str] | None = None  # (api, http, version)

    @property
    def client(self) -> Any:
        """The SDK client in use (None until an owned one is built)."""
        return self._client

    def _api(self) -> Any:
        client = self._client
        if client is None:
            # After close() a call in flight must not build a new client,
            # which could wait _CLIENT_TIMEOUT seconds for a silent daemon.
            if self._closed:
                raise DockerUnavailableError("the microservice tracker is stopping")
            import docker  # lazily: `import nslib` must not load docker

            # from_env() asks the daemon for its API version, so it raises
            # while the daemon is down; that is one more retry, not an error.
            client = docker.from_env(timeout=_CLIENT_TIMEOUT)
            with self._lock:
                if self._closed:
                    client.close()
                    raise DockerUnavailableError("the microservice tracker is stopping")
                self._client = client
        return getattr(client, "api", client)

    def now_ns(self) -> int:
        """The daemon's clock (this host's for a unix socket)."""
        # A unix socket is this host's clock; a remote daemon's may differ by
        # more than the tracker's replay margin, so ask it.  docker-py names
        # every unix socket "http+docker://localhost" (ssh and npipe differ).
        api = self._api()
        if str(getattr(api, "base_url", "")) == "http+docker://localhost":
            return time.time_ns()
        try:
            return parse_time_ns(str(api.info()["SystemTime"]))
        except (KeyError, ValueError):
            return time.time_ns()

    def subscribe(self, since_ns: int | None, label_key: str | None) -> EventStream:
        """``GET /events`` filtered to container start, die, destroy, remove."""
        api = self._api()
        # Before the stream: its starts are read in the directory of the
        # daemon that sends them (another one may answer after a restart).
        self._state_dir = self._find_state_dir(api) if self._state_files else None
        self._files_checked = False
        filters: dict[str, Any] = {"type": "container", "event": _EVENTS}
        if label_key is not None:
            filters["label"] = label_key
        kwargs: dict[str, Any] = {}
        if since_ns is not None:
            # A string: the daemon reads "<sec>.<9-digit ns>" exactly; a
            # float rounds and can skip an event.
            kwargs["since"] = f"{since_ns // 1_000_000_000}.{since_ns % 1_000_000_000:09d}"
        stream = api.events(filters=filters, decode=True, **kwargs)
        # The SDK turns an HTTP error into an empty stream; the status is
        # only visible on the response.
        status = getattr(getattr(stream, "_response", None), "status_code", 200)
        if status != 200:
            _close_quietly(stream)
            raise DockerUnavailableError(f"the daemon refused the event stream: HTTP {status}")
        return _DockerEvents(stream)

    def _find_state_dir(self, api: Any) -> str | None:
        """The daemon's ``containers`` directory, if this process sees it; else None."""
        # A remote daemon's root is a path on another host; a client that
        # wraps or changes inspect_container is there to see every inspect.
        if _plain_socket_path(api) is None:
            return None
        try:
            root = api.info().get("DockerRootDir")
        except Exception:  # the event request that follows says what is wrong
            return None
        if not isinstance(root, str) or not root.startswith("/"):
            return None
        path = os.path.join(root, "containers")
        try:
            st = os.lstat(path)
        except OSError:  # not in this mount namespace (or not dockerd's layout)
            return None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
            return None
        return path

    def started(self, event: SourceEvent) -> ContainerState | None:
        """The state of the container *event* started, from the daemon's files.

        See the class documentation: None when they do not give it exactly.
        """
        state_dir = self._state_dir
        cid = event.container_id
        if state_dir is None or not _FULL_ID.fullmatch(cid):
            return None
        try:
            dfd = os.open(
                os.path.join(state_dir, cid),
                os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
            )
        except OSError:
            return None
        try:
            config = _read_state_file(dfd, "config.v2.json")
            host_config = _read_state_file(dfd, "hostconfig.json")
        finally:
            os.close(dfd)
        if not isinstance(config, dict) or not isinstance(host_config, dict):
            return None
        state, conf = config.get("State"), config.get("Config")
        if (
            config.get("ID") != cid
            or not isinstance(state, dict)
            or not isinstance(conf, dict)
            or state.get("Running") is not True
        ):
            return None
        try:  # here, so that state_from_inspect warns only about the inspect
            parse_time_ns(str(config["Created"]))
            parse_time_ns(str(state["StartedAt"]))
        except (KeyError, ValueError):
            return None
        # The fields of an inspect answer that state_from_inspect reads: the
        # daemon fills them from the same structures it writes here.
        info = {
            "Id": cid,
            "Name": config.get("Name"),
            "Created": config["Created"],
            "State": state,
            "Config": conf,
            "HostConfig": host_config,
        }
        st = state_from_inspect(info)
        if not st.running:
            return None
        if not self._files_checked:
            return self._check_files(st)
        return st

    def _check_files(self, st: ContainerState) -> ContainerState | None:
        """Compare the files' first answer with an inspect; turn them off if they differ.

        A daemon version whose files and inspect disagree (a field renamed,
        a value rewritten on the way out) would otherwise give a different
        run at every resync.  Costs one inspect per subscription.
        """
        try:
            truth = self.inspect(st.container_id)
        except Exception:
            return None  # the tracker's own inspect decides, and says why
        if not truth.running or truth.pid != st.pid:
            return truth if truth.running else None  # it moved on: check the next one
        if truth != st:
            _log.warning(
                "docker's state files do not match its inspect answer; "
                "starts are inspected from now on"
            )
            self._state_dir = None
            return truth
        self._files_checked = True
        return st

    def inspect(self, container_id: str) -> ContainerState:
        """``inspect`` of the container (see :class:`Source`)."""
        api = self._api()
        raw = self._raw
        if raw is None or raw[0] is not api:
            with self._lock:  # one per client, whichever worker comes first
                raw = self._raw
                if raw is None or raw[0] is not api:
                    if raw is not None and raw[1] is not None:
                        raw[1].close()
                    raw = self._raw = (api, *_unix_socket(api))
        http, version = raw[1], raw[2]
        if http is not None and HEX_ID.fullmatch(container_id):
            try:
                info = http.get_json(f"/v{version}/containers/{container_id}/json")
            except HTTPError as e:
                if e.status == 404:
                    raise SourceNotFound(container_id) from e
                raise
            return state_from_inspect(info)
        try:
            info = api.inspect_container(container_id)
        except Exception as e:
            if _is_not_found(e):
                raise SourceNotFound(container_id) from e
            raise
        return state_from_inspect(info)

    def list_running(self, label_key: str | None) -> list[str]:
        """The running (and paused) containers, by label key when given."""
        filters = {"label": label_key} if label_key is not None else None
        # running (and paused) only
        return [str(e["Id"]) for e in self._api().containers(filters=filters)]

    def close(self) -> None:
        """Close the client if this source built it; no new one is built after."""
        super().close()
        raw = self._raw
        if raw is not None and raw[1] is not None:
            raw[1].close()
        with self._lock:
            client = self._client if self._owns_client else None
            if client is not None:
                self._client = None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a pool does not really fail
                client.close()


def _unix_socket(api: Any) -> tuple[UnixHTTP | None, str]:
    """An HTTP client on the unix socket of a plain SDK ``APIClient``, and its API version.

    ``(None, "")`` for anything else (TLS, ssh, a wrapper or a subclass that
    changes ``inspect_container``): those go through the SDK.
    """
    path = _plain_socket_path(api)
    version = getattr(api, "_version", None)
    if path is None or not isinstance(version, str):
        return None, ""
    timeout = api.timeout if isinstance(api.timeout, int | float) else _CLIENT_TIMEOUT
    return UnixHTTP(path, timeout), version


def _plain_socket_path(api: Any) -> str | None:
    """The socket of a plain SDK ``APIClient`` on a local unix socket; else None."""
    import docker
    from docker.transport import UnixHTTPAdapter

    adapter = getattr(api, "_custom_adapter", None)
    path = getattr(adapter, "socket_path", None)
    if (
        not isinstance(api, docker.APIClient)
        or type(api).inspect_container is not docker.APIClient.inspect_container
        or getattr(api, "base_url", None) != "http+docker://localhost"
        or not isinstance(adapter, UnixHTTPAdapter)
        or not isinstance(path, str)
    ):
        return None
    return path


def _read_state_file(dfd: int, name: str) -> Any:
    """The JSON of file *name* in directory *dfd*, if it is one dockerd wrote; else None."""
    try:
        fd = os.open(name, _O_STATE, dir_fd=dfd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_size > _STATE_FILE_MAX:
            return None
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > _STATE_FILE_MAX:  # grew since the fstat
                return None
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError):  # also UnicodeDecodeError
        return None


def _is_not_found(exc: BaseException) -> bool:
    import docker.errors

    return isinstance(exc, docker.errors.NotFound)
