"""A live map from microservice label to container, following a container runtime.

A container runs microservice ``L`` when its environment holds
``MICROSERVICE_LABEL=L`` (as in the Ligato agent) or, optionally, when it
carries a configured label.  :class:`MicroserviceTracker` keeps the map
current from the runtime's event stream and tells subscribers when a label
appears, disappears, restarts or is claimed twice.  The runtime is a
*source*: docker (the default), podman or containerd (see
:mod:`nslib.microservice.sources`)::

    with MicroserviceTracker() as tracker:
        ms = tracker.wait_for("vpp1", timeout=30)
        with ms.open_namespace() as ns:
            ...

How it stays right (each point answers a measured behaviour of dockerd):

* **Threads.**  A *reader* thread only iterates the event stream and queues
  what it reads (a daemon slows down for, then drops, a slow reader).  A
  few *worker* threads inspect containers and update the state, one
  container per worker at a time and each container's events in order, so
  a slow answer about one container delays no other; an event that only
  ends a run of a container the map does not hold, or says it was removed,
  needs no inspect at all.  A *dispatcher*
  thread runs the callbacks, so a slow or failing callback delays only other
  callbacks, never the state.
* **Subscribe, then sync.**  Every (re)connection subscribes with ``since``
  set a margin before the newest event seen, then queues a resync marker:
  the workers finish what they were doing, one of them lists and inspects
  the running containers and replaces the state with that truth; events
  that arrive meanwhile wait in the queue and are applied after it.
* **State, not events.**  Every event (docker's ``start``, ``die``, ``destroy``)
  triggers an ``inspect`` of its container, and the answer is the truth:
  late, duplicated (dropped by ``(timeNano, id, action)``) and reordered
  events are harmless, and ``kill``, crashes, self-exits and ``rm -f``
  (which send ``die`` but no ``stop``) are all seen.  The one exception is
  a start, whose delay users wait for: a source that knows the new run's
  state without asking (see
  :meth:`~nslib.microservice.Source.started`) answers it, and the
  tracker checks that the process runs in the container's cgroup first.
* **Never gives up.**  Any end of the stream other than :meth:`MicroserviceTracker.stop` is a
  disconnect: reconnect with backoff (0.1 s doubling to 2 s), replay with
  ``since`` where the runtime keeps history, and resync.  A missing daemon at start is not an error.
* **Never the wrong namespace.**  :meth:`Microservice.open_namespace` pins
  the process through a ``/proc/<pid>`` directory fd and checks its cgroup
  names the container before opening ``ns/net`` through that same fd.

The tracker reads PIDs from the runtime, so it must run in the host's PID
namespace (as root, to open other processes' namespaces).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

from .._docker_state import Change, EventKind, LabelTable, label_from
from ..errors import (
    DockerUnavailableError,
    UnavailableMicroserviceError,
)
from ._exits import Exited, ExitWatcher
from .model import Microservice, MicroserviceEvent, TrackerHealth, runs_in_container
from .sources.base import (
    ContainerState,
    EventStream,
    Source,
    SourceEvent,
    SourceNotFound,
)
from .sources.docker import DockerSource

__all__ = ["DEFAULT_LABEL_ENV", "MicroserviceTracker"]

_log = logging.getLogger("nslib.microservice")

DEFAULT_LABEL_ENV: Final = "MICROSERVICE_LABEL"
"""The environment variable that names a container's microservice."""

_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 2.0
_HEALTHY_STREAM = 5.0  # a stream that lived this long resets the backoff
_JOIN_TIMEOUT = 2.0
_DEDUPE_SIZE = 4096
# Workers inspecting containers: one container's inspect waits for none of
# the others' (a runtime can take long to answer about a container it is
# stopping or removing).
_WORKERS = 4


# ----------------------------------------------------------------------------
# Internal queue items


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_STOP = _Marker("stop")
_DISCONNECTED = _Marker("disconnected")


@dataclass(frozen=True, slots=True)
class _Resync:
    generation: int


@dataclass(slots=True)
class _Key:
    """A worker's job: the items of one container, in order."""

    container_id: str
    items: list[object]


@dataclass(slots=True)
class _Subscription:
    callback: Callable[[MicroserviceEvent], object]
    cancelled: bool = False
    running: bool = False  # a call is in progress (set and cleared under cond)
    cond: threading.Condition = field(default_factory=threading.Condition)


@dataclass(frozen=True, slots=True)
class _Subscribe:
    sub: _Subscription
    replay: tuple[MicroserviceEvent, ...]


@dataclass(slots=True)
class _Counters:
    last_error: str | None = None
    last_error_time: float | None = None
    reconnects: int = 0
    subscriptions: int = 0
    last_event_ns: int | None = None
    events_received: int = 0
    duplicates: int = 0
    resyncs: int = 0
    callback_errors: int = 0
    process_exits: int = 0
    starts_without_inspect: int = 0


@dataclass(slots=True)
class _AsyncWaiter:
    label: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Microservice | None]


# ----------------------------------------------------------------------------
# The tracker


class MicroserviceTracker:
    """Follows a container runtime and keeps a live ``label -> Microservice`` map.

    :param client: A ``docker.DockerClient`` (or ``docker.APIClient``), or a
        :class:`~nslib.microservice.sources.base.Source`.  The tracker does
        not close a client it was given.  None (the default, without
        *source*) follows docker: it builds a client from the environment
        (``DOCKER_HOST``, as ``docker.from_env``; a podman docker-compatible
        socket works too), lazily and retried, so a daemon that is not up
        yet is not an error.
    :param source: The runtime to follow: :class:`DockerSource`,
        :class:`PodmanSource` or :class:`ContainerdSource`.  Give either
        *client* or *source*.  A source follows one tracker: :meth:`stop`
        closes it (a docker client given to :class:`DockerSource` stays open).
    :param label_env: Environment variable naming the microservice; None
        disables env detection.
    :param label_key: Label key naming the microservice; None (the default)
        disables label detection.  With ``label_env=None`` the runtime may
        filter the events by this label.
    :param resync_interval: Seconds between safety-net resyncs while
        connected (list + inspect of all running containers, ~2 ms each);
        None disables them.
    :param since_margin: Seconds replayed before the newest event seen when
        reconnecting (events can be stamped slightly out of order).
    :param watch_processes: Hold a pidfd for every tracked container process
        and report STOPPED the moment one ends, even when the runtime's
        daemon is down or wedged and sends no event.
    :raises ValueError: no label rule, a bad interval or margin, or both
        *client* and *source*.

    Callbacks run on the tracker's dispatcher thread, one at a time, in the
    order the changes were found (so in order per label).  The state
    (:meth:`snapshot`, :meth:`get`) is updated *before* the callbacks for a
    change run.  A tracker runs once: after :meth:`stop` make a new one.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        source: Source | None = None,
        label_env: str | None = DEFAULT_LABEL_ENV,
        label_key: str | None = None,
        resync_interval: float | None = 300.0,
        since_margin: float = 2.0,
        watch_processes: bool = True,
    ) -> None:
        if not label_env and not label_key:
            raise ValueError("give label_env or label_key (or both)")
        if resync_interval is not None and resync_interval <= 0:
            raise ValueError(f"resync_interval must be positive or None, not {resync_interval!r}")
        if since_margin < 0:
            raise ValueError(f"since_margin must not be negative, not {since_margin!r}")
        if isinstance(client, Source):  # MicroserviceTracker(PodmanSource())
            if source is not None:
                raise ValueError("give client or source, not both")
            client, source = None, client
        if source is None:
            source = DockerSource(client)
        elif client is not None:
            raise ValueError("give client or source, not both")
        self._source: Source = source
        self._label_env = label_env or None
        self._label_key = label_key or None
        self._resync_interval = resync_interval
        self._margin_ns = int(since_margin * 1e9)

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._table: LabelTable[Microservice] = LabelTable()
        self._async_waiters: list[_AsyncWaiter] = []
        self._counters = _Counters()
        self._connected = False
        self._in_sync = False
        self._synced_once = False
        self._generation = 0

        # Work for the workers, and which container each of them works on.
        self._work = threading.Condition(threading.Lock())
        self._items: deque[object] = deque()
        self._busy: dict[str, list[object]] = {}  # cid -> its items waiting for its job
        self._running = 0  # jobs in progress
        self._barrier = False  # a resync runs, or waits for the jobs to end
        self._resync_due: float | None = None  # monotonic time of a retry or periodic resync
        self._retry = _BACKOFF_MIN
        self._seen: OrderedDict[tuple[object, object, object], None] = OrderedDict()
        self._dispatch_q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._started = False
        self._stream_lock = threading.Lock()
        self._stream: EventStream | None = None
        self._max_seen_ns: int | None = None
        self._reconnect_gate: threading.Event | None = None
        self._threads: list[threading.Thread] = []
        self._dispatcher: threading.Thread | None = None
        self._watch_processes = watch_processes
        self._watcher: ExitWatcher | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> Self:
        """Start following the daemon; returns at once (see :meth:`wait_in_sync`).

        A daemon that cannot be reached is not an error: the tracker keeps
        trying and :meth:`health` says why it is not in sync.

        :raises RuntimeError: the tracker was started before.
        """
        with self._lock:
            if self._started:
                raise RuntimeError("this MicroserviceTracker was started already")
            self._started = True
        self._dispatcher = threading.Thread(
            target=self._dispatch_main, name="nslib-ms-dispatch", daemon=True
        )
        self._threads = [
            self._dispatcher,
            *(
                threading.Thread(target=self._worker_main, name="nslib-ms-worker", daemon=True)
                for _ in range(_WORKERS)
            ),
            threading.Thread(target=self._reader_main, name="nslib-ms-reader", daemon=True),
        ]
        if self._watch_processes:
            self._watcher = ExitWatcher(self._post)
            self._watcher.start()
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop following the daemon and end every tracker thread.  Idempotent.

        Closes the event stream from this thread (the blocked reader wakes at
        once), drops callbacks not yet delivered, and waits for the threads.
        No callback starts after this returns.  A callback that is running
        delays the return until it finishes (up to 2 s), unless ``stop`` is
        called from inside that callback.
        """
        with self._lock:
            self._stopping.set()
            self._in_sync = False
            self._connected = False
            self._changed.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        for w in waiters:
            self._resolve_async(w, None)
        self._close_stream()
        with self._work:
            self._work.notify_all()
        self._dispatch_q.put(_STOP)
        gate = self._reconnect_gate
        if gate is not None:
            gate.set()
        me = threading.current_thread()
        if self._watcher is not None:
            self._watcher.close()
        self._source.close()  # after this, a worker call in flight fails fast
        for t in self._threads:
            if t is not me:
                t.join(_JOIN_TIMEOUT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- queries --------------------------------------------------------------

    @property
    def in_sync(self) -> bool:
        """Connected, and the map reflects the daemon as of the last (re)connection."""
        return self._in_sync

    def wait_in_sync(self, timeout: float | None = None) -> bool:
        """Wait until :attr:`in_sync` (or *timeout* seconds); return :attr:`in_sync`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self._in_sync and not self._stopping.is_set():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._changed.wait(remaining)
            return self._in_sync

    def get(self, label: str, timeout: float | None = 5.0) -> Microservice | None:
        """The container holding *label*, or None if no running container does.

        Waits for the first sync (at most *timeout* seconds; None waits as
        long as it takes).  After that it answers at once from the map, which
        may lag reality while the daemon is unreachable (see :meth:`health`)
        and is frozen after :meth:`stop`.

        :raises DockerUnavailableError: the tracker has never been in sync
            (the daemon was unreachable for the whole *timeout*).
        :raises RuntimeError: the tracker was never started.
        """
        self._check_started()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self._synced_once and not self._stopping.is_set():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._changed.wait(remaining)
            if not self._synced_once:
                raise DockerUnavailableError(self._not_synced_reason())
            return self._table.winner(label)

    def wait_for(self, label: str, timeout: float | None) -> Microservice:
        """Wait until a running container holds *label*, and return it.

        :raises UnavailableMicroserviceError: nothing holds it after *timeout*
            seconds, or the tracker was stopped.
        :raises DockerUnavailableError: the tracker never got in sync with the
            daemon within *timeout*.
        :raises RuntimeError: the tracker was never started.
        """
        self._check_started()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                ms = self._table.winner(label)
                if ms is not None:
                    return ms
                remaining = None if deadline is None else deadline - time.monotonic()
                if self._stopping.is_set() or (remaining is not None and remaining <= 0):
                    raise self._wait_error(label, timeout)
                self._changed.wait(remaining)

    async def wait_for_async(self, label: str, timeout: float | None) -> Microservice:
        """Asyncio twin of :meth:`wait_for`; never blocks the event loop.

        Cancelling the awaiting task is safe.
        """
        self._check_started()
        loop = asyncio.get_running_loop()
        with self._lock:
            ms = self._table.winner(label)
            if ms is not None:
                return ms
            if self._stopping.is_set():
                raise self._wait_error(label, timeout)
            fut: asyncio.Future[Microservice | None] = loop.create_future()
            waiter = _AsyncWaiter(label, loop, fut)
            self._async_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                result = await waiter.future
        except TimeoutError:
            raise self._wait_error(label, timeout) from None
        finally:
            with self._lock:
                if waiter in self._async_waiters:
                    self._async_waiters.remove(waiter)
        if result is None:  # stopped
            raise self._wait_error(label, timeout)
        return result

    def snapshot(self) -> dict[str, Microservice]:
        """A copy of the current map: label -> the container holding it."""
        with self._lock:
            return self._table.winners()

    def claimants(self, label: str) -> tuple[Microservice, ...]:
        """Every running container claiming *label*, the holder first."""
        with self._lock:
            return self._table.claimants(label)

    def health(self) -> TrackerHealth:
        """Connection and sync state, the last error, and counters."""
        with self._lock:
            c = self._counters
            return TrackerHealth(
                started=self._started,
                stopped=self._stopping.is_set(),
                connected=self._connected,
                in_sync=self._in_sync,
                synced_once=self._synced_once,
                last_error=c.last_error,
                last_error_time=c.last_error_time,
                reconnects=c.reconnects,
                last_event_time=None if c.last_event_ns is None else c.last_event_ns / 1e9,
                events_received=c.events_received,
                duplicates_dropped=c.duplicates,
                resyncs=c.resyncs,
                callback_errors=c.callback_errors,
                process_exits=c.process_exits,
                starts_without_inspect=c.starts_without_inspect,
            )

    # -- subscriptions --------------------------------------------------------

    def subscribe(
        self, callback: Callable[[MicroserviceEvent], object], *, replay: bool = False
    ) -> Callable[[], None]:
        """Call *callback* with every later :class:`MicroserviceEvent`; return an unsubscriber.

        With *replay*, the callback first gets a STARTED (and a CONFLICT where
        several containers claim a label) for every label held right now,
        consistent with the events that follow: nothing missed, nothing twice.

        Callbacks run on the dispatcher thread (see the class docs); any
        exception a callback raises (``SystemExit`` and ``KeyboardInterrupt``
        included) is logged to the ``nslib.microservice`` logger and counted
        in :meth:`health`, and the tracker carries on delivering to every
        subscriber.

        The returned function (idempotent) cancels the subscription: once it
        returns, no call of *callback* is running and none will start.  It
        waits for a call in progress, so do not call it while holding a lock
        the callback takes.  Called from inside a callback (the dispatcher
        thread, which runs one callback at a time) it does not wait: the
        current call simply runs to its end.
        """
        sub = _Subscription(callback)
        with self._lock:
            # Under the state lock, so the replay sits exactly at this point
            # of the change sequence the dispatcher delivers.
            events: list[MicroserviceEvent] = []
            if replay:
                for label, ms in sorted(self._table.winners().items()):
                    events.append(MicroserviceEvent(EventKind.STARTED, label, ms))
                    claim = self._table.claimants(label)
                    if len(claim) >= 2:
                        events.append(MicroserviceEvent(EventKind.CONFLICT, label, ms, claim))
            self._dispatch_q.put(_Subscribe(sub, tuple(events)))

        def unsubscribe() -> None:
            with sub.cond:
                # The dispatcher checks `cancelled` and marks a call `running`
                # under this same lock: from here on no call starts.
                sub.cancelled = True
                if threading.current_thread() is not self._dispatcher:
                    sub.cond.wait_for(lambda: not sub.running)

        return unsubscribe

    # -- internals: helpers -----------------------------------------------------

    def _check_started(self) -> None:
        if not self._started:
            raise RuntimeError("the MicroserviceTracker is not started (call start())")

    def _not_synced_reason(self) -> str:
        if self._stopping.is_set():
            return "the microservice tracker was stopped before it ever got in sync"
        why = self._counters.last_error or "the first sync has not finished"
        return f"the microservice tracker is not in sync with {self._source.name}: {why}"

    def _wait_error(self, label: str, timeout: float | None) -> Exception:
        if not self._synced_once:
            return DockerUnavailableError(self._not_synced_reason())
        if self._stopping.is_set():
            return UnavailableMicroserviceError(
                f"microservice {label!r}: the tracker was stopped while waiting"
            )
        return UnavailableMicroserviceError(
            f"microservice {label!r}: no running container holds it after {timeout} s"
        )

    def _note_error(self, message: str) -> None:
        with self._lock:
            repeated = message == self._counters.last_error
            self._counters.last_error = message
            self._counters.last_error_time = time.time()
        # A daemon that stays down would otherwise log the same line every 2 s.
        _log.log(logging.DEBUG if repeated else logging.WARNING, "%s", message)

    @property
    def source(self) -> Source:
        """The runtime this tracker follows."""
        return self._source

    # -- internals: reader ----------------------------------------------------

    def _reader_main(self) -> None:
        backoff = _BACKOFF_MIN
        what = self._source.name
        while not self._stopping.is_set():
            opened_at = time.monotonic()
            try:
                stream = self._open_stream()
            except Exception as e:
                self._note_error(
                    f"cannot subscribe to {what} events: {self._source.describe_error(e)}"
                )
                stream = None
            if stream is not None:
                self._read(stream)
                if self._stopping.is_set():
                    break
                self._note_error(f"{what} event stream ended (daemon restarted or connection lost)")
                if time.monotonic() - opened_at >= _HEALTHY_STREAM:
                    backoff = _BACKOFF_MIN
            self._post(_DISCONNECTED)
            if self._stopping.wait(backoff):
                break
            backoff = min(backoff * 2, _BACKOFF_MAX)
            gate = self._reconnect_gate
            if gate is not None:  # test hook, see _force_reconnect
                gate.wait()
                self._reconnect_gate = None

    def _open_stream(self) -> EventStream | None:
        src = self._source
        since_ns: int | None = None
        if src.replays:
            if self._max_seen_ns is not None:
                since_ns = self._max_seen_ns - self._margin_ns
            else:
                since_ns = src.now_ns() - self._margin_ns
        # Only in label-key-only mode may the runtime filter: env is not
        # filterable, and label filters are ANDed.
        key = self._label_key if self._label_env is None else None
        stream = src.subscribe(since_ns, key)
        with self._stream_lock:
            if self._stopping.is_set():
                _close_quietly(stream)
                return None
            self._stream = stream
        with self._lock:
            c = self._counters
            c.subscriptions += 1
            if c.subscriptions > 1:
                c.reconnects += 1
            self._generation += 1
            self._connected = True
            self._post(_Resync(self._generation))
        return stream

    def _read(self, stream: EventStream) -> None:
        put = self._post
        counters = self._counters
        try:
            for ev in stream:
                # Nothing slow here: a reader that lags makes a daemon drop
                # events (and slows every other client down).
                t = ev.time_ns
                if t is not None and (self._max_seen_ns is None or t > self._max_seen_ns):
                    self._max_seen_ns = t
                    counters.last_event_ns = t
                counters.events_received += 1
                put(ev)
        except Exception as e:  # a broken connection: a disconnect like any other
            if not self._stopping.is_set():  # else: stop() closed the stream under us
                self._note_error(
                    f"reading {self._source.name} events failed: {self._source.describe_error(e)}"
                )
        finally:
            with self._stream_lock:
                self._stream = None
            _close_quietly(stream)
            with self._lock:
                self._connected = False
                self._in_sync = False
                self._changed.notify_all()

    def _close_stream(self) -> None:
        with self._stream_lock:
            stream = self._stream
        if stream is not None:
            _close_quietly(stream)

    def _force_reconnect(self, gate: threading.Event | None = None) -> None:
        """Test hook: drop the event stream as a network failure would.

        With *gate*, the reader does not reconnect until the gate is set (or
        the tracker stops), so a test can make changes the stream misses.
        """
        self._reconnect_gate = gate
        self._close_stream()

    # -- internals: worker ------------------------------------------------------

    def _post(self, item: object) -> None:
        """Queue *item* for the workers (never blocks for long: the reader calls it)."""
        with self._work:
            self._items.append(item)
            self._work.notify()

    def _worker_main(self) -> None:
        while True:
            job = self._take()
            if job is None:
                return
            if isinstance(job, _Key):
                self._run_key(job)
            else:
                self._run_resync(job)

    def _take(self) -> _Key | _Resync | None:
        """The next piece of work for this worker (None: the tracker stops).

        Work on one container is one job at a time, in the order its items
        came: what arrives meanwhile waits with that job, which takes it
        next.  A resync is a barrier: it waits until no job runs, and no job
        starts until it ends, so events queued after it are applied after it.
        """
        w = self._work
        with w:
            while True:
                if self._stopping.is_set():
                    return None
                if self._barrier:  # a resync runs, or waits for the jobs to end
                    w.wait()
                    continue
                due = self._resync_due
                item: object
                if due is not None and time.monotonic() >= due:
                    item = None  # due now, even if events keep coming
                elif self._items:
                    item = self._items.popleft()
                else:
                    w.wait(None if due is None else max(0.0, due - time.monotonic()))
                    continue
                if item is None or isinstance(item, _Resync):
                    if item is None:
                        self._resync_due = None
                        # Read without self._lock, which is taken before
                        # self._work elsewhere (a reconnection posts its
                        # own resync anyway).
                        if not self._connected:
                            continue  # the next connection resyncs anyway
                        item = _Resync(self._generation)
                    assert isinstance(item, _Resync)
                    self._barrier = True
                    while self._running and not self._stopping.is_set():
                        w.wait()
                    return item
                if item is _DISCONNECTED:
                    self._resync_due = None
                    continue
                if isinstance(item, SourceEvent):
                    key = (item.time_ns, item.container_id, item.action)
                    seen = self._seen
                    if key in seen:
                        self._counters.duplicates += 1
                        continue
                    seen[key] = None
                    if len(seen) > _DEDUPE_SIZE:
                        seen.popitem(last=False)
                    cid = item.container_id
                elif isinstance(item, Exited):
                    cid = item.container_id
                else:
                    continue  # _STOP: the loop's check ends it
                waiting = self._busy.get(cid)
                if waiting is not None:
                    waiting.append(item)
                    continue
                self._busy[cid] = []
                self._running += 1
                return _Key(cid, [item])

    def _run_key(self, job: _Key) -> None:
        """Apply the items of one container, then those that came meanwhile."""
        items = job.items
        while True:
            ok = False
            try:
                ok = self._apply_items(job.container_id, items)
            except Exception:  # a bug: the resync below repairs the state
                _log.exception("applying the events of container %r failed", job.container_id[:64])
            finally:  # the container and a waiting resync must never hang
                with self._work:
                    if not ok:  # repair by resync, now
                        now = time.monotonic()
                        if self._resync_due is None or self._resync_due > now:
                            self._resync_due = now
                    items = self._busy[job.container_id]
                    done = not items or self._stopping.is_set()
                    if done:
                        del self._busy[job.container_id]
                        self._running -= 1
                        self._work.notify_all()  # a resync may wait for this
                    else:
                        self._busy[job.container_id] = []
            if done:
                return

    def _apply_items(self, cid: str, items: list[object]) -> bool:
        ok = True
        events: list[SourceEvent] = []
        for item in items:
            if isinstance(item, SourceEvent):
                events.append(item)  # consecutive events: one inspect
                continue
            if events:
                ok = self._apply_events(cid, events) and ok
                events = []
            assert isinstance(item, Exited)
            self._apply_exit(item)
        if events:
            ok = self._apply_events(cid, events) and ok
        return ok

    def _run_resync(self, item: _Resync) -> None:
        ok = self._resync(item.generation)
        with self._work:
            self._barrier = False
            if ok:
                self._retry = _BACKOFF_MIN
                self._resync_due = self._next_periodic()
            else:
                self._resync_due = time.monotonic() + self._retry
                self._retry = min(self._retry * 2, _BACKOFF_MAX)
            self._work.notify_all()

    def _next_periodic(self) -> float | None:
        if self._resync_interval is None:
            return None
        return time.monotonic() + self._resync_interval

    def _microservice(self, st: ContainerState) -> Microservice | None:
        if not st.running or st.pid <= 0:
            return None  # exited, restarting, or not started yet
        label = label_from(st.env, st.labels, self._label_env, self._label_key)
        if label is None:
            label = st.default_label
        if label is None:
            return None
        try:
            return Microservice(
                label=label,
                container_id=st.container_id,
                name=st.name,
                pid=st.pid,
                created_ns=st.created_ns,
                started_at_ns=st.started_at_ns,
                network_mode=st.network_mode,
                source=self._source.name,
                pod=st.pod,
            )
        except ValueError as e:
            _log.warning("ignoring container %r: %s", st.container_id[:64], e)
            return None

    def _apply_events(self, cid: str, events: list[SourceEvent]) -> bool:
        """Events of container *cid*: learn its state and apply it; False if that failed."""
        src = self._source
        cause = {cid: max(ev.time_ns or 0 for ev in events)}
        actions = {ev.action for ev in events}
        gone = False
        st: ContainerState | None = None
        if actions <= src.end_actions | src.gone_actions:
            # Only ends of runs, or removal: nothing can have started.
            if actions & src.gone_actions:
                gone = True
            else:
                with self._lock:
                    if self._table.get(cid) is None:
                        return True  # not held (the pidfd saw the exit first, or unlabelled)
        if not gone:
            if self._stopping.is_set():
                return True
            if events[-1].action in src.start_actions:
                st = self._quick_start(events[-1])
        if not gone and st is None:
            try:
                st = src.inspect(cid)
            except SourceNotFound:
                gone = True
            except Exception as e:  # state unknown: leave it, a resync will repair it
                self._note_error(f"inspecting container {cid[:12]} failed: {src.describe_error(e)}")
                return False
        ms = None if st is None else self._microservice(st)
        with self._lock:
            # stop() (which sets _stopping under this lock) may have run
            # while we inspected: the map stays as stop() left it.
            if self._stopping.is_set():
                return True
            changes = self._table.update({cid: ms})
            if gone:
                self._table.forget([cid])
            self._publish(changes, cause)
        self._watch_one(cid, ms)
        return True

    def _quick_start(self, ev: SourceEvent) -> ContainerState | None:
        """The source's own answer for a start (see ``Source.started``), if it holds."""
        try:
            st = self._source.started(ev)
        except Exception:  # the inspect after it is the answer
            _log.debug("%s: no quick state for %r", self._source.name, ev.container_id[:64])
            return None
        if st is None or st.container_id != ev.container_id or not st.running or st.pid <= 0:
            return None
        # The PID must be this container's process now: not one that ended
        # (the inspect will tell) and not a stranger that reused the number.
        if not runs_in_container(st.pid, ev.container_id):
            return None
        with self._lock:
            self._counters.starts_without_inspect += 1
        return st

    def _resync(self, generation: int) -> bool:
        key = self._label_key if self._label_env is None else None
        try:
            states = self._source.sync(key)
        except Exception as e:
            if self._stopping.is_set():
                return True
            self._note_error(
                f"resync with {self._source.name} failed: {self._source.describe_error(e)}"
            )
            return False
        running: dict[str, Microservice] = {}
        for cid, st in states.items():
            ms = self._microservice(st)
            if ms is not None:
                running[cid] = ms
        with self._lock:
            if self._stopping.is_set():  # as in _apply_events: frozen at stop()
                return True
            changes = self._table.replace(running)
            self._counters.resyncs += 1
            self._publish(changes, {})
            if generation == self._generation and self._connected:
                self._in_sync = True
                self._synced_once = True
            self._changed.notify_all()
        self._watch()
        return True

    def _watch(self) -> None:
        """Make the pidfd watcher follow exactly the runs in the table."""
        if self._watcher is None:
            return
        with self._lock:
            runs = [(ms.container_id, ms.pid) for ms in self._table.instances()]
        now = time.time_ns()
        for cid, pid in self._watcher.track(runs):
            self._post(Exited(cid, pid, now))

    def _watch_one(self, cid: str, ms: Microservice | None) -> None:
        """Make the pidfd watcher follow container *cid*'s run in the table, if any."""
        if self._watcher is None:
            return
        now = time.time_ns()
        for gone_cid, pid in self._watcher.update({cid: None if ms is None else ms.pid}):
            self._post(Exited(gone_cid, pid, now))

    def _apply_exit(self, ex: Exited) -> None:
        """A tracked process ended: that run is over, whatever the daemon says (or not)."""
        with self._lock:
            if self._stopping.is_set():
                return
            current = self._table.get(ex.container_id)
            if current is None or current.pid != ex.pid:
                return  # already known, or a newer run
            changes = self._table.update({ex.container_id: None})
            self._counters.process_exits += 1
            self._publish(changes, {ex.container_id: ex.time_ns})

    def _publish(self, changes: list[Change[Microservice]], cause: Mapping[str, int]) -> None:
        # Caller holds self._lock: state change and queueing are one step,
        # which subscribe(replay=True) relies on.
        if not changes:
            return
        for ch in changes:
            ev = MicroserviceEvent(
                ch.kind,
                ch.label,
                ch.subject,
                ch.claimants,
                cause.get(ch.subject.container_id) or None,
            )
            if ch.kind is EventKind.CONFLICT:
                _log.warning(
                    "microservice %r is claimed by %d running containers; %s (%s) wins",
                    ch.label,
                    len(ch.claimants),
                    ch.subject.name,
                    ch.subject.container_id[:12],
                )
            self._dispatch_q.put(ev)
        self._changed.notify_all()
        if self._async_waiters:
            still = []
            for w in self._async_waiters:
                ms = self._table.winner(w.label)
                if ms is None:
                    still.append(w)
                else:
                    self._resolve_async(w, ms)
            self._async_waiters = still

    @staticmethod
    def _resolve_async(w: _AsyncWaiter, ms: Microservice | None) -> None:
        def resolve() -> None:
            if not w.future.done():
                w.future.set_result(ms)

        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            w.loop.call_soon_threadsafe(resolve)

    # -- internals: dispatcher --------------------------------------------------

    def _dispatch_main(self) -> None:
        subs: list[_Subscription] = []
        while True:
            item = self._dispatch_q.get()
            if item is _STOP or self._stopping.is_set():
                return
            if isinstance(item, _Subscribe):
                subs.append(item.sub)
                for ev in item.replay:
                    self._deliver(item.sub, ev)
                continue
            assert isinstance(item, MicroserviceEvent)
            for sub in list(subs):
                if sub.cancelled:
                    subs.remove(sub)
                else:
                    self._deliver(sub, item)

    def _deliver(self, sub: _Subscription, ev: MicroserviceEvent) -> None:
        with sub.cond:  # see unsubscribe(): check and mark as one step
            if sub.cancelled or self._stopping.is_set():
                return
            sub.running = True
        try:  # not under sub.cond: the callback may unsubscribe itself
            sub.callback(ev)
        except BaseException:
            # BaseException too: a callback's SystemExit or KeyboardInterrupt
            # would otherwise end this thread, and with it every delivery and
            # every pending configuration, while health() still looked fine.
            _log.exception("microservice callback %r failed on %s", sub.callback, ev.kind.name)
            with self._lock:
                self._counters.callback_errors += 1
        finally:
            with sub.cond:
                sub.running = False
                sub.cond.notify_all()

    def __repr__(self) -> str:
        h = self.health()
        state = "stopped" if h.stopped else "in sync" if h.in_sync else "not in sync"
        return f"<MicroserviceTracker {state}, {len(self.snapshot())} labels>"


def _close_quietly(stream: EventStream) -> None:
    with contextlib.suppress(Exception):  # closing twice, or a half-torn-down socket
        stream.close()
