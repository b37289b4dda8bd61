"""The microservice tracker following podman (``PodmanSource``), against a private
``podman system service`` started here (``tests/podmand.py``).

Each scenario ends with the tracker's map equal to podman's own listing
(``podman ps`` + ``podman inspect`` through the CLI, independent of nslib),
and the callback log consistent and replaying to that map.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mshelpers import (
    HOST_NS,
    EventLog,
    Tracked,
    _rfc3339_ns,
    ns_of_pid,
    wait_equal,
    wait_until,
    winners,
)

import nslib
from nslib.microservice import MicroserviceTracker, PodmanSource
from nslib.microservice.sources._podman_events import events_file_for

pytestmark = [pytest.mark.docker, pytest.mark.root]

LABEL_ENV = "MICROSERVICE_LABEL"


def podman_truth(p: Any) -> dict[str, tuple[str, int]]:
    """label -> (id, pid) of the newest running claimant, by podman's CLI."""
    records = []
    for cid in p.running_ids():
        try:
            info = p.inspect(cid)
        except Exception:
            continue  # gone since the list
        state = info["State"]
        if not state.get("Running") or not state.get("Pid"):
            continue
        label = None
        for item in info["Config"].get("Env") or []:
            key, _, value = item.partition("=")
            if key == LABEL_ENV and value:
                label = value
        if label is None:
            continue
        records.append(
            (
                label,
                info["Id"],
                state["Pid"],
                _rfc3339_ns(_utc(info["Created"])),
                _rfc3339_ns(_utc(state["StartedAt"])),
            )
        )
    return winners(records)


def _utc(text: str) -> str:
    # The CLI prints local-time offsets ("+00:00"); the oracle wants "Z".
    return text.replace("+00:00", "Z")


@pytest.fixture(params=["file", "api"])
def ptracked(podman: Any, request: pytest.FixtureRequest) -> Iterator[Tracked]:
    """A tracker on the private podman, following its events file or its API stream."""
    source = PodmanSource(podman.url, events_file="auto" if request.param == "file" else None)
    t = MicroserviceTracker(source)
    log = EventLog()
    t.subscribe(log)
    t.start()
    try:
        assert t.wait_in_sync(15), t.health()
        expected = podman.events_log if request.param == "file" else "api"
        assert source.events_via == expected
        yield Tracked(t, log)
    finally:
        t.stop()
    log.check()


def test_podman_start_kill_crash_self_exit(ptracked: Tracked, podman: Any, unique: str) -> None:
    t, log = ptracked.tracker, ptracked.log
    killed = podman.run(f"{unique}-k")
    crashing = podman.run(f"{unique}-c", command=["sh", "-c", "sleep 1; kill -SEGV $$"])
    exiting = podman.run(f"{unique}-e", command=["sleep", "1"])
    for label in ("k", "c", "e"):
        log.wait_kinds(f"{unique}-{label}", ["STARTED"])
    ms = t.snapshot()[f"{unique}-k"]
    assert ms.container_id == killed and ms.source == "podman" and ms.network_mode == "none"
    podman.cli("kill", killed)
    for label, cid in (("k", killed), ("c", crashing), ("e", exiting)):
        log.wait_kinds(f"{unique}-{label}", ["STARTED", "STOPPED"])
        assert log.of(f"{unique}-{label}")[0][1] == cid
    wait_equal(t, lambda: podman_truth(podman))
    log.wait_replay(t)


def test_podman_network_none_opens_through_the_pid(
    ptracked: Tracked, podman: Any, unique: str
) -> None:
    t, log = ptracked.tracker, ptracked.log
    cid = podman.run(unique)
    log.wait_kinds(unique, ["STARTED"])
    ms = t.snapshot()[unique]
    assert podman.inspect(cid)["NetworkSettings"].get("SandboxKey") in ("", None)
    with ms.open_namespace() as h:
        assert h.ns_id == ns_of_pid(ms.pid) != HOST_NS
    with nslib.open_namespace(nslib.NetNamespace.microservice(unique), tracker=t) as h:
        assert h.ns_id == ns_of_pid(ms.pid)
    podman.cli("restart", "-t", "0", cid)
    log.wait_kinds(unique, ["STARTED", "STOPPED", "RESTARTED"])
    assert t.snapshot()[unique].pid != ms.pid
    wait_equal(t, lambda: podman_truth(podman))


def test_podman_pod_member_resolves_to_the_infra_namespace(
    ptracked: Tracked, podman: Any, unique: str
) -> None:
    t, log = ptracked.tracker, ptracked.log
    pod_id, infra = podman.create_pod()
    try:
        member = podman.run(unique, pod=pod_id)
        log.wait_kinds(unique, ["STARTED"])
        ms = t.snapshot()[unique]
        assert ms.container_id == member and ms.pod == pod_id
        assert ms.network_container == infra
        infra_pid = podman.inspect(infra)["State"]["Pid"]
        with ms.open_namespace() as h:
            assert h.ns_id == ns_of_pid(infra_pid) != HOST_NS
        wait_equal(t, lambda: podman_truth(podman))
    finally:
        podman.cli("pod", "rm", "-f", "-t", "0", pod_id, check=False)
    log.wait_kinds(unique, ["STARTED", "STOPPED"])


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_podman_service_restart_under_churn(
    ptracked: Tracked, podman: Any, unique: str, kill: bool
) -> None:
    """Containers change while the API service restarts; the map ends right."""
    t, log = ptracked.tracker, ptracked.log
    ids = [podman.run(f"{unique}-{i}") for i in range(3)]
    for i in range(3):
        log.wait_kinds(f"{unique}-{i}", ["STARTED"])
    before = t.health().reconnects
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        n = 0
        while not stop.is_set():
            try:
                podman.local("kill", ids[n % 3], check=False)
                podman.local("start", ids[n % 3], check=False)
                n += 1
            except BaseException as e:
                errors.append(e)
                return

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        time.sleep(0.5)
        podman.restart_service(kill=kill)
        time.sleep(0.5)
    finally:
        stop.set()
        churner.join(60)
    assert not errors
    killed_one = podman.run(f"{unique}-after")
    podman.cli("kill", killed_one)
    wait_until(lambda: t.health().reconnects > before, 20, "reconnect")
    wait_equal(t, lambda: podman_truth(podman))
    log.wait_replay(t)


def test_podman_missing_service_then_up(podman: Any, unique: str) -> None:
    podman.stop_service()
    t = MicroserviceTracker(PodmanSource(podman.url))
    log = EventLog()
    t.subscribe(log)
    try:
        t.start()
        wait_until(lambda: t.health().last_error, 10, "an error")
        assert not t.in_sync and "podman" in (t.health().last_error or "")
        with pytest.raises(nslib.DockerUnavailableError):
            t.get(unique, timeout=0.2)
        podman.start_service()
        cid = podman.run(unique)
        log.wait_kinds(unique, ["STARTED"], timeout=30)
        assert t.snapshot()[unique].container_id == cid
        wait_equal(t, lambda: podman_truth(podman))
    finally:
        t.stop()
        if podman._service is None:
            podman.start_service()


def test_podman_replays_what_a_broken_stream_missed(
    ptracked: Tracked, podman: Any, unique: str
) -> None:
    t, log = ptracked.tracker, ptracked.log
    a = podman.run(f"{unique}-a")
    log.wait_kinds(f"{unique}-a", ["STARTED"])
    gate = threading.Event()
    received = t.health().events_received
    t._force_reconnect(gate)
    wait_until(lambda: not t.health().connected, 5, "disconnect")
    podman.cli("kill", a)
    b = podman.run(f"{unique}-b")
    gate.set()
    log.wait_kinds(f"{unique}-a", ["STARTED", "STOPPED"])
    log.wait_kinds(f"{unique}-b", ["STARTED"])
    assert t.snapshot()[f"{unique}-b"].container_id == b
    # podman's event log replayed the missed events (not only the resync).
    wait_until(lambda: t.health().events_received >= received + 2, 10, "replayed events")
    wait_equal(t, lambda: podman_truth(podman))
    log.wait_replay(t)


# -- the events log file, followed directly --------------------------------------


class Collected:
    """A PodmanSource subscription read on a thread: (action, id) in arrival order."""

    def __init__(self, source: PodmanSource, since_ns: int | None, key: str | None = None) -> None:
        self.stream = source.subscribe(since_ns, key)
        self.q: queue.Queue[tuple[str, str, int | None]] = queue.Queue()
        self.seen: list[tuple[str, str, int | None]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for ev in self.stream:
            self.q.put((ev.action, ev.container_id, ev.time_ns))

    def actions(self, cid: str) -> list[str]:
        # create and rename only keep the source's memory of a container fresh.
        return [a for a, c, _ in self.seen if c == cid and a not in ("create", "rename")]

    def wait(self, cid: str, actions: list[str], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.actions(cid) != actions:
            left = deadline - time.monotonic()
            assert left > 0, (actions, self.actions(cid))
            try:
                self.seen.append(self.q.get(timeout=left))
            except queue.Empty:
                continue

    def close(self) -> None:
        self.stream.close()
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_podman_events_file_is_found_from_the_service(podman: Any) -> None:
    assert events_file_for(podman.url) == podman.events_log
    assert PodmanSource(podman.url, events_file=None)._file_path() is None


def test_podman_file_sees_start_and_died_of_each_exit_and_remove(podman: Any, unique: str) -> None:
    src = PodmanSource(podman.url)
    col = Collected(src, None)
    try:
        assert src.events_via == podman.events_log
        killed = podman.run(f"{unique}-k")
        crashing = podman.run(f"{unique}-c", command=["sh", "-c", "sleep 1; kill -SEGV $$"])
        exiting = podman.run(f"{unique}-e", command=["sleep", "1"])
        podman.cli("kill", killed)
        for cid in (killed, crashing, exiting):
            col.wait(cid, ["start", "died"])
        podman.cli("rm", "-f", killed, crashing, exiting)
        for cid in (killed, crashing, exiting):
            col.wait(cid, ["start", "died", "remove"])
        assert all(t is not None for _, _, t in col.seen)
    finally:
        col.close()
        src.close()


def test_podman_file_replays_since_a_cursor(podman: Any, unique: str) -> None:
    cursor = time.time_ns()
    gone = podman.run(f"{unique}-a", command=["true"])
    podman.cli("wait", gone)
    src = PodmanSource(podman.url)
    replayed = Collected(src, cursor)
    live = Collected(src, None)
    other_key = Collected(src, cursor, key="org.nslib.no-such-key")
    try:
        replayed.wait(gone, ["start", "died"])
        marker = podman.run(f"{unique}-b")
        live.wait(marker, ["start"])
        assert live.actions(gone) == []  # a live subscription does not replay
        other_key.wait(marker, [], timeout=0.5)
        assert other_key.seen == []
        assert min(t or 0 for _, _, t in replayed.seen) >= cursor
    finally:
        for c in (replayed, live, other_key):
            c.close()
        src.close()


def test_podman_file_that_appears_late_is_followed(podman: Any, unique: str) -> None:
    log = Path(podman.events_log)
    for _ in range(5):  # a late cleanup of an earlier test may write one again
        os.rename(log, f"{log}.old")  # podman makes a new one with its next event
        src = PodmanSource(podman.url)
        col = Collected(src, None)
        if not log.exists():
            break
        col.close()
        src.close()
    try:
        assert src.events_via == podman.events_log and not log.exists()
        cid = podman.run(unique)
        col.wait(cid, ["start"])
    finally:
        col.close()
        src.close()


@pytest.mark.parametrize("where", ["missing-dir", "a-directory"])
def test_podman_unreadable_file_falls_back_to_the_api(
    podman: Any, unique: str, tmp_path: Path, where: str
) -> None:
    path = tmp_path / "nope" / "events.log" if where == "missing-dir" else tmp_path
    src = PodmanSource(podman.url, events_file=path)
    col = Collected(src, None)
    try:
        assert src.events_via == "api"
        cid = podman.run(unique)
        podman.cli("kill", cid)
        col.wait(cid, ["start", "died"])
    finally:
        col.close()
        src.close()


def test_podman_file_stream_ends_when_the_service_stops(podman: Any) -> None:
    """So that the tracker reconnects and resyncs, as with the API stream."""
    src = PodmanSource(podman.url)
    col = Collected(src, None)
    try:
        assert src.events_via == podman.events_log
        podman.stop_service()
        col.thread.join(10)
        assert not col.thread.is_alive()
    finally:
        col.close()
        src.close()
        podman.start_service()


def test_podman_file_followed_across_podman_own_rotations(podman: Any, unique: str) -> None:
    """Podman rotates its log past events_logfile_max_size: nothing is lost, nothing doubled."""
    podman.set_events_max_size(16_000)  # about 50 events a file
    src = PodmanSource(podman.url)
    col = Collected(src, None)
    rotations = 0
    try:
        assert src.events_via == podman.events_log
        ino = os.stat(podman.events_log).st_ino
        ids = []
        for i in range(6):
            cid = podman.run(f"{unique}-{i}")
            for _ in range(15):  # each inspect logs a "sync" event
                podman.inspect(cid)
            podman.cli("kill", cid)
            ids.append(cid)
            if os.stat(podman.events_log).st_ino != ino:
                rotations += 1
                ino = os.stat(podman.events_log).st_ino
        podman.cli("rm", "-f", *ids)
        for cid in ids:
            col.wait(cid, ["start", "died", "remove"])
        assert rotations >= 2
        keys = [(a, c, t) for a, c, t in col.seen]
        assert len(keys) == len(set(keys))
    finally:
        col.close()
        src.close()
        podman.set_events_max_size(None)
