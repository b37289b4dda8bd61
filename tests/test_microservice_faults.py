"""Fault tests of the microservice tracker: daemon restarts, broken streams,
a daemon that is not there yet, and a randomized churn with a restart in the middle.

Everything runs against the suite's private dockerd (restarting it is safe;
the host's daemon is never touched).  After each test the tracker's map must
equal a fresh list + inspect, the callback log must be consistent (nothing
duplicated) and replay to that same map (nothing missed).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mshelpers import (
    Tracked,
    project,
    run,
    running_pid,
    start_tracker,
    tracking,
    truth,
    wait_match,
    wait_until,
)

import nslib
from nslib.microservice import MicroserviceTracker

pytestmark = [pytest.mark.docker, pytest.mark.root]


@pytest.fixture
def tracked(dockerd: Any, docker_client: Any) -> Iterator[Tracked]:
    with tracking(dockerd) as tr:
        yield tr


@pytest.fixture
def events_only(dockerd: Any, docker_client: Any) -> Iterator[Tracked]:
    """A tracker without pidfd watching: it learns only from the daemon."""
    with tracking(dockerd, watch_processes=False) as tr:
        yield tr


def settle(client: Any, timeout: float = 30.0) -> None:
    """Wait until no container is between runs of its restart policy."""

    def calm() -> bool:
        try:
            states = [c["State"] for c in client.api.containers(all=True)]
        except Exception:
            return False
        return "restarting" not in states

    wait_until(calm, timeout, "restart policies to settle")


def assert_consistent(tr: Tracked, client: Any) -> dict[str, tuple[str, int]]:
    """Map == truth, log consistent, log replays to the map; returns the truth."""
    want = wait_match(tr.tracker, client, 30)
    # The dispatcher runs behind the state by a hair: wait for the replay to agree.
    wait_until(lambda: tr.log.replay() == want, 10, "callback log to replay to the map")
    tr.log.check()
    assert project(tr.tracker.snapshot()) == truth(client) == want
    return want


# -----------------------------------------------------------------------------


@pytest.mark.parametrize("crash", [False, True], ids=["clean", "crash"])
def test_daemon_restart_while_containers_churn(
    dockerd: Any, tracked: Tracked, docker_client: Any, unique: str, crash: bool
) -> None:
    """Restart dockerd while containers start and stop; policy containers come back."""
    t, log = tracked.tracker, tracked.log
    always = [run(docker_client, f"{unique}-p{i}", restart="always") for i in range(2)]
    plain = run(docker_client, f"{unique}-n")
    labels = [f"{unique}-p0", f"{unique}-p1", f"{unique}-n"]
    wait_until(lambda: set(labels) <= set(t.snapshot()), 10, "all three tracked")
    old_pids = {c.id: running_pid(docker_client, c.id) for c in always}

    stop = threading.Event()
    churned = []

    def churn() -> None:  # keeps starting and removing containers, daemon up or not
        i = 0
        while not stop.is_set():
            i += 1
            try:
                c = run(docker_client, f"{unique}-c{i % 3}")
                churned.append(c.id)
                time.sleep(0.05)
                docker_client.api.remove_container(c.id, force=True)
            except Exception:
                time.sleep(0.05)

    th = threading.Thread(target=churn)
    th.start()
    try:
        time.sleep(0.5)
        dockerd.restart(crash=crash)
        time.sleep(1.0)
    finally:
        stop.set()
        th.join(30)
    assert churned, "the churn never ran"
    settle(docker_client)
    want = assert_consistent(tracked, docker_client)
    assert t.health().reconnects >= 1
    for i, c in enumerate(always):
        label = f"{unique}-p{i}"
        new_pid = running_pid(docker_client, c.id)
        assert new_pid != old_pids[c.id]
        assert want[label] == (c.id, new_pid)
        # Exactly: started, stopped with the old daemon, restarted by the new one.
        assert log.of(label) == [
            ("STARTED", c.id, old_pids[c.id]),
            ("STOPPED", c.id, old_pids[c.id]),
            ("RESTARTED", c.id, new_pid),
        ]
        with t.snapshot()[label].open_namespace() as h:
            assert h.ns_id == _ns(new_pid)
    assert log.kinds(f"{unique}-n") == ["STARTED", "STOPPED"]
    assert f"{unique}-n" not in want
    assert plain.id


def _ns(pid: int) -> tuple[int, int]:
    st = os.stat(f"/proc/{pid}/ns/net")
    return (st.st_dev, st.st_ino)


@pytest.mark.parametrize("overflow", [False, True], ids=["replay", "ring-overflow"])
def test_forced_reconnect_with_missed_events(
    events_only: Tracked, docker_client: Any, unique: str, overflow: bool
) -> None:
    """Break the stream, change things while nobody listens, reconnect.

    ``replay``: ``since`` replays what was missed.  ``ring-overflow``: more
    than 256 other events push the missed ones out of the daemon's history,
    so only the resync after reconnecting can repair the map.  (Without
    pidfd watching, which would see the kill at once.)
    """
    tracked = events_only
    t, log = tracked.tracker, tracked.log
    a = run(docker_client, f"{unique}-a")
    c = run(docker_client, f"{unique}-c")
    scratch = run(docker_client, None) if overflow else None
    wait_until(lambda: {f"{unique}-a", f"{unique}-c"} <= set(t.snapshot()), 10, "a and c")
    old_c = t.snapshot()[f"{unique}-c"]
    gate = threading.Event()
    t._force_reconnect(gate)
    wait_until(lambda: not t.health().connected, 5, "disconnect")
    assert not t.in_sync
    broke_ns = time.time_ns()
    docker_client.api.kill(a.id)
    b = run(docker_client, f"{unique}-b")
    docker_client.api.restart(c.id, timeout=0)
    if scratch is not None:
        for i in range(300):  # one event each: more than the daemon's 256-event ring
            docker_client.api.rename(scratch.id, f"{scratch.name}-r{i}")
        # The daemon really forgot: a replay from the break no longer has a's die.
        now = time.time_ns()
        replayed = list(
            docker_client.api.events(
                since=f"{broke_ns // 10**9}.{broke_ns % 10**9:09d}",
                until=f"{now // 10**9}.{now % 10**9:09d}",
                filters={"type": "container", "event": ["die", "start"]},
                decode=True,
            )
        )
        assert not [e for e in replayed if e["Actor"]["ID"] in (a.id, b.id)]
    time.sleep(0.3)
    # Nobody listened: the tracker still believes the old world.
    snap = t.snapshot()
    assert f"{unique}-a" in snap and f"{unique}-b" not in snap
    assert snap[f"{unique}-c"] == old_c
    gate.set()
    assert t.wait_in_sync(10), t.health()
    want = assert_consistent(tracked, docker_client)
    assert t.health().reconnects == 1
    if not overflow:  # `since` went back a margin: what was seen before came again
        assert t.health().duplicates_dropped >= 1
    assert log.kinds(f"{unique}-a") == ["STARTED", "STOPPED"]
    assert log.of(f"{unique}-b") == [("STARTED", b.id, running_pid(docker_client, b.id))]
    assert log.kinds(f"{unique}-c") == ["STARTED", "STOPPED", "RESTARTED"]
    assert want[f"{unique}-c"] == (c.id, running_pid(docker_client, c.id)) != (c.id, old_c.pid)


def test_events_during_initial_sync(dockerd: Any, docker_client: Any, unique: str) -> None:
    """Containers start and die while the tracker subscribes and syncs: nothing lost,
    nothing reported twice (a start seen by both the list and the stream is one STARTED).
    """
    stop = threading.Event()
    made: list[Any] = []

    def churn(k: int) -> None:
        i = 0
        while not stop.is_set() or i < 4:  # at least 4 each, however slow the machine
            i += 1
            c = run(docker_client, f"{unique}-{k}-{i}")
            made.append(c)
            if i % 2:
                docker_client.api.kill(c.id)

    threads = [threading.Thread(target=churn, args=(k,)) for k in range(3)]
    for th in threads:
        th.start()
    try:
        time.sleep(0.4)
        tr, tclient = start_tracker(dockerd)
        time.sleep(0.8)
    finally:
        stop.set()
        for th in threads:
            th.join(30)
    try:
        want = assert_consistent(tr, docker_client)
        ours = [lb for lb in want if lb.startswith(unique)]
        assert len(ours) >= 6 and len(made) >= 12, (ours, len(made))
        for label in ours:  # still running: exactly one STARTED, whoever saw it first
            assert tr.log.kinds(label) == ["STARTED"], (label, tr.log.of(label))
        killed = [lb for lb in {e.label for e in tr.log.snapshot()} if lb not in want]
        for label in killed:
            assert tr.log.kinds(label) == ["STARTED", "STOPPED"], (label, tr.log.of(label))
    finally:
        tr.tracker.stop()
        tclient.close()


def test_periodic_resync_is_silent(dockerd: Any, docker_client: Any, unique: str) -> None:
    run(docker_client, unique)
    with tracking(dockerd, resync_interval=0.2) as tr:
        wait_until(lambda: tr.tracker.health().resyncs >= 4, 10, "periodic resyncs")
        assert_consistent(tr, docker_client)
        assert tr.log.kinds(unique) == ["STARTED"]


def _no_docker_env(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    for var in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DOCKER_HOST", url)


def test_missing_daemon_at_start(
    dockerd: Any, docker_client: Any, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No daemon: start() is fine, health() says why, lookups time out promptly;
    when the socket appears the tracker connects and syncs by itself.
    """
    sock = tmp_path / "docker.sock"
    _no_docker_env(monkeypatch, f"unix://{sock}")
    c = run(docker_client, unique)
    t = MicroserviceTracker()  # from DOCKER_HOST, built lazily
    t0 = time.monotonic()
    t.start()
    try:
        assert time.monotonic() - t0 < 0.2
        wait_until(lambda: t.health().last_error, 5, "an error in health()")
        h = t.health()
        assert not h.connected and not h.in_sync and not h.synced_once
        assert "docker" in h.last_error.lower()
        for call in (lambda: t.get(unique, timeout=0.2), lambda: t.wait_for(unique, 0.2)):
            t0 = time.monotonic()
            with pytest.raises(nslib.DockerUnavailableError, match="not in sync"):
                call()
            assert time.monotonic() - t0 < 0.6
        assert not t.wait_in_sync(0.2)
        # The daemon "appears" at the configured address.
        sock.symlink_to(dockerd.socket_path)
        assert t.wait_in_sync(10), t.health()
        ms = t.get(unique, timeout=0)
        assert ms is not None and ms.container_id == c.id
        wait_match(t, docker_client)
    finally:
        t0 = time.monotonic()
        t.stop()
        assert time.monotonic() - t0 < 0.5
    assert not [th for th in threading.enumerate() if th.name.startswith("nslib-ms")]


def test_stop_while_daemon_missing_is_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import docker

    _no_docker_env(monkeypatch, f"unix://{tmp_path}/nothing.sock")
    # Also with a client given explicitly (fixed version: no I/O to build it).
    given = docker.DockerClient(base_url=f"unix://{tmp_path}/nothing.sock", version="1.41")
    try:
        for t in (MicroserviceTracker(), MicroserviceTracker(given)):
            t.start()
            time.sleep(0.8)  # into the backoff
            assert t.health().last_error
            t0 = time.monotonic()
            t.stop()
            t.stop()
            assert time.monotonic() - t0 < 0.5
            assert not [th for th in threading.enumerate() if th.name.startswith("nslib-ms")]
    finally:
        given.close()


# -----------------------------------------------------------------------------
# Randomized churn

_SEEDS = [int(s) for s in os.environ.get("NSLIB_CHURN_SEEDS", "7").split(",")]


@pytest.mark.slow
@pytest.mark.parametrize("seed", _SEEDS)
def test_randomized_churn_with_daemon_restart(
    dockerd: Any, docker_client: Any, unique: str, seed: int
) -> None:
    """A seeded random schedule of start/stop/kill/restart/rm/host-SIGKILL/pause on
    containers sharing three labels, a dockerd restart in the middle: the map ends
    equal to the truth and the callback log replays to it.
    """
    import docker.errors

    rng = random.Random(seed)
    with tracking(dockerd) as tr:
        containers: list[Any] = []
        ops_done: list[str] = []
        n_ops = 40
        for step in range(n_ops):
            if step == n_ops // 2:
                dockerd.restart(crash=rng.random() < 0.5)
                ops_done.append("daemon-restart")
            live = [c for c in containers if c is not None]
            op = rng.choice(
                ["run"] * 3 + ["stop", "kill", "restart", "rm", "start", "sigkill", "pause"]
            )
            if op == "run" or not live:
                if len(live) >= 7:
                    op = "rm"
                else:
                    policy = rng.choice([None, None, "always"])
                    c = run(docker_client, f"{unique}-{rng.randrange(3)}", restart=policy)
                    containers.append(c)
                    ops_done.append(f"run {c.name} {policy}")
                    time.sleep(rng.random() * 0.05)
                    continue
            c = rng.choice(live)
            try:
                if op == "stop":
                    docker_client.api.stop(c.id, timeout=0)
                elif op == "kill":
                    docker_client.api.kill(c.id)
                elif op == "restart":
                    docker_client.api.restart(c.id, timeout=0)
                elif op == "rm":
                    docker_client.api.remove_container(c.id, force=True)
                    containers[containers.index(c)] = None
                elif op == "start":
                    docker_client.api.start(c.id)
                elif op == "sigkill":  # a crash: restart policies apply
                    pid = running_pid(docker_client, c.id)
                    if pid:
                        os.kill(pid, signal.SIGKILL)
                elif op == "pause":
                    state = docker_client.api.inspect_container(c.id)["State"]
                    if state["Paused"]:
                        docker_client.api.unpause(c.id)
                    elif state["Running"]:
                        docker_client.api.pause(c.id)
                ops_done.append(f"{op} {c.name}")
            except (docker.errors.APIError, ProcessLookupError) as e:
                ops_done.append(f"{op} {c.name} failed: {str(e)[:60]}")
            time.sleep(rng.random() * 0.05)
        settle(docker_client)
        want = assert_consistent(tr, docker_client)
        assert tr.tracker.health().reconnects >= 1
        # The schedule really exercised something.
        assert len([e for e in tr.log.snapshot() if e.label.startswith(unique)]) >= 5, ops_done
        del want


def test_stop_seen_through_the_pidfd_while_the_daemon_is_frozen(
    dockerd: Any, tracked: Tracked, docker_client: Any, unique: str
) -> None:
    """A wedged daemon sends no event; the process's pidfd still says it stopped."""
    t, log = tracked.tracker, tracked.log
    c = run(docker_client, unique)
    log.wait_kinds(unique, ["STARTED"])
    pid = t.snapshot()[unique].pid
    exits = t.health().process_exits
    os.kill(dockerd.pid, signal.SIGSTOP)
    try:
        os.kill(pid, signal.SIGKILL)  # the container's PID 1 dies; dockerd cannot tell
        log.wait_kinds(unique, ["STARTED", "STOPPED"], timeout=10)
        assert unique not in t.snapshot()
        assert t.health().process_exits == exits + 1
        ev = log.last(unique)
        assert ev.daemon_time_ns is not None and ev.microservice.container_id == c.id
    finally:
        os.kill(dockerd.pid, signal.SIGCONT)
    assert_consistent(tracked, docker_client)
    assert t.health().process_exits == exits + 1  # the daemon's die changed nothing more
