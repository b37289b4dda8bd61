"""Microservice tracker: how fast a new container is seen, and the initial sync.

Everything runs on a private dockerd started here (``tests/dockerd.py``,
with its FROM-scratch busybox image built into it) and torn down at the end;
containers use ``--network none`` and a unique name prefix.

Groups:

* ``microservice detection latency (p95)``: from the daemon's ``start`` event
  (its ``timeNano``, read from a separate raw event stream) to the moment a
  subscriber learns about the container.  Containers start one at a time.

  - nslib: ``MicroserviceTracker`` callback (events + one ``inspect``);
  - alternative: polling, ``list`` + ``inspect`` of every running container
    once a second (what older Ligato agents did every 3 s).

  The row's time is the p95; ``extra`` holds p50/p95/max in ms.

* ``initial sync of N running containers``: ``MicroserviceTracker(client)``
  from ``start()`` until ``in_sync`` (subscribe, list, inspect each), against
  the bare ``list`` + ``inspect`` loop on the same client (the floor).

Targets: detection p95 under 10 ms; initial sync within 1.3x of the floor.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
import uuid
from typing import Any

import nslib
from benchmarks._harness import Result, Target, main, percentile

G_DETECT = "microservice detection latency (p95)"
G_SYNC = "initial sync of running containers"
LABEL_ENV = "MICROSERVICE_LABEL"


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


def tracker_latencies(
    client: Any, stamps: StartStamps, tag: str, n: int
) -> tuple[list[float], list[Any]]:
    """Start *n* labelled containers one by one; seconds from start event to callback."""
    from benchmarks._harness import run_container

    seen: dict[str, int] = {}
    cond = threading.Condition()

    def on_event(ev: nslib.MicroserviceEvent) -> None:
        now = time.time_ns()
        if ev.kind is nslib.EventKind.STARTED and ev.label.startswith(tag):
            with cond:
                seen.setdefault(ev.microservice.container_id, now)
                cond.notify_all()

    tracker = nslib.MicroserviceTracker(client, resync_interval=None)
    tracker.subscribe(on_event)
    tracker.start()
    containers = []
    try:
        if not tracker.wait_in_sync(30):
            raise RuntimeError(f"tracker not in sync: {tracker.health()}")
        for i in range(n):
            c = run_container(client, label=f"{tag}-t{i}", name=f"{tag}-t{i}")
            containers.append(c)
            _wait(cond, lambda c=c: c.id in seen, 10, f"the tracker to see {c.name}")
    finally:
        tracker.stop()
    return [(seen[c.id] - stamps.get(c.id)) / 1e9 for c in containers], containers


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


def sync_times(client: Any, repeat: int) -> tuple[float, float, int]:
    """Median seconds: (tracker start -> in_sync, bare list + inspect), and the count."""
    api = client.api

    def floor() -> int:
        return len([api.inspect_container(e["Id"]) for e in api.containers()])

    def tracker() -> int:
        t = nslib.MicroserviceTracker(client, resync_interval=None)
        t.start()
        try:
            if not t.wait_in_sync(30):
                raise RuntimeError(f"tracker not in sync: {t.health()}")
            return len(t.snapshot())
        finally:
            t.stop()

    count = floor()  # warm the connection pool
    tracker()
    floor_s, tracker_s = [], []
    for _ in range(repeat):  # interleaved, so drift hits both alike
        t0 = time.perf_counter()
        floor()
        floor_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = tracker()
        tracker_s.append(time.perf_counter() - t0)
        if got < count:
            raise RuntimeError(f"tracker synced {got} labels, expected {count}")
    return statistics.median(tracker_s), statistics.median(floor_s), count


def _ms(x: float) -> float:
    return round(x * 1e3, 3)


def run(quick: bool) -> tuple[list[Result], list[Target]]:
    from benchmarks._harness import PrivateDockerd

    n_events = 20 if quick else 50
    n_poll = 6 if quick else 20
    repeat = 5 if quick else 9
    tag = f"nsbench{uuid.uuid4().hex[:6]}"
    results: list[Result] = []
    targets: list[Target] = []
    with PrivateDockerd() as d:
        client = d.client()
        stamps = StartStamps(client)
        try:
            lat, containers = tracker_latencies(client, stamps, tag, n_events)
            p50, p95 = percentile(lat, 50), percentile(lat, 95)
            results.append(
                Result(
                    G_DETECT,
                    "MicroserviceTracker callback (events + inspect)",
                    p95,
                    kind="nslib",
                    note=f"n={len(lat)}",
                    extra={"p50_ms": _ms(p50), "p95_ms": _ms(p95), "max_ms": _ms(max(lat))},
                )
            )
            targets.append(
                Target(
                    G_DETECT,
                    "p95 under 10 ms",
                    p95 < 0.010,
                    f"p50 {_ms(p50)} ms, p95 {_ms(p95)} ms",
                )
            )

            t_sync, t_floor, count = sync_times(client, repeat)
            results.append(
                Result(
                    G_SYNC,
                    f"MicroserviceTracker start -> in_sync ({count} containers)",
                    t_sync,
                    kind="nslib",
                )
            )
            results.append(
                Result(G_SYNC, "bare list + inspect loop (floor)", t_floor, kind="limit")
            )
            ratio = t_sync / t_floor
            targets.append(
                Target(
                    G_SYNC,
                    "within 1.3x of list + inspect",
                    ratio <= 1.3,
                    f"{ratio:.2f}x ({t_sync * 1e3:.0f} ms vs {t_floor * 1e3:.0f} ms)",
                )
            )

            for c in containers:  # the poller should not scan the tracker's leftovers
                client.api.remove_container(c.id, force=True)
            plat = polling_latencies(client, stamps, tag, n_poll)
            pp50, pp95 = percentile(plat, 50), percentile(plat, 95)
            results.append(
                Result(
                    G_DETECT,
                    "polling: list + inspect every 1 s",
                    pp95,
                    kind="alt",
                    note=f"n={len(plat)}",
                    extra={"p50_ms": _ms(pp50), "p95_ms": _ms(pp95), "max_ms": _ms(max(plat))},
                )
            )
        finally:
            stamps.close()
            client.close()
    return results, targets


if __name__ == "__main__":
    main(run)
