"""Helpers for the microservice tracker tests, shared by the docker, podman and
containerd test modules: waiting, the callback log and its consistency check,
and the docker ground truth (a list + inspect made independently of nslib).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from nslib._docker_state import EventKind, instance_key
from nslib.microservice import Microservice, MicroserviceEvent, MicroserviceTracker

LABEL_ENV = "MICROSERVICE_LABEL"
T = TypeVar("T")


def wait_until(pred: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll *pred* until it returns something truthy; fail after *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _rfc3339_ns(text: str) -> int:
    # Independent of nslib's parser on purpose: this is the oracle.
    date, _, rest = text.partition("T")
    assert rest.endswith("Z"), text
    hms, _, frac = rest[:-1].partition(".")
    secs = int(datetime.fromisoformat(f"{date}T{hms}+00:00").timestamp())
    return secs * 1_000_000_000 + int((frac + "000000000")[:9])


def truth_claims(
    client: Any, label_env: str | None = LABEL_ENV, label_key: str | None = None
) -> dict[str, list[tuple[tuple[int, int, str], str, int]]]:
    """label -> running claimants ``(rank, id, pid)``, winner first, by list + inspect."""
    import docker.errors

    claims: dict[str, list[tuple[tuple[int, int, str], str, int]]] = {}
    for entry in client.api.containers():
        try:
            info = client.api.inspect_container(entry["Id"])
        except docker.errors.NotFound:
            continue
        state = info["State"]
        if not state["Running"] or not state["Pid"]:
            continue
        label = None
        if label_env:
            for item in info["Config"]["Env"] or []:
                key, _, value = item.partition("=")
                if key == label_env and value:
                    label = value
        if label is None and label_key:
            label = (info["Config"]["Labels"] or {}).get(label_key) or None
        if label is None:
            continue
        rank = (_rfc3339_ns(info["Created"]), _rfc3339_ns(state["StartedAt"]), info["Id"])
        claims.setdefault(label, []).append((rank, info["Id"], state["Pid"]))
    for v in claims.values():
        v.sort(reverse=True)
    return claims


def truth(
    client: Any, label_env: str | None = LABEL_ENV, label_key: str | None = None
) -> dict[str, tuple[str, int]]:
    """Ground truth: label -> (container id, pid) of the newest running claimant."""
    return {
        label: (c[0][1], c[0][2]) for label, c in truth_claims(client, label_env, label_key).items()
    }


def project(snapshot: dict[str, Microservice]) -> dict[str, tuple[str, int]]:
    return {label: (ms.container_id, ms.pid) for label, ms in snapshot.items()}


def wait_match(
    tracker: MicroserviceTracker,
    client: Any,
    timeout: float = 20.0,
    *,
    label_env: str | None = LABEL_ENV,
    label_key: str | None = None,
) -> dict[str, tuple[str, int]]:
    """Wait until the tracker's map equals a fresh list + inspect; return it."""
    deadline = time.monotonic() + timeout
    while True:
        want = truth(client, label_env, label_key)
        got = project(tracker.snapshot())
        if want == got and tracker.in_sync:
            # Equal twice in a row, so a change still in flight is not missed.
            time.sleep(0.1)
            if project(tracker.snapshot()) == truth(client, label_env, label_key) == want:
                return want
        if time.monotonic() > deadline:
            assert got == want, f"tracker map differs from docker; health={tracker.health()}"
            raise AssertionError(f"tracker never in sync: {tracker.health()}")
        time.sleep(0.05)


Key = tuple[str, int, int]


def _kind_name(kind: Any) -> str:
    return str(kind.name)


Entry = tuple[str, str, Key, frozenset[Key]]


def check_log(seq: Iterable[Entry]) -> None:
    """Check a change log ``(kind name, label, instance key, claimant keys)``.

    Per label: STOPPED names the holder; RESTARTED only right after the same
    container stopped (and nothing else held the label); STARTED never names
    the holder nor a container that should have been RESTARTED; CONFLICT
    names the holder and at least two claimants; and no event repeats the
    previous one (a CONFLICT repeats only with other claimants).
    """
    holder: dict[str, Key] = {}
    last_stopped: dict[str, str] = {}
    prev: dict[str, tuple[str, Key, frozenset[Key]]] = {}
    for i, (kind, label, key, claim) in enumerate(seq):
        where = f"event {i} ({kind} {label} {key[0][:12]} pid {key[1]})"
        assert prev.get(label) != (kind, key, claim), f"{where}: duplicated"
        prev[label] = (kind, key, claim)
        if kind == "STARTED":
            assert holder.get(label) != key, f"{where}: STARTED for the current holder"
            if label not in holder:
                assert last_stopped.get(label) != key[0], f"{where}: should be RESTARTED"
            holder[label] = key
            last_stopped.pop(label, None)
        elif kind == "RESTARTED":
            assert label not in holder, f"{where}: RESTARTED while {holder[label]} holds it"
            assert last_stopped.get(label) == key[0], f"{where}: RESTARTED without its STOPPED"
            holder[label] = key
            last_stopped.pop(label, None)
        elif kind == "STOPPED":
            assert holder.get(label) == key, f"{where}: STOPPED but holder is {holder.get(label)}"
            del holder[label]
            last_stopped[label] = key[0]
        elif kind == "CONFLICT":
            assert holder.get(label) == key, f"{where}: CONFLICT must name the holder"
            assert key in claim and len(claim) >= 2, f"{where}: CONFLICT claimants {claim}"
        else:  # pragma: no cover
            raise AssertionError(f"unknown kind {kind}")


def replay(events: Iterable[MicroserviceEvent]) -> dict[str, tuple[str, int]]:
    """The map a subscriber rebuilds from the callback log, starting empty."""
    state: dict[str, tuple[str, int]] = {}
    for ev in events:
        ms = ev.microservice
        if ev.kind is EventKind.STOPPED:
            assert state.pop(ev.label) == (ms.container_id, ms.pid)
        else:
            state[ev.label] = (ms.container_id, ms.pid)
    return state


class EventLog:
    """A subscriber that records events (and the threads they arrive on)."""

    def __init__(self) -> None:
        self.events: list[MicroserviceEvent] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, ev: MicroserviceEvent) -> None:
        with self._lock:
            self.events.append(ev)
            self.threads.add(threading.current_thread().name)

    def snapshot(self) -> list[MicroserviceEvent]:
        with self._lock:
            return list(self.events)

    def of(self, label: str) -> list[tuple[str, str, int]]:
        """``(kind, container id, pid)`` of *label*'s events, in order."""
        return [
            (e.kind.name, e.microservice.container_id, e.microservice.pid)
            for e in self.snapshot()
            if e.label == label
        ]

    def kinds(self, label: str) -> list[str]:
        return [k for k, _, _ in self.of(label)]

    def wait_kinds(self, label: str, kinds: Sequence[str], timeout: float = 15.0) -> None:
        wait_until(lambda: self.kinds(label) == list(kinds), timeout, f"{label}: {kinds}")

    def check(self) -> None:
        check_log(
            (
                e.kind.name,
                e.label,
                instance_key(e.microservice),
                frozenset(instance_key(c) for c in e.claimants),
            )
            for e in self.snapshot()
        )

    def replay(self) -> dict[str, tuple[str, int]]:
        return replay(self.snapshot())

    def last(self, label: str) -> MicroserviceEvent:
        return [e for e in self.snapshot() if e.label == label][-1]

    def wait_replay(self, tracker: MicroserviceTracker, timeout: float = 10.0) -> None:
        """Wait until the log replays to the tracker's map (callbacks trail the state)."""
        wait_until(lambda: self.replay() == project(tracker.snapshot()), timeout, "log replay")


@dataclass
class Tracked:
    tracker: MicroserviceTracker
    log: EventLog


def start_tracker(dockerd: Any, **kwargs: Any) -> tuple[Tracked, Any]:
    """A started, in-sync tracker with an event log, and its client (caller closes)."""
    client = dockerd.client()
    t = MicroserviceTracker(client, **kwargs)
    log = EventLog()
    t.subscribe(log)
    t.start()
    try:
        assert t.wait_in_sync(15), t.health()
    except BaseException:
        t.stop()
        client.close()
        raise
    return Tracked(t, log), client


@contextlib.contextmanager
def tracking(dockerd: Any, **kwargs: Any) -> Iterator[Tracked]:
    """``start_tracker``, with the tracker stopped and its client closed afterwards."""
    tr, client = start_tracker(dockerd, **kwargs)
    try:
        yield tr
    finally:
        tr.tracker.stop()
        client.close()


def pmap(fn: Callable[[Any], T], items: Iterable[Any], workers: int = 4) -> list[T]:
    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(fn, items))


def running_pid(client: Any, cid: str) -> int:
    return int(client.api.inspect_container(cid)["State"]["Pid"])


def microservice_of(client: Any, cid: str, label: str) -> Microservice:
    """A Microservice built straight from inspect (no tracker involved)."""
    info = client.api.inspect_container(cid)
    return Microservice(
        label=label,
        container_id=info["Id"],
        name=info["Name"].lstrip("/"),
        pid=info["State"]["Pid"],
        created_ns=_rfc3339_ns(info["Created"]),
        started_at_ns=_rfc3339_ns(info["State"]["StartedAt"]),
        network_mode=info["HostConfig"]["NetworkMode"],
    )


def ns_of_pid(pid: int) -> tuple[int, int]:
    st = os.stat(f"/proc/{pid}/ns/net")
    return (st.st_dev, st.st_ino)


HOST_NS = ns_of_pid(os.getpid())


def run(client: Any, label: str | None, **kw: Any) -> Any:
    """A docker test container (``dockerd.run_container``) with microservice *label*."""
    from dockerd import run_container

    return run_container(client, label=label, **kw)


def winners(records: Iterable[tuple[str, str, int, int, int]]) -> dict[str, tuple[str, int]]:
    """label -> (id, pid) of the newest claimant, from ``(label, id, pid, created, started)``."""
    best: dict[str, tuple[tuple[int, int, str], str, int]] = {}
    for label, cid, pid, created, started in records:
        rank = (created, started, cid)
        if label not in best or rank > best[label][0]:
            best[label] = (rank, cid, pid)
    return {label: (cid, pid) for label, (_, cid, pid) in best.items()}


def wait_equal(
    tracker: MicroserviceTracker,
    truth_fn: Callable[[], dict[str, tuple[str, int]]],
    timeout: float = 30.0,
) -> dict[str, tuple[str, int]]:
    """Wait until the tracker's map equals *truth_fn()* twice in a row; return it."""
    deadline = time.monotonic() + timeout
    while True:
        want = truth_fn()
        got = project(tracker.snapshot())
        if want == got and tracker.in_sync:
            time.sleep(0.2)
            if project(tracker.snapshot()) == truth_fn() == want:
                return want
        if time.monotonic() > deadline:
            assert got == want, f"tracker map differs from the runtime; health={tracker.health()}"
            raise AssertionError(f"tracker never in sync: {tracker.health()}")
        time.sleep(0.05)
