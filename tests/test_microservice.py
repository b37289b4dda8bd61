"""The microservice tracker against a real, private docker daemon.

Every docker scenario ends by comparing the tracker's map with a fresh
list + inspect computed here, independently of the tracker (``truth``), and
checks the callback log: the exact sequence per label, nothing duplicated,
and a replay of the log giving the same map.

The first part tests the pure state logic (``nslib._docker_state``) without
a daemon, with hypothesis.  Helpers shared with the other tracker
tests live in ``mshelpers.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from helpers import open_fds
from hypothesis import given
from hypothesis import strategies as st
from mshelpers import (
    HOST_NS,
    LABEL_ENV,
    Entry,
    EventLog,
    Key,
    Tracked,
    _rfc3339_ns,
    check_log,
    microservice_of,
    ns_of_pid,
    pmap,
    project,
    run,
    running_pid,
    tracking,
    truth_claims,
    wait_match,
    wait_until,
)

import nslib
from nslib._docker_state import EventKind, LabelTable, instance_key, label_of, parse_time_ns
from nslib.microservice import Microservice, MicroserviceEvent, MicroserviceTracker

T = TypeVar("T")

# =============================================================================
# Pure state logic: no daemon


@dataclass(frozen=True)
class Inst:
    label: str
    container_id: str
    pid: int
    created_ns: int
    started_at_ns: int


def test_parse_time_ns() -> None:
    assert parse_time_ns("1970-01-01T00:00:00Z") == 0
    assert parse_time_ns("2026-11-28T18:43:30.724627639Z") == _rfc3339_ns(
        "2026-11-28T18:43:30.724627639Z"
    )
    # Go's RFC3339Nano trims trailing zeros: ".5" is half a second.
    assert parse_time_ns("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert parse_time_ns("1970-01-01T01:00:00+01:00") == 0
    assert parse_time_ns("0001-01-01T00:00:00Z") < 0  # "never started"
    for bad in ("", "yesterday", "2026-11-28 18:43:30Z", "2026-11-28T18:43:30.1234567891Z"):
        with pytest.raises(ValueError):
            parse_time_ns(bad)


def test_label_of() -> None:
    info = {"Config": {"Env": ["A=1", "MICROSERVICE_LABEL=web", "B=2"], "Labels": {"k": "lab"}}}
    assert label_of(info, "MICROSERVICE_LABEL", None) == "web"
    assert label_of(info, "MICROSERVICE_LABEL", "k") == "web"  # env wins
    assert label_of(info, None, "k") == "lab"
    assert label_of(info, "OTHER", "k") == "lab"
    assert label_of(info, "OTHER", None) is None
    assert label_of({"Config": {"Env": ["MICROSERVICE_LABEL="]}}, LABEL_ENV, None) is None
    assert label_of({"Config": {"Env": None, "Labels": None}}, LABEL_ENV, "k") is None
    # The last assignment wins, as in the container's environment.
    dup = {"Config": {"Env": ["MICROSERVICE_LABEL=a", "MICROSERVICE_LABEL=b"]}}
    assert label_of(dup, LABEL_ENV, None) == "b"


def test_microservice_validates() -> None:
    ok = dict(label="l", container_id="ab" * 32, name="n", pid=1, created_ns=0, started_at_ns=0)
    Microservice(**ok)  # type: ignore[arg-type]
    for field, bad in (("label", ""), ("container_id", "xyz"), ("container_id", "ab"), ("pid", 0)):
        with pytest.raises(ValueError):
            Microservice(**{**ok, field: bad})  # type: ignore[arg-type]
    ms = Microservice(**{**ok, "network_mode": "container:" + "cd" * 32})  # type: ignore[arg-type]
    assert ms.shares_network and ms.network_container == "cd" * 32
    assert Microservice(**{**ok, "network_mode": "host"}).shares_network  # type: ignore[arg-type]
    assert not Microservice(**ok).shares_network  # type: ignore[arg-type]
    t = Microservice(**{**ok, "created_ns": 1_500_000_123})  # type: ignore[arg-type]
    assert t.created.timestamp() == pytest.approx(1.500000123, abs=1e-6)


def _changes_log(changes: Iterable[Any]) -> list[Entry]:
    return [
        (
            c.kind.name,
            c.label,
            instance_key(c.subject),
            frozenset(instance_key(x) for x in c.claimants),
        )
        for c in changes
    ]


def test_table_sequences() -> None:
    tbl: LabelTable[Inst] = LabelTable()
    a1 = Inst("x", "a" * 12, 10, 100, 1)
    b1 = Inst("x", "b" * 12, 20, 200, 2)

    def kinds(changes: Iterable[Any]) -> list[tuple[str, str]]:
        return [(c.kind.name, c.subject.container_id[0]) for c in changes]

    assert kinds(tbl.update({a1.container_id: a1})) == [("STARTED", "a")]
    # Same container, new run, seen in one look: STOPPED then RESTARTED.
    a2 = Inst("x", "a" * 12, 11, 100, 3)
    assert kinds(tbl.update({a1.container_id: a2})) == [("STOPPED", "a"), ("RESTARTED", "a")]
    # A newer claimant takes over, with a CONFLICT naming it the winner.
    out = tbl.update({b1.container_id: b1})
    assert kinds(out) == [("STARTED", "b"), ("CONFLICT", "b")]
    assert [c.container_id[0] for c in out[1].claimants] == ["b", "a"]
    # The winner dies: the other claimant takes over (not forgotten, unlike vpp-agent).
    assert kinds(tbl.update({b1.container_id: None})) == [("STARTED", "a")]
    # The loser restarts while b is down: nothing to say but STOPPED/RESTARTED of a.
    assert kinds(tbl.update({a2.container_id: None})) == [("STOPPED", "a")]
    # b comes back: it stopped earlier than a did, so it is a STARTED.
    b2 = Inst("x", "b" * 12, 21, 200, 4)
    assert kinds(tbl.update({b2.container_id: b2})) == [("STARTED", "b")]
    assert tbl.winners() == {"x": b2}
    # A resync that finds nothing stops it.
    assert kinds(tbl.replace({})) == [("STOPPED", "b")]
    assert kinds(tbl.replace({})) == []


def test_table_tie_break() -> None:
    tbl: LabelTable[Inst] = LabelTable()
    # Same Created nanosecond: the later StartedAt wins, then the greater ID.
    a = Inst("x", "a" * 12, 10, 100, 5)
    b = Inst("x", "b" * 12, 20, 100, 4)
    tbl.update({a.container_id: a, b.container_id: b})
    assert tbl.winner("x") == a
    c = Inst("x", "c" * 12, 30, 100, 5)
    tbl.update({c.container_id: c})
    assert tbl.winner("x") == c
    assert [x.container_id[0] for x in tbl.claimants("x")] == ["c", "a", "b"]


_IDS = ["a" * 12, "b" * 12, "c" * 12, "d" * 12]
_CREATED = {"a" * 12: 1, "b" * 12: 2, "c" * 12: 2, "d" * 12: 3}  # b and c tie


@st.composite
def _steps(draw: st.DrawFn) -> list[tuple[bool, dict[str, Inst | None]]]:
    labels = {cid: draw(st.sampled_from(["x", "y"])) for cid in _IDS}
    steps = []
    for _ in range(draw(st.integers(1, 25))):
        is_resync = draw(st.booleans()) and draw(st.booleans())
        chosen = draw(st.lists(st.sampled_from(_IDS), unique=True, max_size=len(_IDS)))
        truth_: dict[str, Inst | None] = {}
        for cid in chosen:
            if draw(st.booleans()):
                run = draw(st.integers(1, 3))
                truth_[cid] = Inst(
                    labels[cid], cid, 100 * run + _IDS.index(cid), _CREATED[cid], run
                )
            else:
                truth_[cid] = None
        steps.append((is_resync, truth_))
    return steps


@given(_steps())
def test_table_properties(steps: list[tuple[bool, dict[str, Inst | None]]]) -> None:
    """Random updates and resyncs: the change log replays to the table's winners,
    the winner is always the best-ranked running claimant, and the log is consistent.
    """
    tbl: LabelTable[Inst] = LabelTable()
    model: dict[str, Inst] = {}
    log: list[Entry] = []
    replayed: dict[str, Key] = {}
    dead: set[Key] = set()  # a run that ended never comes back (same PID and StartedAt)
    for is_resync, raw in steps:
        truth_ = {cid: x for cid, x in raw.items() if x is None or instance_key(x) not in dead}
        for cid, old_x in model.items():
            new_x = truth_.get(cid, old_x) if not is_resync else truth_.get(cid)
            if new_x is None or instance_key(new_x) != instance_key(old_x):
                dead.add(instance_key(old_x))
        before = tbl.winners()
        if is_resync:
            running = {cid: x for cid, x in truth_.items() if x is not None}
            changes = tbl.replace(running)
            model = dict(running)
        else:
            changes = tbl.update(truth_)
            for cid, x in truth_.items():
                if x is None:
                    model.pop(cid, None)
                else:
                    model[cid] = x
        log += _changes_log(changes)
        for c in changes:
            if c.kind is EventKind.STOPPED:
                assert replayed.pop(c.label) == instance_key(c.subject)
            else:
                replayed[c.label] = instance_key(c.subject)
        want = {}
        for x in model.values():
            if x.label not in want or (x.created_ns, x.started_at_ns, x.container_id) > (
                want[x.label].created_ns,
                want[x.label].started_at_ns,
                want[x.label].container_id,
            ):
                want[x.label] = x
        assert tbl.winners() == want
        assert replayed == {lb: instance_key(x) for lb, x in want.items()}
        # A lone holder that came back as a new run: exactly STOPPED, RESTARTED.
        for label, old in before.items():
            new = want.get(label)
            claim = [x for x in model.values() if x.label == label]
            if (
                new is not None
                and new.container_id == old.container_id
                and instance_key(new) != instance_key(old)
                and len(claim) == 1
            ):
                assert [(k, key) for k, lb, key, _ in _changes_log(changes) if lb == label] == [
                    ("STOPPED", instance_key(old)),
                    ("RESTARTED", instance_key(new)),
                ]
    check_log(log)


# =============================================================================
# Docker scenarios


@pytest.fixture
def tracked(dockerd: Any, docker_client: Any) -> Iterator[Tracked]:
    with tracking(dockerd) as tr:
        yield tr
    # Fixture teardown runs whether or not the test passed.
    assert not tr.log.threads - {"nslib-ms-dispatch"}, tr.log.threads
    tr.log.check()


@pytest.mark.docker
@pytest.mark.root
def test_before_and_after(dockerd: Any, docker_client: Any, unique: str) -> None:
    before = run(docker_client, f"{unique}-a")
    with tracking(dockerd) as tr:
        t, log = tr.tracker, tr.log
        # Known from the initial sync, without any event.
        ms_a = t.get(f"{unique}-a", timeout=0)
        assert ms_a is not None and ms_a.container_id == before.id
        assert ms_a.name == before.name and ms_a.network_mode == "none"
        log.wait_kinds(f"{unique}-a", ["STARTED"])
        assert log.last(f"{unique}-a").daemon_time_ns is None  # found by the resync
        after = run(docker_client, f"{unique}-b")
        log.wait_kinds(f"{unique}-b", ["STARTED"])
        ev = next(e for e in log.snapshot() if e.label == f"{unique}-b")
        assert ev.microservice.container_id == after.id
        assert ev.daemon_time_ns is not None and ev.daemon_time_ns <= time.time_ns()
        wait_match(t, docker_client)
        for label, c in ((f"{unique}-a", before), (f"{unique}-b", after)):
            ms = t.snapshot()[label]
            pid = running_pid(docker_client, c.id)
            assert ms.pid == pid
            assert ms.created.year >= 2024 and ms.started_at >= ms.created
            with ms.open_namespace() as h:
                assert h.ns_id == ns_of_pid(pid) != HOST_NS
            # The reference API resolves through the tracker.
            ref = nslib.NetNamespace.microservice(label)
            with nslib.open_namespace(ref, tracker=t) as h:
                assert h.ns_id == ns_of_pid(pid)
        with pytest.raises(nslib.UnavailableMicroserviceError):
            nslib.open_namespace(nslib.NetNamespace.microservice(f"{unique}-none"), tracker=t)
        assert t.get(f"{unique}-none") is None
        h = t.health()
        assert h.connected and h.in_sync and h.reconnects == 0 and h.resyncs >= 1
        assert h.last_event_time is not None and abs(h.last_event_time - time.time()) < 60
        assert "labels" in repr(t)
        log.wait_replay(t)
    tr.log.check()


@pytest.mark.docker
@pytest.mark.root
@pytest.mark.parametrize("how", ["stop", "kill", "exit", "rm"])
def test_termination(tracked: Tracked, docker_client: Any, unique: str, how: str) -> None:
    """Every way a container ends is a STOPPED (only `stop` sends a stop event)."""
    t, log = tracked.tracker, tracked.log
    cmd = "sh -c 'sleep 0.5'" if how == "exit" else None
    c = run(docker_client, unique, command=cmd)
    log.wait_kinds(unique, ["STARTED"])
    ms = log.last(unique).microservice
    if how == "stop":
        docker_client.api.stop(c.id, timeout=0)
    elif how == "kill":
        docker_client.api.kill(c.id)
    elif how == "rm":
        docker_client.api.remove_container(c.id, force=True)
    log.wait_kinds(unique, ["STARTED", "STOPPED"])
    assert log.of(unique)[1] == ("STOPPED", c.id, ms.pid)
    assert unique not in t.snapshot()
    wait_match(t, docker_client)
    with pytest.raises(nslib.UnavailableMicroserviceError, match="exited"):
        ms.open_namespace().close()
    time.sleep(0.3)  # nothing trails in late
    assert log.kinds(unique) == ["STARTED", "STOPPED"]


@pytest.mark.docker
@pytest.mark.root
def test_docker_restart_and_stop_start(tracked: Tracked, docker_client: Any, unique: str) -> None:
    """A die then a start of the same container is STOPPED, then RESTARTED."""
    t, log = tracked.tracker, tracked.log
    c = run(docker_client, unique)
    log.wait_kinds(unique, ["STARTED"])
    old = t.snapshot()[unique]
    docker_client.api.restart(c.id, timeout=0)
    log.wait_kinds(unique, ["STARTED", "STOPPED", "RESTARTED"])
    new = t.snapshot()[unique]
    assert new.container_id == old.container_id and new.pid != old.pid
    assert new.started_at_ns > old.started_at_ns
    # The old run's namespace is gone; a stale Microservice says so.
    with pytest.raises(nslib.UnavailableMicroserviceError):
        old.open_namespace().close()
    with new.open_namespace() as h:
        assert h.ns_id == ns_of_pid(new.pid)
    docker_client.api.stop(c.id, timeout=0)
    log.wait_kinds(unique, ["STARTED", "STOPPED", "RESTARTED", "STOPPED"])
    docker_client.api.start(c.id)
    log.wait_kinds(unique, ["STARTED", "STOPPED", "RESTARTED", "STOPPED", "RESTARTED"])
    ids = {cid for _, cid, _ in log.of(unique)}
    assert ids == {c.id}
    wait_match(t, docker_client)
    log.wait_replay(t)


@pytest.mark.docker
@pytest.mark.root
def test_restart_policy_crash_loop(tracked: Tracked, docker_client: Any, unique: str) -> None:
    """SIGKILL from the host (docker kill would not trigger the policy)."""
    t, log = tracked.tracker, tracked.log
    c = run(docker_client, unique, restart="always")
    log.wait_kinds(unique, ["STARTED"])
    pids = [t.snapshot()[unique].pid]
    expected = ["STARTED"]
    for _ in range(3):
        os.kill(pids[-1], signal.SIGKILL)
        expected += ["STOPPED", "RESTARTED"]
        log.wait_kinds(unique, expected)
        pids.append(t.snapshot()[unique].pid)
    assert len(set(pids)) == 4
    assert [pid for k, _, pid in log.of(unique) if k != "STOPPED"] == pids
    assert {cid for _, cid, _ in log.of(unique)} == {c.id}
    wait_match(t, docker_client)


@pytest.mark.docker
@pytest.mark.root
def test_self_crashing_on_failure(tracked: Tracked, docker_client: Any, unique: str) -> None:
    """A process that exits 3 under on-failure:2 runs three times, then stays down."""
    t, log = tracked.tracker, tracked.log
    run(docker_client, unique, restart="on-failure:2", command="sh -c 'sleep 0.4; exit 3'")
    log.wait_kinds(
        unique, ["STARTED", "STOPPED", "RESTARTED", "STOPPED", "RESTARTED", "STOPPED"], 20
    )
    assert len({pid for _, _, pid in log.of(unique)}) == 3
    wait_match(t, docker_client)


@pytest.mark.docker
@pytest.mark.root
def test_pause_is_not_termination(
    dockerd: Any, tracked: Tracked, docker_client: Any, unique: str
) -> None:
    t, log = tracked.tracker, tracked.log
    c = run(docker_client, unique)
    log.wait_kinds(unique, ["STARTED"])
    ms = t.snapshot()[unique]
    docker_client.api.pause(c.id)
    try:
        assert docker_client.api.inspect_container(c.id)["State"]["Paused"]
        wait_match(t, docker_client)
        assert t.snapshot()[unique] == ms
        with ms.open_namespace() as h:  # a paused container's namespace is usable
            assert h.ns_id == ns_of_pid(ms.pid)
    finally:
        docker_client.api.unpause(c.id)
    wait_match(t, docker_client)
    time.sleep(0.3)
    assert log.kinds(unique) == ["STARTED"]
    # A tracker started while it is paused sees it too.
    docker_client.api.pause(c.id)
    try:
        with tracking(dockerd) as tr2:
            assert tr2.tracker.snapshot()[unique] == ms
    finally:
        docker_client.api.unpause(c.id)


@pytest.mark.docker
@pytest.mark.root
def test_duplicate_labels(tracked: Tracked, docker_client: Any, unique: str) -> None:
    """Newest Created wins with a CONFLICT; when it dies the other takes over."""
    t, log = tracked.tracker, tracked.log
    a = run(docker_client, unique)
    log.wait_kinds(unique, ["STARTED"])
    b = run(docker_client, unique)
    log.wait_kinds(unique, ["STARTED", "STARTED", "CONFLICT"])
    conflict = log.last(unique)
    assert conflict.microservice.container_id == b.id
    assert [m.container_id for m in conflict.claimants] == [b.id, a.id]
    assert [m.container_id for m in t.claimants(unique)] == [b.id, a.id]
    claims = truth_claims(docker_client)[unique]
    assert [cid for _, cid, _ in claims] == [b.id, a.id]
    wait_match(t, docker_client)
    # Restarting the older one changes nothing about the winner.
    docker_client.api.restart(a.id, timeout=0)
    wait_until(
        lambda: t.claimants(unique)[-1].pid == running_pid(docker_client, a.id), 10, "a back"
    )
    assert t.snapshot()[unique].container_id == b.id
    # The winner dies: failover to a (STARTED, not STOPPED).
    n = len(log.of(unique))
    docker_client.api.kill(b.id)
    wait_until(lambda: log.kinds(unique)[n:] == ["STARTED"], 10, "failover")
    assert log.of(unique)[-1] == ("STARTED", a.id, running_pid(docker_client, a.id))
    wait_match(t, docker_client)
    docker_client.api.kill(a.id)
    wait_until(lambda: log.kinds(unique)[-1:] == ["STOPPED"], 10, "stopped")
    wait_match(t, docker_client)
    log.wait_replay(t)


@pytest.mark.docker
@pytest.mark.root
def test_fifty_containers_at_once(dockerd: Any, docker_client: Any, unique: str) -> None:
    from dockerd import unique_name

    with tracking(dockerd) as tr:
        t, log = tr.tracker, tr.log
        labels = [f"{unique}-{i}" for i in range(50)]
        containers = pmap(lambda lb: run(docker_client, lb, name=unique_name("fifty")), labels)
        want = wait_match(t, docker_client, 60)
        assert all(want[lb][0] == c.id for lb, c in zip(labels, containers, strict=True))
        wait_until(lambda: all(log.kinds(lb) == ["STARTED"] for lb in labels), 20, "50 STARTED")
        # A second tracker's initial sync sees all fifty.
        with tracking(dockerd) as tr2:
            assert project(tr2.tracker.snapshot()) == want
            # Callbacks follow the state (dispatcher thread): wait for all fifty.
            wait_until(
                lambda: sorted(e.label for e in tr2.log.snapshot()) == sorted(want), 10, "replay"
            )
        pmap(lambda c: docker_client.api.remove_container(c.id, force=True), containers)
        wait_until(
            lambda: all(log.kinds(lb) == ["STARTED", "STOPPED"] for lb in labels), 30, "STOPPED"
        )
        wait_match(t, docker_client)
        log.wait_replay(t)
    tr.log.check()


@pytest.mark.docker
@pytest.mark.root
def test_network_modes(tracked: Tracked, docker_client: Any, unique: str) -> None:
    """host: refused unless allow_shared; container:X: X's namespace, flagged shared."""
    t = tracked.tracker
    x = run(docker_client, f"{unique}-x")
    host = run(docker_client, f"{unique}-host", network="host")
    shared = run(docker_client, f"{unique}-shared", network=f"container:{x.id}")
    wait_match(t, docker_client)
    snap = t.snapshot()
    ms_host, ms_shared, ms_x = snap[f"{unique}-host"], snap[f"{unique}-shared"], snap[f"{unique}-x"]
    assert ms_host.network_mode == "host" and ms_host.shares_network
    assert ms_shared.network_container == x.id and ms_shared.shares_network
    assert not ms_x.shares_network
    with pytest.raises(nslib.UnavailableMicroserviceError, match="network host"):
        ms_host.open_namespace()
    with pytest.raises(nslib.UnavailableMicroserviceError, match="network host"):
        nslib.open_namespace(nslib.NetNamespace.microservice(f"{unique}-host"), tracker=t)
    with ms_host.open_namespace(allow_shared=True) as h:
        assert h.ns_id == HOST_NS
    with ms_shared.open_namespace() as h1, ms_x.open_namespace() as h2:
        assert h1.same_namespace(h2) and h1.ns_id != HOST_NS
    # container:X where X is on the host network: the last guard refuses.
    on_host = run(docker_client, f"{unique}-onhost", network=f"container:{host.id}")
    ms_on_host = wait_until(lambda: t.snapshot().get(f"{unique}-onhost"), 10, "onhost")
    assert ms_on_host.container_id == on_host.id
    with pytest.raises(nslib.SharedNamespaceError, match="the host's"):
        ms_on_host.open_namespace()
    with ms_on_host.open_namespace(allow_shared=True) as h:
        assert h.ns_id == HOST_NS
    assert shared.id  # keep the reference used


@pytest.mark.docker
@pytest.mark.root
def test_open_namespace_refuses_reused_pid(docker_client: Any, unique: str) -> None:
    """A stale PID now used by a host process must never yield the host's namespace."""
    fds = open_fds()
    c = run(docker_client, unique)
    ms = microservice_of(docker_client, c.id, unique)
    with ms.open_namespace() as h:
        assert h.ns_id == ns_of_pid(ms.pid) != HOST_NS
    # 1. Constructed: the container's ID with a host process's PID.
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        fake = Microservice(
            label=unique,
            container_id=ms.container_id,
            name=ms.name,
            pid=sleeper.pid,
            created_ns=ms.created_ns,
            started_at_ns=ms.started_at_ns,
        )
        assert ns_of_pid(sleeper.pid) == HOST_NS
        with pytest.raises(nslib.UnavailableMicroserviceError, match="cgroup"):
            fake.open_namespace()
    finally:
        sleeper.kill()
        sleeper.wait()
    # 2. Another container's process: refused too (its cgroup names the other one).
    other = run(docker_client, f"{unique}-o")
    wrong = Microservice(
        label=unique,
        container_id=ms.container_id,
        name="x",
        pid=running_pid(docker_client, other.id),
        created_ns=0,
        started_at_ns=0,
    )
    with pytest.raises(nslib.UnavailableMicroserviceError, match="cgroup"):
        wrong.open_namespace()
    # 3. Forced reuse: kill the container, make the kernel hand its PID to a host sleep.
    docker_client.api.kill(c.id)
    wait_until(lambda: not os.path.exists(f"/proc/{ms.pid}"), 5, "container gone")
    with pytest.raises(nslib.UnavailableMicroserviceError, match="exited"):
        ms.open_namespace()
    reused = False
    for _ in range(20):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(ms.pid - 1))
        p = subprocess.Popen(["sleep", "30"])
        try:
            if p.pid == ms.pid:
                reused = True
                # The stale path now really points at the host's namespace ...
                assert ns_of_pid(ms.pid) == HOST_NS
                # ... and open_namespace refuses instead of following it.
                with pytest.raises(nslib.UnavailableMicroserviceError, match="cgroup"):
                    ms.open_namespace()
                break
        finally:
            p.kill()
            p.wait()
    assert reused, "could not make the kernel reuse the PID (busy machine?)"
    assert open_fds() <= fds | {f for f in open_fds() if _is_socket(f)}


def _is_socket(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    except OSError:
        return False


@pytest.mark.docker
@pytest.mark.root
def test_wait_for_sync_and_async(tracked: Tracked, docker_client: Any, unique: str) -> None:
    t = tracked.tracker
    got: list[Microservice] = []
    waiter = threading.Thread(target=lambda: got.append(t.wait_for(f"{unique}-s", 15)))
    waiter.start()
    time.sleep(0.1)
    c = run(docker_client, f"{unique}-s")
    waiter.join(15)
    assert got and got[0].container_id == c.id
    t0 = time.monotonic()
    with pytest.raises(nslib.UnavailableMicroserviceError, match=r"after 0\.2 s"):
        t.wait_for(f"{unique}-never", 0.2)
    assert time.monotonic() - t0 < 1

    async def main() -> None:
        task = asyncio.create_task(t.wait_for_async(f"{unique}-a", 15))
        await asyncio.sleep(0.1)
        c2 = await asyncio.to_thread(run, docker_client, f"{unique}-a")
        ms = await task
        assert ms.container_id == c2.id
        # Already there: returns at once.
        assert (await t.wait_for_async(f"{unique}-a", 0)).container_id == c2.id
        with pytest.raises(nslib.UnavailableMicroserviceError):
            await t.wait_for_async(f"{unique}-never", 0.2)
        # Cancelling leaves no waiter behind.
        task = asyncio.create_task(t.wait_for_async(f"{unique}-never", 30))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not t._async_waiters

    asyncio.run(main())


@pytest.mark.docker
@pytest.mark.root
def test_callbacks_slow_raising_replay_unsubscribe(
    tracked: Tracked, docker_client: Any, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    t, log = tracked.tracker, tracked.log
    first = run(docker_client, f"{unique}-1")
    log.wait_kinds(f"{unique}-1", ["STARTED"])

    def boom(ev: MicroserviceEvent) -> None:
        raise RuntimeError("callback bug")

    gate = threading.Event()
    slow_seen: list[MicroserviceEvent] = []

    def slow(ev: MicroserviceEvent) -> None:
        slow_seen.append(ev)
        gate.wait(10)

    unsub_boom = t.subscribe(boom)
    unsub_slow = t.subscribe(slow)
    replayed = EventLog()
    t.subscribe(replayed, replay=True)
    second = run(docker_client, f"{unique}-2")
    wait_until(lambda: slow_seen, 5, "the slow callback to block")
    # The dispatcher is stuck in `slow`; the state still follows docker.
    docker_client.api.kill(second.id)
    wait_until(lambda: f"{unique}-2" not in t.snapshot(), 5, "state to move on")
    assert log.kinds(f"{unique}-2") == ["STARTED"]  # its STOPPED waits behind `slow`
    gate.set()
    log.wait_kinds(f"{unique}-2", ["STARTED", "STOPPED"])
    wait_until(lambda: t.health().callback_errors >= 2, 5, "callback errors counted")
    assert "callback bug" in caplog.text
    # The replaying subscriber got the state, then the changes: once each.
    wait_until(lambda: replayed.kinds(f"{unique}-2") == ["STARTED", "STOPPED"], 5, "replay")
    assert replayed.of(f"{unique}-1") == [("STARTED", first.id, t.snapshot()[f"{unique}-1"].pid)]
    replayed.wait_replay(t)
    unsub_boom()
    unsub_slow()
    unsub_slow()  # idempotent
    n, errors = len(slow_seen), t.health().callback_errors
    run(docker_client, f"{unique}-3")
    log.wait_kinds(f"{unique}-3", ["STARTED"])
    wait_until(lambda: replayed.kinds(f"{unique}-3") == ["STARTED"], 5, "third")
    assert len(slow_seen) == n and t.health().callback_errors == errors
    assert replayed.threads == {"nslib-ms-dispatch"}
    replayed.check()


@pytest.mark.docker
@pytest.mark.root
def test_callback_raising_systemexit_or_keyboardinterrupt_does_not_kill_delivery(
    tracked: Tracked, docker_client: Any, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback's SystemExit/KeyboardInterrupt is counted; the dispatcher lives on."""
    t, log = tracked.tracker, tracked.log
    raised: list[str] = []

    def exiting(ev: MicroserviceEvent) -> None:
        if ev.label.startswith(unique):
            raised.append(ev.label)
            raise SystemExit(3) if len(raised) % 2 else KeyboardInterrupt

    t.subscribe(exiting)
    after = EventLog()  # subscribed after the raising one: delivered to after it
    t.subscribe(after)
    errors = t.health().callback_errors
    for i in range(3):
        run(docker_client, f"{unique}-{i}")
        log.wait_kinds(f"{unique}-{i}", ["STARTED"])
        wait_until(lambda i=i: after.kinds(f"{unique}-{i}") == ["STARTED"], 10, "later callback")
    assert raised == [f"{unique}-{i}" for i in range(3)]
    assert t.health().callback_errors == errors + 3
    assert "SystemExit" in caplog.text and "KeyboardInterrupt" in caplog.text
    assert any(th.name == "nslib-ms-dispatch" for th in threading.enumerate())


@pytest.mark.docker
@pytest.mark.root
def test_stop_is_prompt_idempotent_and_callable_from_callback(
    dockerd: Any, docker_client: Any, unique: str
) -> None:
    with tracking(dockerd) as tr:
        t0 = time.monotonic()
        tr.tracker.stop()
        assert time.monotonic() - t0 < 0.5
        tr.tracker.stop()
        assert not [th for th in threading.enumerate() if th.name.startswith("nslib-ms")]
        h = tr.tracker.health()
        assert h.stopped and not h.connected and not h.in_sync
        with pytest.raises(RuntimeError):
            tr.tracker.start()
        with pytest.raises(nslib.UnavailableMicroserviceError, match="stopped"):
            tr.tracker.wait_for(unique, 5)
    # stop() from inside a callback does not deadlock.
    with tracking(dockerd) as tr:
        done = threading.Event()

        def stopper(ev: MicroserviceEvent) -> None:
            tr.tracker.stop()
            done.set()

        tr.tracker.subscribe(stopper)
        run(docker_client, unique)
        assert done.wait(10)
        wait_until(
            lambda: not [th for th in threading.enumerate() if th.name.startswith("nslib-ms")],
            3,
            "threads gone",
        )


@pytest.mark.docker
@pytest.mark.root
def test_label_key_mode(dockerd: Any, docker_client: Any, unique: str) -> None:
    key = "org.nslib.test.ms"
    with tracking(dockerd, label_env=None, label_key=key) as tr:
        t, log = tr.tracker, tr.log
        by_label = run(docker_client, None, labels={key: f"{unique}-l"})
        run(docker_client, f"{unique}-env")  # env only: not a microservice in this mode
        log.wait_kinds(f"{unique}-l", ["STARTED"])
        assert t.snapshot()[f"{unique}-l"].container_id == by_label.id
        assert f"{unique}-env" not in t.snapshot()
        wait_match(t, docker_client, label_env=None, label_key=key)
        docker_client.api.kill(by_label.id)
        log.wait_kinds(f"{unique}-l", ["STARTED", "STOPPED"])
        wait_match(t, docker_client, label_env=None, label_key=key)
    with pytest.raises(ValueError):
        MicroserviceTracker(docker_client, label_env=None, label_key=None)


def test_not_started_and_bad_arguments() -> None:
    t = MicroserviceTracker(object())
    with pytest.raises(RuntimeError, match="not started"):
        t.get("x")
    with pytest.raises(RuntimeError, match="not started"):
        t.wait_for("x", 0)
    assert t.snapshot() == {} and not t.in_sync
    assert not t.wait_in_sync(0)
    t.stop()  # never started: harmless
    with pytest.raises(ValueError):
        MicroserviceTracker(resync_interval=0)
    with pytest.raises(ValueError):
        MicroserviceTracker(since_margin=-1)


class OnAnotherThread:
    """Runs *fn* on a thread started now (so in this thread's current namespace), when called."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._go = threading.Event()
        self._out: list[Any] = []

        def main() -> None:
            self._go.wait(30)
            try:
                self._out.append((True, fn()))
            except BaseException as e:
                self._out.append((False, e))

        self._thread = threading.Thread(target=main, name="test-other")
        self._thread.start()

    def __call__(self) -> Any:
        self._go.set()
        self._thread.join(30)
        ok, value = self._out[0]
        if not ok:
            raise value
        return value


@pytest.mark.docker
@pytest.mark.root
def test_shared_guard_compares_with_the_host_not_the_main_thread(
    tracked: Tracked, docker_client: Any, unique: str
) -> None:
    """The last guard is about the host's namespace, whatever the main thread entered."""
    t = tracked.tracker
    run(docker_client, f"{unique}-x")
    host = run(docker_client, f"{unique}-host", network="host")
    run(docker_client, f"{unique}-onhost", network=f"container:{host.id}")
    wait_match(t, docker_client)
    snap = t.snapshot()
    ms_x, ms_on_host = snap[f"{unique}-x"], snap[f"{unique}-onhost"]
    # The main thread inside the container's namespace: a worker thread may
    # still open it (it is not the host's).
    with ms_x.open_namespace() as xns:
        call = OnAnotherThread(ms_x.open_namespace)
        with nslib.entered(xns):
            opened = call()
        with opened:
            assert opened.same_namespace(xns) and opened.ns_id != HOST_NS
    # The main thread elsewhere: the host's namespace is still refused.
    with nslib.NsHandle.new() as elsewhere:
        call = OnAnotherThread(ms_on_host.open_namespace)
        with nslib.entered(elsewhere), pytest.raises(nslib.SharedNamespaceError, match="host"):
            call().close()


class GatedApi:
    """A real docker client whose ``inspect_container`` answers about containers
    labelled *label* are held at a gate.

    Every call still goes to the daemon; the gate only pins down a race.
    """

    def __init__(self, client: Any, label: str) -> None:
        self._api = client.api
        self.label = f"{LABEL_ENV}={label}"
        self.held = threading.Event()
        self.gate = threading.Event()

    @property
    def api(self) -> GatedApi:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def inspect_container(self, cid: str) -> Any:
        info = self._api.inspect_container(cid)
        if self.label in (info["Config"]["Env"] or []):
            self.held.set()
            self.gate.wait(10)
        return info


@pytest.mark.docker
@pytest.mark.root
def test_no_map_change_after_stop(dockerd: Any, docker_client: Any, unique: str) -> None:
    """An inspect in flight when stop() runs must not change the map afterwards."""
    client = dockerd.client()
    gated = GatedApi(client, unique)
    t = MicroserviceTracker(gated)
    try:
        t.start()
        assert t.wait_in_sync(15), t.health()
        run(docker_client, unique)  # its start event: the worker inspects, held at the gate
        assert gated.held.wait(10)
        frozen = t.snapshot()
        assert unique not in frozen

        def release() -> None:  # let the inspect answer once stop() has begun
            t._stopping.wait(10)
            gated.gate.set()

        releaser = threading.Thread(target=release)
        releaser.start()
        t.stop()
        releaser.join()
        wait_until(
            lambda: not [th for th in threading.enumerate() if th.name == "nslib-ms-worker"],
            5,
            "worker gone",
        )
        assert t.snapshot() == frozen
    finally:
        gated.gate.set()
        t.stop()
        client.close()


@pytest.mark.docker
@pytest.mark.root
def test_no_new_client_after_stop(
    dockerd: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """After stop() a worker still in flight must not build a client (docker.from_env()
    waits up to 10 s for a daemon that does not answer)."""
    import socket

    monkeypatch.setenv("DOCKER_HOST", dockerd.base_url)
    t = MicroserviceTracker()  # builds (and owns) its client
    t.start()
    try:
        assert t.wait_in_sync(15), t.health()
    finally:
        t.stop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        path = str(tmp_path / "silent.sock")
        silent.bind(path)
        silent.listen(8)  # connects succeed, nothing ever answers
        monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
        t0 = time.monotonic()
        with pytest.raises(nslib.DockerUnavailableError, match="stop"):
            t.source._api()  # type: ignore[attr-defined]  # what a worker in flight calls next
        assert time.monotonic() - t0 < 1


@pytest.mark.docker
@pytest.mark.root
def test_unsubscribe_waits_for_a_running_callback(
    tracked: Tracked, docker_client: Any, unique: str
) -> None:
    t = tracked.tracker
    inside, gate = threading.Event(), threading.Event()
    calls: list[MicroserviceEvent] = []

    def slow(ev: MicroserviceEvent) -> None:
        calls.append(ev)
        inside.set()
        gate.wait(10)
        calls.append(ev)  # the end of the call

    unsub = t.subscribe(slow)
    run(docker_client, f"{unique}-1")
    assert inside.wait(10)
    returned = threading.Event()
    unsubscriber = threading.Thread(target=lambda: (unsub(), returned.set()))
    unsubscriber.start()
    assert not returned.wait(0.3), "unsubscribe returned while the callback was still running"
    gate.set()
    unsubscriber.join(5)
    assert returned.is_set() and len(calls) == 2
    run(docker_client, f"{unique}-2")
    tracked.log.wait_kinds(f"{unique}-2", ["STARTED"])
    tracked.log.wait_replay(t)
    assert len(calls) == 2  # nothing after unsubscribe returned
    # From inside a callback (the dispatcher thread): no deadlock.
    box: dict[str, Any] = {}

    def self_unsub(ev: MicroserviceEvent) -> None:
        box["unsub"]()
        box["done"] = True

    box["unsub"] = t.subscribe(self_unsub)
    run(docker_client, f"{unique}-3")
    wait_until(lambda: box.get("done"), 10, "the callback to unsubscribe itself")


@pytest.mark.docker
@pytest.mark.root
def test_slow_inspect_delays_no_other_container(
    dockerd: Any, docker_client: Any, unique: str
) -> None:
    """While the daemon's answer about one container is held, another container's
    start is still seen; the held one follows once its answer comes."""
    client = dockerd.client()
    gated = GatedApi(client, f"{unique}-slow")
    t = MicroserviceTracker(gated)
    try:
        t.start()
        assert t.wait_in_sync(15), t.health()
        slow = run(docker_client, f"{unique}-slow")
        assert gated.held.wait(10)
        fast = run(docker_client, f"{unique}-fast")
        # The gate holds the slow inspect for 10 s: a single, serial worker
        # would see the fast container only after that.
        assert t.wait_for(f"{unique}-fast", 5).container_id == fast.id
        assert t.get(f"{unique}-slow") is None  # its answer is still held
        gated.gate.set()
        assert t.wait_for(f"{unique}-slow", 10).container_id == slow.id
    finally:
        gated.gate.set()
        t.stop()
        client.close()


class CountingApi:
    """A real docker client that records which containers were inspected."""

    def __init__(self, client: Any) -> None:
        self._api = client.api
        self.inspected: list[str] = []

    @property
    def api(self) -> CountingApi:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def inspect_container(self, cid: str) -> Any:
        self.inspected.append(cid)
        return self._api.inspect_container(cid)


@pytest.mark.docker
@pytest.mark.root
def test_no_inspect_for_the_end_of_an_unheld_container(
    dockerd: Any, docker_client: Any, unique: str
) -> None:
    """The die of a container the map does not hold, and any container's destroy,
    change nothing a daemon's answer could tell: they are not inspected.  A held
    container's removal still takes it out of the map."""
    client = dockerd.client()
    counting = CountingApi(client)
    t = MicroserviceTracker(counting, watch_processes=False)
    try:
        t.start()
        assert t.wait_in_sync(15), t.health()
        before = t.health().events_received
        plain = run(docker_client, None)  # no label: never in the map
        held = run(docker_client, unique)
        assert t.wait_for(unique, 10).container_id == held.id
        docker_client.api.remove_container(plain.id, force=True)  # die, destroy
        wait_until(lambda: t.health().events_received >= before + 4, 10, "die and destroy")
        wait_until(lambda: not t._items and not t._running, 10, "the workers idle")
        assert counting.inspected.count(plain.id) == 1  # its start only
        seen: list[MicroserviceEvent] = []
        t.subscribe(seen.append)
        docker_client.api.remove_container(held.id, force=True)
        wait_until(lambda: t.get(unique) is None, 10, "the held container gone")
        wait_until(lambda: seen, 10, "its STOPPED")
        assert [ev.kind for ev in seen] == [EventKind.STOPPED]
    finally:
        t.stop()
        client.close()


@pytest.mark.docker
@pytest.mark.root
def test_docker_source_inspect_on_the_socket_equals_the_sdk(
    dockerd: Any, docker_client: Any, unique: str
) -> None:
    """DockerSource inspects over the client's unix socket itself: the same state as
    the SDK's answer, the same not-found error, and no connection left open."""
    from nslib.microservice.sources.base import SourceNotFound
    from nslib.microservice.sources.docker import DockerSource, state_from_inspect

    c = run(docker_client, unique)
    client = dockerd.client()
    src = DockerSource(client)
    try:
        sdk = state_from_inspect(client.api.inspect_container(c.id))
        fds = open_fds()
        got = src.inspect(c.id)
        assert src._raw is not None and src._raw[1] is not None  # the socket path was taken
        assert got == sdk
        assert got.running and got.pid > 0 and f"{LABEL_ENV}={unique}" in got.env
        with pytest.raises(SourceNotFound):
            src.inspect("0" * 64)
        src.close()
        assert open_fds() - fds <= set(), open_fds() - fds
    finally:
        src.close()
        client.close()
