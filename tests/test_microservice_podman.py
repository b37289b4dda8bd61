"""The microservice tracker following podman (``PodmanSource``), against a private
``podman system service`` started here (``tests/podmand.py``).

Each scenario ends with the tracker's map equal to podman's own listing
(``podman ps`` + ``podman inspect`` through the CLI, independent of nslib),
and the callback log consistent and replaying to that map.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import missing
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

pytestmark = [pytest.mark.docker, pytest.mark.root]

LABEL_ENV = "MICROSERVICE_LABEL"


@pytest.fixture(scope="module")
def podman(dockerd: Any) -> Iterator[Any]:
    """A private podman service with the test image (moved over from the private dockerd)."""
    if shutil.which("podman") is None:
        missing("needs podman (scripts/host-setup.sh installs it)")
    from podmand import PrivatePodman

    with PrivatePodman() as p:
        p.load_image_from_docker(dockerd.base_url)
        yield p


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


@pytest.fixture
def ptracked(podman: Any) -> Iterator[Tracked]:
    t = MicroserviceTracker(PodmanSource(podman.url))
    log = EventLog()
    t.subscribe(log)
    t.start()
    try:
        assert t.wait_in_sync(15), t.health()
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
