"""containerd as a microservice source (gRPC), including Kubernetes pods (CRI, ``k8s.io``)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from ...errors import DockerUnavailableError
from ._containerd_api import (
    CONTAINERS_GET,
    CONTAINERS_LIST,
    EVENTS_PUBLISH,
    EVENTS_SUBSCRIBE,
    TASKS_GET,
    TASKS_LIST,
    M,
)
from .base import (
    CONTAINERD_ID,
    ContainerState,
    EventStream,
    Source,
    SourceEvent,
    SourceNotFound,
    process_start_ns,
)

__all__ = ["DEFAULT_CONTAINERD_ADDRESS", "KIND_LABEL", "POD_LABELS", "ContainerdSource"]

_log = logging.getLogger("nslib.microservice")

DEFAULT_CONTAINERD_ADDRESS: Final = "/run/containerd/containerd.sock"
"""containerd's default gRPC socket."""

KIND_LABEL: Final = "io.cri-containerd.kind"
"""Label the CRI plugin sets: ``sandbox`` (a pod) or ``container``."""

POD_LABELS: Final = (
    "io.kubernetes.pod.namespace",
    "io.kubernetes.pod.name",
    "io.kubernetes.pod.uid",
)
"""Labels the CRI plugin sets on a pod's sandbox and containers."""

_TASK_START: Final = "/tasks/start"
_TOPICS: Final = (
    _TASK_START,
    "/tasks/exit",
    "/tasks/delete",
    "/containers/create",
    "/containers/update",
    "/containers/delete",
)
# The subscription's own mark (see ContainerdSource._confirm): published by
# the subscriber into its namespace, on a topic no one else uses.
_MARK_TOPIC: Final = "/nslib/subscribed"
_MARK_TYPE: Final = "nslib.dev/subscribed"
_MARK_RETRY: Final = 0.2  # seconds between marks while the first is not seen
# Topics after which what the cache holds of a container may be wrong.
_CHANGES: Final = frozenset({"/containers/create", "/containers/update", "/containers/delete"})
_CACHE_SIZE: Final = 4096  # containers whose static part is kept (a node runs fewer)
_RUNNING: Final = (2, 4)  # task Status RUNNING, PAUSED: a process with a PID
_NS_KEY: Final = "containerd-namespace"
_INSTALL_HINT: Final = "ContainerdSource needs grpcio and protobuf: pip install 'nslib[containerd]'"


def _grpc() -> Any:
    try:
        import google.protobuf  # noqa: F401
        import grpc
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return grpc


def _ts_ns(ts: Any) -> int:
    return int(ts.seconds) * 1_000_000_000 + int(ts.nanos)


class _ContainerdEvents(EventStream):
    def __init__(
        self,
        call: Any,
        grpc: Any,
        invalidate: Callable[[str | None], None],
        early: list[Any],
    ) -> None:
        self._call = call
        self._grpc = grpc
        self._invalidate = invalidate
        self._early = early  # envelopes read before the subscription's mark

    def __iter__(self) -> Iterator[SourceEvent]:
        early, self._early = self._early, []
        try:
            for env in itertools.chain(early, self._call):
                if env.topic == _MARK_TOPIC:
                    continue  # another subscriber's mark (or a late one of ours)
                pid = 0
                try:
                    if env.topic == _TASK_START:
                        start = M.TaskStart.FromString(env.event.value)
                        cid, pid = start.container_id, int(start.pid)
                    else:
                        cid = M.ContainerRef.FromString(env.event.value).id
                except Exception:  # not the payload we know: nothing to follow
                    continue
                if cid:
                    if env.topic in _CHANGES:
                        # Before the tracker sees the event: an inspect that
                        # read the container earlier must not fill the cache.
                        self._invalidate(cid)
                    t = _ts_ns(env.timestamp) if env.HasField("timestamp") else None
                    yield SourceEvent(t, cid, env.topic, pid)
        except self._grpc.RpcError as e:
            if e.code() != self._grpc.StatusCode.CANCELLED:
                raise
        finally:
            # Changes made while no stream is open are never reported.
            self._invalidate(None)

    def close(self) -> None:
        self._call.cancel()


class ContainerdSource(Source):
    """Follows one containerd namespace over containerd's gRPC API.

    Follows the event topics ``/tasks/start``, ``/tasks/exit``,
    ``/tasks/delete`` and ``/containers/create``, ``/containers/update``,
    ``/containers/delete`` of *namespace*; containerd keeps no event
    history, so every reconnection resyncs (one task list and one container
    list).  containerd does not say when a subscription is live, so the
    source publishes a mark of its own (topic ``/nslib/subscribed``, in
    *namespace*; other subscribers of every topic see it) and starts
    reading only once the mark comes back: no event falls between the
    subscription and the resync.  The environment comes from the container's
    OCI spec, labels from its containerd labels.

    A start costs no request when the container was seen before: the
    ``/tasks/start`` event carries the task's PID, and what a container
    says apart from its task (labels, environment, network, pod) only
    changes with a ``/containers/update``.  So every container read
    (an inspect, a resync, or the tracker's inspect on
    ``/containers/create``, which ``ctr run`` and the CRI plugin send before
    the task starts) is remembered, for up to 4,096 containers, until the
    container is updated or deleted or the event stream breaks.  A start
    of a container not remembered costs one ``Containers.Get`` instead of
    an inspect's two requests in a row (the task's PID is in the event).

    Kubernetes (the CRI plugin, namespace ``k8s.io``): a pod is a *sandbox*
    container (label ``io.cri-containerd.kind=sandbox``) whose process holds
    the pod's network namespace, shared by the pod's containers.  A sandbox's
    labels are the pod's labels plus, where no label has the same key, the
    pod's annotations (from the sandbox's OCI spec), so the tracker's
    ``label_key`` may name either; with *pod_names* a sandbox also gets the
    label ``<namespace>/<pod>`` when nothing else names it.  Every container
    of a pod reports the pod as ``<namespace>/<pod>`` in
    :attr:`~nslib.microservice.Microservice.pod`.

    :param address: Path (or ``unix://`` URL) of containerd's socket.
    :param namespace: The containerd namespace (``default``, ``moby`` for
        docker's, ``k8s.io`` for Kubernetes').
    :param pod_names: Label each Kubernetes sandbox ``<namespace>/<pod>``.
    :param timeout: Seconds per list or get request.
    :raises ImportError: grpcio or protobuf is missing (the message names
        ``pip install 'nslib[containerd]'``).
    :raises ValueError: an empty namespace.
    """

    kind = "containerd"
    replays = False
    id_pattern = CONTAINERD_ID
    # A deleted task leaves the container, which may get a new task; only a
    # deleted container is gone (and its ID, a name, may come back later,
    # with a /tasks/start of its own).
    end_actions = frozenset({"/tasks/exit", "/tasks/delete"})
    gone_actions = frozenset({"/containers/delete"})
    start_actions = frozenset({_TASK_START})

    def __init__(
        self,
        address: str = DEFAULT_CONTAINERD_ADDRESS,
        namespace: str = "default",
        *,
        pod_names: bool = False,
        timeout: float = 10.0,
    ) -> None:
        if not namespace:
            raise ValueError("namespace must not be empty")
        self._grpc = _grpc()
        path = address[len("unix://") :] if address.startswith("unix://") else address
        self.address = path
        self.namespace = namespace
        self.pod_names = pod_names
        self.timeout = timeout
        self._md = ((_NS_KEY, namespace),)
        self._lock = threading.Lock()
        self._channel: Any = None
        # What a container says apart from its task, by ID (see _remember).
        self._cache_lock = threading.Lock()
        self._cache: OrderedDict[str, ContainerState] = OrderedDict()
        self._generation = 0  # bumped by each invalidation
        self._changed: OrderedDict[str, int] = OrderedDict()  # ID -> generation of its last change
        self._forgotten = 0  # newest generation no longer in _changed

    @property
    def name(self) -> str:
        """``containerd:<namespace>``."""
        return f"containerd:{self.namespace}"

    def _chan(self) -> Any:
        with self._lock:
            if self.closed:
                raise DockerUnavailableError("the microservice tracker is stopping")
            if self._channel is None:
                self._channel = self._grpc.insecure_channel(f"unix://{self.address}")
            return self._channel

    def _unary(self, method: str, request: Any, response: Any) -> Any:
        call = self._chan().unary_unary(
            method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )
        return call(request, metadata=self._md, timeout=self.timeout)

    def _not_found(self, e: BaseException) -> bool:
        grpc = self._grpc
        return isinstance(e, grpc.RpcError) and e.code() == grpc.StatusCode.NOT_FOUND

    def subscribe(self, since_ns: int | None, label_key: str | None) -> EventStream:
        """Subscribe to the task and container topics of the namespace; return once live."""
        ns = json.dumps(self.namespace)
        filters = [f"namespace=={ns},topic=={json.dumps(t)}" for t in (*_TOPICS, _MARK_TOPIC)]
        call = self._chan().unary_stream(
            EVENTS_SUBSCRIBE,
            request_serializer=M.SubscribeRequest.SerializeToString,
            response_deserializer=M.Envelope.FromString,
        )(M.SubscribeRequest(filters=filters), metadata=self._md)
        # The call is lazy: wait until the connection is up, so that a missing
        # daemon is an error here, then until containerd really delivers.
        try:
            self._wait_ready()
            early = self._confirm(call)
        except BaseException:
            call.cancel()
            raise
        self._invalidate(None)  # what happened while no stream was open is unknown
        return _ContainerdEvents(call, self._grpc, self._invalidate, early)

    def _confirm(self, call: Any) -> list[Any]:
        """Return once the subscription is live; the envelopes that came before.

        containerd registers a subscriber some time after the call reaches
        it and says nothing when it has (no headers until the first event):
        an event in between is lost, and the resync that follows may have
        listed too early to see its effect (measured here: 20 of 100 events
        published right after the call was set up never arrived).  So the
        subscriber publishes a mark of its own into its namespace and reads
        until that mark comes back: every event after it is delivered.  A
        mark published before the registration is never seen, so one is
        published every 0.2 s until one is.
        """
        grpc = self._grpc
        token = os.urandom(16)
        seen = threading.Event()
        failure: list[BaseException] = []

        def mark_until_seen() -> None:
            deadline = time.monotonic() + self.timeout
            request = M.PublishRequest(topic=_MARK_TOPIC)
            request.event.type_url = _MARK_TYPE
            request.event.value = token
            while not seen.is_set():
                if time.monotonic() >= deadline:
                    failure.append(TimeoutError("no mark came back"))
                    call.cancel()
                    return
                try:
                    self._unary(EVENTS_PUBLISH, request, M.Empty)
                except Exception as e:
                    failure.append(e)
                    call.cancel()
                    return
                seen.wait(_MARK_RETRY)

        marker = threading.Thread(target=mark_until_seen, name="nslib-containerd-mark", daemon=True)
        marker.start()
        early: list[Any] = []
        try:
            for env in call:
                if env.topic == _MARK_TOPIC:
                    if env.event.value == token:
                        return early
                    continue
                early.append(env)
        except grpc.RpcError as e:
            if not failure:
                raise
            raise DockerUnavailableError(
                f"containerd at {self.address} did not confirm the event subscription: "
                f"{self.describe_error(failure[0])}"
            ) from e
        finally:
            seen.set()
            marker.join()
        raise DockerUnavailableError(f"containerd at {self.address} ended the event subscription")

    def _wait_ready(self) -> None:
        grpc = self._grpc
        try:
            grpc.channel_ready_future(self._chan()).result(timeout=self.timeout)
        except grpc.FutureTimeoutError:
            raise DockerUnavailableError(
                f"containerd at {self.address} does not answer (is it running?)"
            ) from None

    def inspect(self, container_id: str) -> ContainerState:
        """Containers.Get plus Tasks.Get of the container."""
        static = self._get_container(container_id)
        try:
            proc = self._unary(
                TASKS_GET, M.GetTaskRequest(container_id=container_id), M.GetTaskResponse
            ).process
        except Exception as e:
            if not self._not_found(e):
                raise
            proc = None
        if proc is None or proc.status not in _RUNNING or proc.pid <= 0:
            return dataclasses.replace(static, labels=dict(static.labels))
        return _with_process(static, int(proc.pid))

    def started(self, event: SourceEvent) -> ContainerState | None:
        """The state from the ``/tasks/start`` event's PID and the container as last read.

        No request when the container is remembered, else one
        Containers.Get (the event gives the PID: no Tasks.Get).  None when
        the event has no PID or the container is gone.
        """
        if event.pid <= 0:
            return None
        with self._cache_lock:
            static = self._cache.get(event.container_id)
            if static is not None:
                self._cache.move_to_end(event.container_id)
        if static is None:
            try:
                static = self._get_container(event.container_id)
            except SourceNotFound:
                return None  # deleted already: the inspect says so
        return _with_process(static, event.pid)

    def _get_container(self, container_id: str) -> ContainerState:
        """Containers.Get: the container with no task (and remember it)."""
        generation = self._generation
        try:
            c = self._unary(
                CONTAINERS_GET, M.GetContainerRequest(id=container_id), M.GetContainerResponse
            ).container
        except Exception as e:
            if self._not_found(e):
                raise SourceNotFound(container_id) from e
            raise
        static = self._static(c)
        self._remember({container_id: static}, generation)
        return static

    def _remember(self, statics: Mapping[str, ContainerState], generation: int) -> None:
        """Cache *statics*, read after *generation*, unless the container changed since.

        The event reader invalidates a container before the tracker sees the
        event, while a worker may still be reading the container as it was:
        that answer must not outlive the invalidation.
        """
        with self._cache_lock:
            for cid, static in statics.items():
                if max(self._changed.get(cid, 0), self._forgotten) > generation:
                    continue  # changed (or possibly changed) since it was read
                self._cache[cid] = static
                self._cache.move_to_end(cid)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)

    def _invalidate(self, container_id: str | None) -> None:
        """Forget what is known of *container_id* (None: of every container)."""
        with self._cache_lock:
            self._generation += 1
            if container_id is None:
                self._cache.clear()
                self._changed.clear()
                self._forgotten = self._generation
                return
            self._cache.pop(container_id, None)
            self._changed[container_id] = self._generation
            self._changed.move_to_end(container_id)
            while len(self._changed) > _CACHE_SIZE:
                self._forgotten = self._changed.popitem(last=False)[1]

    def list_running(self, label_key: str | None) -> list[str]:
        """The containers whose task runs (Tasks.List)."""
        tasks = self._unary(TASKS_LIST, M.ListTasksRequest(), M.ListTasksResponse).tasks
        return [_task_id(t) for t in tasks if t.status in _RUNNING and t.pid > 0]

    def sync(self, label_key: str | None) -> dict[str, ContainerState]:
        """One Tasks.List and one Containers.List, joined."""
        tasks = self._unary(TASKS_LIST, M.ListTasksRequest(), M.ListTasksResponse).tasks
        running = {_task_id(t): int(t.pid) for t in tasks if t.status in _RUNNING and t.pid > 0}
        if not running:
            return {}
        generation = self._generation
        containers = self._unary(
            CONTAINERS_LIST, M.ListContainersRequest(), M.ListContainersResponse
        ).containers
        statics = {c.id: self._static(c) for c in containers if c.id in running}
        self._remember(statics, generation)
        return {cid: _with_process(st, running[cid]) for cid, st in statics.items()}

    def close(self) -> None:
        """Close the gRPC channel; later requests fail."""
        super().close()
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def describe_error(self, exc: BaseException) -> str:
        """The gRPC status and details, with a hint when containerd is not there."""
        grpc = self._grpc
        if isinstance(exc, grpc.RpcError):
            code = exc.code()
            text = f"{code.name}: {exc.details()}"
            if code == grpc.StatusCode.UNAVAILABLE:
                text += f" (is containerd running at {self.address}?)"
            return text
        return super().describe_error(exc)

    # -- reading containerd's answers -----------------------------------------

    def _static(self, c: Any) -> ContainerState:
        """Container *c* with no process: what does not change while it exists."""
        labels = dict(c.labels)
        spec: Mapping[str, Any] = {}
        if c.spec.value:
            try:
                loaded = json.loads(c.spec.value)
                spec = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                _log.warning("container %r: OCI spec is not JSON", c.id[:64])
        process = spec.get("process") or {}
        env = tuple(str(e) for e in (process.get("env") or ()))
        pod = None
        default_label = None
        if all(k in labels for k in POD_LABELS[:2]):
            pod = f"{labels[POD_LABELS[0]]}/{labels[POD_LABELS[1]]}"
            if labels.get(KIND_LABEL) == "sandbox":
                for k, v in (spec.get("annotations") or {}).items():
                    labels.setdefault(str(k), str(v))
                if self.pod_names:
                    default_label = pod
        return ContainerState(
            container_id=c.id,
            name=labels.get("io.kubernetes.container.name") or c.id,
            pid=0,
            running=False,
            created_ns=_ts_ns(c.created_at),
            started_at_ns=0,
            env=env,
            labels=labels,
            network_mode=_network_mode(spec),
            pod=pod,
            default_label=default_label,
        )


def _with_process(static: ContainerState, pid: int) -> ContainerState:
    """*static* with its task's process *pid* running."""
    return dataclasses.replace(
        static,
        pid=pid,
        running=True,
        started_at_ns=process_start_ns(pid),
        labels=dict(static.labels),  # each answer its own, as each inspect's
    )


def _task_id(t: Any) -> str:
    # Tasks.List fills in the init process's `id` (the container's ID) and
    # leaves `container_id` empty; be ready for either.
    return str(t.container_id or t.id)


def _network_mode(spec: Mapping[str, Any]) -> str:
    """``host`` without a network namespace, ``default`` for a new one, else ``netns:<path>``."""
    for ns in (spec.get("linux") or {}).get("namespaces") or ():
        if isinstance(ns, dict) and ns.get("type") == "network":
            path = ns.get("path")
            return f"netns:{path}" if path else "default"
    return "host" if spec else "default"
