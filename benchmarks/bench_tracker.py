"""Microservice tracker: how fast a container is seen, the initial sync, bursts and stops,
for each runtime (docker, podman, containerd) side by side in one run.

Every runtime is private, started here from the test suite's harnesses
(``tests/dockerd.py``, ``tests/podmand.py``, ``tests/containerd_harness.py``,
loaded by ``benchmarks._harness``) and torn down at the end; containers have
no network (``--network none`` or a bare namespace of their own) and carry
a unique label prefix.

Groups, per runtime:

* ``initial sync of N running containers``: ``MicroserviceTracker`` from
  ``start()`` until ``in_sync`` (subscribe, list, inspect or join, and a
  pidfd per process) against that runtime's bare listing on the same
  transport (the floor): docker and podman list + inspect each container
  (plain HTTP on the unix socket),
  containerd one task list + one container list with each OCI spec
  decoded (where the environment is).
* ``start -> callback (p95), idle`` and ``... while 100 others churn``: from
  the runtime's own ``start`` event time (read from a second, raw event
  stream) to the subscriber's callback, beside the runtime's own delivery
  (that raw stream's arrival time: a floor no subscriber can beat).
  Churn: 100 other labelled containers are removed and started again in
  rotation, 2 per second, meanwhile.
* ``burst of B starts, pending veth each``: B veth pairs are declared for
  microservices that do not run yet, then B containers are started at once
  (4 at a time); the time from the last start returning to the last veth
  APPLIED.
* docker only: the detection latency of a once-a-second poller beside the
  tracker's; the stop of a killed container seen through the pidfd watcher
  vs through the daemon's ``die`` event; and ``Microservice.open_namespace``
  through ``PIDFD_GET_NET_NAMESPACE`` vs the ``/proc`` directory fd.

Options (after ``--quick`` if any): ``--containers N`` (default 500, 50 with
``--quick``), ``--burst B`` (default 200, 40 with ``--quick``),
``--runtimes docker,podman,containerd``.

Targets: detection p95 under 10 ms; initial sync within 1.3x of the floor.
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import nslib
from benchmarks._harness import Result, Target, main, percentile

G_DETECT = "microservice detection latency (p95)"
G_SYNC = "initial sync of running containers"
LABEL_ENV = "MICROSERVICE_LABEL"
CHURN_RATE = 2.0
"""Restarts per second among the churning containers (all runtimes alike)."""


class StartStamps:
    """A raw event stream recording the daemon's ``start`` timeNano per container."""

    def __init__(self, client: Any) -> None:
        self._stream = client.api.events(
            filters={"type": "container", "event": "start"}, decode=True
        )
        self.stamps: dict[str, int] = {}
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="bench-starts", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for ev in self._stream:
            with self._cond:
                self.stamps.setdefault(ev["Actor"]["ID"], ev["timeNano"])
                self._cond.notify_all()

    def get(self, cid: str, timeout: float = 10.0) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: cid in self.stamps, timeout):
                raise RuntimeError(f"no start event for {cid[:12]}")
            return self.stamps[cid]

    def close(self) -> None:
        self._stream.close()
        self._thread.join(5)


def _wait(cond: threading.Condition, pred: Any, timeout: float, what: str) -> None:
    with cond:
        if not cond.wait_for(pred, timeout):
            raise RuntimeError(f"benchmark timed out waiting for {what}")


def polling_latencies(
    client: Any, stamps: StartStamps, tag: str, n: int, interval: float = 1.0
) -> list[float]:
    """The same, seen by a poller that lists and inspects everything every *interval*."""
    from benchmarks._harness import run_container

    seen: dict[str, int] = {}
    cond = threading.Condition()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            for entry in client.api.containers():
                info = client.api.inspect_container(entry["Id"])
                env = info["Config"]["Env"] or []
                if info["State"]["Running"] and any(e.startswith(LABEL_ENV + "=") for e in env):
                    with cond:
                        if info["Id"] not in seen:
                            seen[info["Id"]] = time.time_ns()
                            cond.notify_all()
            stop.wait(max(0.0, interval - (time.monotonic() - t0)))

    poller = threading.Thread(target=poll, name="bench-poller", daemon=True)
    poller.start()
    rng = random.Random(1)
    containers = []
    try:
        for i in range(n):
            time.sleep(rng.random() * interval)  # no phase lock with the poller
            c = run_container(client, label=f"{tag}-p{i}", name=f"{tag}-p{i}")
            containers.append(c)
            _wait(cond, lambda c=c: c.id in seen, 10, f"the poller to see {c.name}")
    finally:
        stop.set()
        poller.join(10)
        for c in containers:
            client.api.remove_container(c.id, force=True)
    return [(seen[c.id] - stamps.get(c.id)) / 1e9 for c in containers]


def _ms(x: float) -> float:
    return round(x * 1e3, 3)


# ----------------------------------------------------------------------------
# Runtimes: start, remove, a fresh source, a raw event source, the floor


class _Runtime:
    name = "?"

    def source(self) -> Any:
        raise NotImplementedError

    def start(self, label: str, name: str) -> str:
        raise NotImplementedError

    def remove(self, cid: str) -> None:
        raise NotImplementedError

    def remove_many(self, ids: list[str]) -> None:
        _parallel(self.remove, ids)

    def kill(self, cid: str) -> None:
        raise NotImplementedError

    def floor(self) -> int:
        """The bare listing of every running container: how many."""
        raise NotImplementedError

    def api_source(self) -> Any:
        """A source on the runtime's API event stream when :meth:`source` reads
        something else (podman's events file), for a row of its own; or None."""
        return None

    def close(self) -> None:
        pass


class _Docker(_Runtime):
    name = "docker"

    def __init__(self, d: Any) -> None:
        from benchmarks._harness import run_container
        from nslib.microservice.sources._http import UnixHTTP

        self._run = run_container
        self.client = d.client()
        # The floor on the transport the tracker uses: HTTP on the unix socket
        # (the SDK's own layers cost about 0.5 ms of CPU more per inspect).
        self._http = UnixHTTP(d.base_url, 30.0)
        self._version = self.client.api._version

    def source(self) -> Any:
        return nslib.DockerSource(self.client)

    def start(self, label: str, name: str) -> str:
        return str(self._run(self.client, label=label, name=name).id)

    def remove(self, cid: str) -> None:
        self.client.api.remove_container(cid, force=True)

    def kill(self, cid: str) -> None:
        self.client.api.kill(cid)

    def floor(self) -> int:
        v = f"/v{self._version}"
        ids = [e["Id"] for e in self._http.get_json(f"{v}/containers/json")]
        return len([self._http.get_json(f"{v}/containers/{i}/json") for i in ids])

    def close(self) -> None:
        self._http.close()
        self.client.close()


class _Podman(_Runtime):
    name = "podman"

    def __init__(self, p: Any) -> None:
        from nslib.microservice.sources._http import UnixHTTP

        self.p = p
        self._http = UnixHTTP(p.url, 30.0)

    def source(self) -> Any:
        return nslib.PodmanSource(self.p.url)

    def api_source(self) -> Any:
        return nslib.PodmanSource(self.p.url, events_file=None)

    def start(self, label: str, name: str) -> str:
        return str(self.p.run(label, name=name))

    def remove(self, cid: str) -> None:
        self.p.cli("rm", "-f", "-t", "0", cid, check=False)

    def remove_many(self, ids: list[str]) -> None:
        chunks = [ids[i : i + 25] for i in range(0, len(ids), 25)]  # one podman call per 25
        _parallel(lambda c: self.p.cli("rm", "-f", "-t", "0", *c, check=False, timeout=600), chunks)

    def kill(self, cid: str) -> None:
        self.p.cli("kill", cid)

    def floor(self) -> int:
        api = "/v4.0.0/libpod"
        ids = [e["Id"] for e in self._http.get_json(f"{api}/containers/json")]
        return len([self._http.get_json(f"{api}/containers/{i}/json") for i in ids])

    def close(self) -> None:
        self._http.close()


class _Containerd(_Runtime):
    name = "containerd"

    def __init__(self, c: Any) -> None:
        self.c = c
        self._raw = nslib.ContainerdSource(c.address, "default")

    def source(self) -> Any:
        return nslib.ContainerdSource(self.c.address, "default")

    def start(self, label: str, name: str) -> str:
        return str(self.c.run(label, cid=name))

    def remove(self, cid: str) -> None:
        self.c.remove(cid)

    def kill(self, cid: str) -> None:
        self.c.kill(cid)

    def floor(self) -> int:
        from nslib.microservice.sources import _containerd_api as m

        tasks = self._raw._unary(m.TASKS_LIST, m.M.ListTasksRequest(), m.M.ListTasksResponse)
        conts = self._raw._unary(
            m.CONTAINERS_LIST, m.M.ListContainersRequest(), m.M.ListContainersResponse
        )
        running = {t.container_id or t.id for t in tasks.tasks if t.pid > 0}
        # The OCI spec holds the environment: decoding it is part of the floor,
        # as docker's and podman's inspect answers are decoded JSON.
        return len([json.loads(c.spec.value) for c in conts.containers if c.id in running])

    def close(self) -> None:
        self._raw.close()


class RawStarts:
    """A second, raw event stream of *rt*: the runtime's own start time per container.

    A stream that ends on its own (a daemon may drop a subscriber, podman's
    API stream may end when its events log is rotated) is opened again,
    replaying from the last event seen where the runtime can.
    """

    _START = {"start", "/tasks/start"}

    def __init__(self, rt: _Runtime, source: Any = None) -> None:
        self._src = source if source is not None else rt.source()
        self._stream = self._src.subscribe(None, None)
        self._closed = False
        self.reconnects = 0
        self.stamps: dict[str, int] = {}
        self.arrivals: dict[str, int] = {}  # when this raw stream got the event
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="bench-starts", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        stream, last = self._stream, None
        while True:
            try:
                for ev in stream:
                    now = time.time_ns()
                    if ev.time_ns is not None:
                        last = ev.time_ns if last is None else max(last, ev.time_ns)
                    if ev.action in self._START and ev.time_ns is not None:
                        with self._cond:
                            self.stamps.setdefault(ev.container_id, ev.time_ns)
                            self.arrivals.setdefault(ev.container_id, now)
                            self._cond.notify_all()
            except Exception:
                pass  # closed, or broken: see below
            while True:
                with self._cond:
                    if self._closed:
                        return
                time.sleep(0.1)
                since = last - 1_000_000_000 if last is not None and self._src.replays else None
                try:
                    stream = self._src.subscribe(since, None)
                except Exception:
                    continue
                with self._cond:
                    if self._closed:
                        stream.close()
                        return
                    self._stream = stream
                    self.reconnects += 1
                break

    def get(self, cid: str, timeout: float = 10.0) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: cid in self.stamps, timeout):
                raise RuntimeError(f"no start event for {cid[:12]}")
            return self.stamps[cid]

    def delivery(self, ids: list[str], timeout: float = 10.0) -> tuple[list[float], int]:
        """Seconds from each container's start to its event's arrival here, and how
        many of *ids* never arrived (waiting *timeout* seconds in all)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.wait_for(
                lambda: all(c in self.stamps for c in ids), max(0.0, deadline - time.monotonic())
            )
            got = [c for c in ids if c in self.stamps]
            return [(self.arrivals[c] - self.stamps[c]) / 1e9 for c in got], len(ids) - len(got)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            stream = self._stream
        stream.close()
        self._thread.join(5)
        self._src.close()


def _parallel(fn: Any, items: list[Any], workers: int = 4) -> list[Any]:
    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(fn, items))


def _tracker(rt: _Runtime, **kw: Any) -> Any:
    t = nslib.MicroserviceTracker(source=rt.source(), resync_interval=None, **kw)
    return t


def rt_latencies(
    rt: _Runtime, stamps: RawStarts, tag: str, n: int, api: RawStarts | None = None
) -> tuple[list[float], list[float], tuple[list[float], int], int]:
    """Start *n* labelled containers one by one.

    :returns: seconds from the runtime's start event time to the callback,
        and from that time to the event's arrival on a raw stream (the
        runtime's own delivery, which the tracker cannot beat), and the
        same on *api*'s stream with how many never came on it (empty and 0
        without one); and how many starts
        the tracker answered without an inspect.
    """
    seen: dict[str, int] = {}
    cond = threading.Condition()

    def on_event(ev: nslib.MicroserviceEvent) -> None:
        now = time.time_ns()
        if ev.kind is nslib.EventKind.STARTED and ev.label.startswith(tag):
            with cond:
                seen.setdefault(ev.microservice.container_id, now)
                cond.notify_all()

    t = _tracker(rt)
    t.subscribe(on_event)
    t.start()
    ids = []
    try:
        if not t.wait_in_sync(60):
            raise RuntimeError(f"tracker not in sync: {t.health()}")
        for i in range(n):
            cid = rt.start(f"{tag}-{i}", f"{tag}-{i}")
            ids.append(cid)
            _wait(cond, lambda cid=cid: cid in seen, 20, f"the tracker to see {tag}-{i}")
    finally:
        t.stop()
    try:
        total = [(seen[c] - stamps.get(c)) / 1e9 for c in ids]
        delivery = [(stamps.arrivals[c] - stamps.stamps[c]) / 1e9 for c in ids]
        via_api = api.delivery(ids) if api is not None else ([], 0)
        return total, delivery, via_api, t.health().starts_without_inspect
    finally:
        rt.remove_many(ids)


class Churn:
    """*n* other labelled containers, removed and started again in rotation, *rate* per second."""

    def __init__(self, rt: _Runtime, tag: str, n: int, rate: float = CHURN_RATE) -> None:
        self.period = 1.0 / rate
        self.rt, self.tag = rt, tag
        self.ids = _parallel(lambda i: rt.start(f"{tag}-{i}", f"{tag}-{i}-0"), list(range(n)))
        self.cycles = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="bench-churn", daemon=True)

    def _main(self) -> None:
        i = 0
        next_at = time.monotonic()
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.period
            k = i % len(self.ids)
            self.rt.remove(self.ids[k])
            self.cycles += 1
            self.ids[k] = self.rt.start(f"{self.tag}-{k}", f"{self.tag}-{k}-{self.cycles}")
            i += 1

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        self.rt.remove_many(self.ids)


def rt_sync(rt: _Runtime, repeat: int, expect: int) -> tuple[float, float, int]:
    """Median seconds (tracker start -> in_sync, the runtime's bare listing), and the count."""

    def tracker() -> tuple[float, int]:
        """Seconds from start() to in_sync (stop() not counted), and the labels seen."""
        t = _tracker(rt)
        t0 = time.perf_counter()
        t.start()
        try:
            if not t.wait_in_sync(300):
                raise RuntimeError(f"tracker not in sync: {t.health()}")
            took = time.perf_counter() - t0
            return took, len(t.snapshot())
        finally:
            t.stop()

    count = rt.floor()  # warm the connection
    tracker()
    floor_s, tracker_s = [], []
    for _ in range(repeat):  # interleaved, so drift hits both alike
        t0 = time.perf_counter()
        rt.floor()
        floor_s.append(time.perf_counter() - t0)
        took, got = tracker()
        tracker_s.append(took)
        if got < expect:
            raise RuntimeError(f"tracker synced {got} labels, expected {expect}")
    return statistics.median(tracker_s), statistics.median(floor_s), count


def rt_burst(rt: _Runtime, tag: str, b: int) -> tuple[float, float, int]:
    """*b* pending veths, then *b* starts at once.

    :returns: (last start -> last APPLIED, all the starts, how many applied).
    """
    from nslib.configurator import Configurator, ItemStatus

    applied: dict[str, float] = {}
    cond = threading.Condition()

    def on_change(item: Any) -> None:
        if item.status is ItemStatus.APPLIED:
            with cond:
                applied.setdefault(item.name_key, time.monotonic())
                cond.notify_all()

    t = _tracker(rt)
    t.start()
    ids: list[str] = []
    ends: list[float] = []
    host = uuid.uuid4().hex[:4]
    try:
        if not t.wait_in_sync(300):
            raise RuntimeError(f"tracker not in sync: {t.health()}")
        with nslib.NsPlugin(tracker=t) as plugin, Configurator(plugin, on_change=on_change) as conf:
            for i in range(b):
                item = conf.add_veth(
                    "eth1", f"nb{host}{i}", ns=nslib.NetNamespace.microservice(f"{tag}-{i}")
                )
                item.name_key = f"{tag}-{i}"  # type: ignore[attr-defined]

            def start(i: int) -> str:
                cid = rt.start(f"{tag}-{i}", f"{tag}-{i}")
                ends.append(time.monotonic())
                return cid

            t0 = time.monotonic()
            ids = _parallel(start, list(range(b)))
            last_start = max(ends)
            _wait(cond, lambda: len(applied) >= b, 120, f"{b} veths applied")
            last_applied = max(applied.values())
            return last_applied - last_start, last_start - t0, len(applied)
    finally:
        t.stop()
        rt.remove_many(ids)


def _stops(rt: _Docker, tag: str, n: int, watch: bool) -> list[float]:
    """Seconds from ``docker kill`` to the STOPPED callback, *n* times."""
    stopped: dict[str, int] = {}
    cond = threading.Condition()

    def on_event(ev: nslib.MicroserviceEvent) -> None:
        now = time.time_ns()
        if ev.kind is nslib.EventKind.STOPPED and ev.label.startswith(tag):
            with cond:
                stopped.setdefault(ev.microservice.container_id, now)
                cond.notify_all()

    t = _tracker(rt, watch_processes=watch)
    t.subscribe(on_event)
    t.start()
    lat = []
    try:
        if not t.wait_in_sync(60):
            raise RuntimeError(f"tracker not in sync: {t.health()}")
        for i in range(n):
            label = f"{tag}-{int(watch)}-{i}"
            cid = rt.start(label, label)
            t.wait_for(label, 20)
            time.sleep(0.05)  # let the watcher take its pidfd
            t0 = time.time_ns()
            rt.kill(cid)
            _wait(cond, lambda cid=cid: cid in stopped, 20, f"{label} stopped")
            lat.append((stopped[cid] - t0) / 1e9)
            rt.remove(cid)
    finally:
        t.stop()
    return lat


def docker_stop_detection(rt: _Docker, tag: str, n: int) -> tuple[list[float], list[float]]:
    """``docker kill`` to STOPPED: through the pidfd watcher, and through the ``die`` event."""
    return _stops(rt, tag, n, True), _stops(rt, tag, n, False)


def docker_open_namespace(rt: _Docker, tag: str) -> tuple[float, float]:
    """Seconds per ``open_namespace()`` + close: via the pidfd ioctl, and via ``/proc``."""
    from benchmarks._harness import per_op
    from nslib.microservice import model as tr

    cid = rt.start(f"{tag}-ns", f"{tag}-ns")
    t = _tracker(rt)
    t.start()
    try:
        ms = t.wait_for(f"{tag}-ns", 30)
        via_pidfd = per_op(lambda: ms.open_namespace().close(), number=2000)
        saved = tr._pidfd_ns_works
        tr._pidfd_ns_works = False
        try:
            via_proc = per_op(lambda: ms.open_namespace().close(), number=2000)
        finally:
            tr._pidfd_ns_works = saved
        return via_pidfd, via_proc
    finally:
        t.stop()
        rt.remove(cid)


def _option(name: str, default: int) -> int:
    argv = sys.argv
    if name in argv and argv.index(name) + 1 < len(argv):
        return int(argv[argv.index(name) + 1])
    return default


def _runtimes() -> list[str]:
    argv = sys.argv
    if "--runtimes" in argv and argv.index("--runtimes") + 1 < len(argv):
        return argv[argv.index("--runtimes") + 1].split(",")
    return ["docker", "podman", "containerd"]


@contextlib.contextmanager
def _runtime(kind: str, d: Any) -> Iterator[_Runtime]:
    from benchmarks._harness import load_test_harness

    if kind == "docker":
        rt: _Runtime = _Docker(d)
        try:
            yield rt
        finally:
            rt.close()
    elif kind == "podman":
        with load_test_harness("podmand").PrivatePodman() as p:
            p.load_image_from_docker(d.base_url)
            rt = _Podman(p)
            try:
                yield rt
            finally:
                rt.close()
    else:
        with load_test_harness("containerd_harness").PrivateContainerd() as c:
            c.import_image_from_docker(d.base_url)
            rt = _Containerd(c)
            try:
                yield rt
            finally:
                rt.close()


def _p(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": _ms(percentile(values, 50)),
        "p95_ms": _ms(percentile(values, 95)),
        "max_ms": _ms(max(values)),
    }


def _latency_rows(
    name: str,
    g: str,
    lat: list[float],
    delivery: list[float],
    note: str,
    results: list[Result],
    targets: list[Target],
) -> None:
    p95 = percentile(lat, 95)
    results.append(
        Result(
            g, f"{name}: MicroserviceTracker callback", p95, kind="nslib", note=note, extra=_p(lat)
        )
    )
    results.append(
        Result(
            g,
            f"{name}: the runtime's own event delivery (a raw stream; the floor)",
            percentile(delivery, 95),
            kind="limit",
            extra=_p(delivery),
        )
    )
    targets.append(
        Target(
            g,
            "p95 under 10 ms",
            p95 < 0.010,
            f"p50 {_ms(percentile(lat, 50))} ms, p95 {_ms(p95)} ms "
            f"(the runtime's delivery alone: p95 {_ms(percentile(delivery, 95))} ms)",
        )
    )


def _api_row(
    name: str, g: str, api: RawStarts | None, via: tuple[list[float], int], results: list[Result]
) -> None:
    got, missed = via
    if api is None:
        return
    note = f"{missed} of {len(got) + missed} starts never came within 10 s" if missed else ""
    if api.reconnects:
        note += f"{'; ' if note else ''}the stream ended and was opened again {api.reconnects}x"
    results.append(
        Result(
            g,
            f"{name}: its API event stream alone (what an API client gets)",
            percentile(got, 95) if got else float("nan"),
            kind="alt",
            note=note,
            extra=_p(got) if got else {},
        )
    )


def run_runtime(
    rt: _Runtime,
    quick: bool,
    n_sync: int,
    n_burst: int,
    results: list[Result],
    targets: list[Target],
) -> None:
    name = rt.name
    n_events = 20 if quick else 50
    n_churn = 20 if quick else 100
    repeat = 3 if quick else 5
    tag = f"nsb{uuid.uuid4().hex[:5]}"
    clock = time.monotonic()
    phase: dict[str, float] = {}

    # N running labelled containers, kept through the latency runs (a tracker with a full map).
    t0 = time.monotonic()
    base = _parallel(lambda i: rt.start(f"{tag}-s{i}", f"{tag}-s{i}"), list(range(n_sync)))
    phase["start N"] = time.monotonic() - t0
    stamps = RawStarts(rt)
    api_source = rt.api_source()
    api = RawStarts(rt, api_source) if api_source is not None else None
    try:
        t0 = time.monotonic()
        t_sync, t_floor, count = rt_sync(rt, repeat, n_sync)
        phase["sync"] = time.monotonic() - t0
        g = f"{name}: initial sync of {n_sync} running containers"
        results.append(
            Result(g, f"{name}: MicroserviceTracker start -> in_sync", t_sync, kind="nslib")
        )
        floor_what = "task list + container list" if name == "containerd" else "list + inspect"
        results.append(Result(g, f"{name}: bare {floor_what} (floor)", t_floor, kind="limit"))
        ratio = t_sync / t_floor
        targets.append(
            Target(
                g,
                "within 1.3x of the bare listing",
                ratio <= 1.3,
                f"{ratio:.2f}x ({t_sync * 1e3:.0f} ms vs {t_floor * 1e3:.0f} ms, {count} running)",
            )
        )

        t0 = time.monotonic()
        lat, delivery, via_api, quick = rt_latencies(rt, stamps, f"{tag}-i", n_events, api)
        g = f"{name}: start -> callback (p95), idle, {n_sync} running"
        note = f"n={len(lat)}, {quick} without an inspect"
        _latency_rows(name, g, lat, delivery, note, results, targets)
        _api_row(name, g, api, via_api, results)
        phase["latency idle"] = time.monotonic() - t0

        t0 = time.monotonic()
        with Churn(rt, f"{tag}-c", n_churn) as churn:
            lat, delivery, via_api, quick = rt_latencies(rt, stamps, f"{tag}-u", n_events, api)
        g = f"{name}: start -> callback (p95), {n_churn} others churning"
        note = (
            f"n={len(lat)}, {quick} without an inspect, "
            f"{churn.cycles} churn restarts at {CHURN_RATE:g}/s"
        )
        _latency_rows(name, g, lat, delivery, note, results, targets)
        _api_row(name, g, api, via_api, results)
        phase["latency churn"] = time.monotonic() - t0
    finally:
        stamps.close()
        if api is not None:
            api.close()
        t0 = time.monotonic()
        rt.remove_many(base)
        phase["remove N"] = time.monotonic() - t0

    t0 = time.monotonic()
    tail, starts, applied = rt_burst(rt, f"{tag}-b", n_burst)
    phase["burst"] = time.monotonic() - t0
    g = f"{name}: burst of {n_burst} starts, a pending veth each"
    results.append(
        Result(
            g,
            f"{name}: last start -> last veth APPLIED",
            tail,
            kind="nslib",
            note=f"{applied}/{n_burst} applied; the {n_burst} starts took {starts:.1f} s",
        )
    )
    targets.append(
        Target(
            g,
            "every veth configured",
            applied == n_burst,
            f"{applied}/{n_burst}, last start -> last APPLIED {tail * 1e3:.0f} ms",
        )
    )
    total = time.monotonic() - clock
    results.append(
        Result(
            f"{name}: benchmark wall time",
            f"{name}: whole run",
            total,
            kind="info",
            note=", ".join(f"{k} {v:.0f} s" for k, v in phase.items()),
        )
    )


def run(quick: bool) -> tuple[list[Result], list[Target]]:
    from benchmarks._harness import PrivateDockerd

    n_sync = _option("--containers", 50 if quick else 500)
    n_burst = _option("--burst", 40 if quick else 200)
    n_poll = 6 if quick else 20
    results: list[Result] = []
    targets: list[Target] = []
    tag = f"nsbench{uuid.uuid4().hex[:6]}"
    with PrivateDockerd() as d:
        for kind in _runtimes():
            with _runtime(kind, d) as rt:
                run_runtime(rt, quick, n_sync, n_burst, results, targets)
                if isinstance(rt, _Docker):
                    _docker_extras(rt, d, tag, n_poll, quick, results)
    return results, targets


def _docker_extras(
    rt: _Docker, d: Any, tag: str, n_poll: int, quick: bool, results: list[Result]
) -> None:
    client = rt.client
    via_watch, via_die = docker_stop_detection(rt, f"{tag}-k", 10 if quick else 30)
    g = "docker: kill -> STOPPED (p95)"
    results.append(
        Result(
            g,
            "pidfd watcher (process exit)",
            percentile(via_watch, 95),
            kind="nslib",
            extra=_p(via_watch),
        )
    )
    results.append(
        Result(
            g,
            "daemon die event only (watch_processes=False)",
            percentile(via_die, 95),
            kind="alt",
            extra=_p(via_die),
        )
    )
    via_pidfd, via_proc = docker_open_namespace(rt, tag)
    g = "Microservice.open_namespace() + close"
    results.append(Result(g, "pidfd + PIDFD_GET_NET_NAMESPACE", via_pidfd, kind="nslib"))
    results.append(Result(g, "/proc/<pid> directory fd + ns/net", via_proc, kind="alt"))
    stamps = StartStamps(client)
    try:
        plat = polling_latencies(client, stamps, tag, n_poll)
    finally:
        stamps.close()
    pp95 = percentile(plat, 95)
    results.append(
        Result(
            "docker: start -> callback (p95), polling for comparison",
            "polling: list + inspect every 1 s",
            pp95,
            kind="alt",
            note=f"n={len(plat)}",
            extra=_p(plat),
        )
    )


if __name__ == "__main__":
    main(run)
