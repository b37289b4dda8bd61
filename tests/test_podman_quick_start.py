"""Podman starts answered without an inspect (``PodmanSource.started``).

Against a private ``podman system service`` (``tests/podmand.py``): the
source remembers each container from its ``create`` inspect and answers its
``start`` from the OCI runtime's PID file.  The answer must be what an
inspect gives at that moment, field for field, for every shape of
container, and anything odd in what it reads must end in an inspect, with
the same result.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from mshelpers import EventLog, Tracked, wait_until

from nslib.microservice import MicroserviceTracker, PodmanSource
from nslib.microservice.sources import podman as podman_mod
from nslib.microservice.sources.base import SourceEvent, process_start_ns

pytestmark = [pytest.mark.docker, pytest.mark.root]

LABEL_ENV = "MICROSERVICE_LABEL"


def create(
    p: Any,
    label: str | None,
    *,
    env: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    pod: str | None = None,
) -> str:
    """``podman create`` a test container (not started); its full ID."""
    from podmand import PODMAN_IMAGE, unique_name

    args = ["create", "--stop-timeout", "1", "--name", unique_name()]
    if label is not None:
        args += ["-e", f"{LABEL_ENV}={label}"]
    for k, v in (env or {}).items():
        args += ["-e", f"{k}={v}"]
    for k, v in (labels or {}).items():
        args += ["--label", f"{k}={v}"]
    args += ["--label", f"org.nslib.test={os.getpid()}"]
    args += ["--pod", pod] if pod is not None else ["--network", "none"]
    return str(p.cli(*args, PODMAN_IMAGE).stdout.strip())


def start_event(cid: str) -> SourceEvent:
    return SourceEvent(None, cid, "start")


@pytest.fixture
def source(podman: Any) -> Iterator[PodmanSource]:
    src = PodmanSource(podman.url)
    try:
        yield src
    finally:
        src.close()


def assert_quick_equals_inspect(src: PodmanSource, podman: Any, cid: str) -> Any:
    """started() answers, equals inspect(), and names podman's PID and the process's start."""
    quick = src.started(start_event(cid))
    assert quick is not None
    assert quick == src.inspect(cid)
    assert quick.running and quick.pid == podman.inspect(cid)["State"]["Pid"]
    assert quick.started_at_ns == process_start_ns(quick.pid) > 0
    return quick


# -- the source alone ----------------------------------------------------------------


def test_started_equals_inspect_with_labels_and_env(
    source: PodmanSource, podman: Any, unique: str
) -> None:
    cid = create(podman, unique, env={"A": "1", "B": "x=y"}, labels={"app": "web", "tier": ""})
    assert not source.inspect(cid).running  # the create's inspect: remembered
    assert source.started(start_event(cid)) is None  # not started: no PID file yet
    podman.cli("start", cid)
    st = assert_quick_equals_inspect(source, podman, cid)
    assert f"{LABEL_ENV}={unique}" in st.env and "B=x=y" in st.env
    assert st.labels["app"] == "web" and st.labels["tier"] == ""
    assert st.network_mode == "none" and st.pod is None
    podman.cli("rm", "-f", "-t", "0", cid)


def test_started_equals_inspect_across_a_restart(
    source: PodmanSource, podman: Any, unique: str
) -> None:
    cid = create(podman, unique)
    source.inspect(cid)
    podman.cli("start", cid)
    first = assert_quick_equals_inspect(source, podman, cid)
    podman.cli("restart", "-t", "0", cid)
    second = assert_quick_equals_inspect(source, podman, cid)
    assert second.pid != first.pid and second.started_at_ns >= first.started_at_ns
    podman.cli("rm", "-f", "-t", "0", cid)


def test_started_equals_inspect_for_a_pod_member_and_its_infra(
    source: PodmanSource, podman: Any, unique: str
) -> None:
    pod_id, infra = podman.create_pod()
    try:
        member = create(podman, unique, pod=pod_id)
        for cid in (infra, member):
            source.inspect(cid)
        podman.cli("pod", "start", pod_id)
        for cid in (infra, member):
            st = assert_quick_equals_inspect(source, podman, cid)
            assert st.pod == pod_id
    finally:
        podman.cli("pod", "rm", "-f", "-t", "0", pod_id, check=False)


def test_a_container_never_inspected_is_not_answered(
    source: PodmanSource, podman: Any, unique: str
) -> None:
    cid = podman.run(unique)
    assert source.started(start_event(cid)) is None
    st = source.inspect(cid)  # now it is known
    assert source.started(start_event(cid)) == st
    assert st.started_at_ns == process_start_ns(st.pid)
    podman.cli("rm", "-f", "-t", "0", cid)


def test_what_an_inspect_saw_before_a_rename_is_not_kept(
    source: PodmanSource, podman: Any, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event reader forgets a container while a worker inspects it: not stored."""
    cid = podman.run(unique)
    real = source._http.get_json

    def answer_then_rename(path: str, params: Any = None) -> Any:
        out = real(path, params)
        source._forget(cid)  # what the event reader does on "rename" or "remove"
        return out

    monkeypatch.setattr(source._http, "get_json", answer_then_rename)
    source.inspect(cid)
    assert source.started(start_event(cid)) is None
    monkeypatch.undo()
    st = source.inspect(cid)
    assert source.started(start_event(cid)) == st
    podman.cli("rm", "-f", "-t", "0", cid)


@pytest.mark.parametrize("via", ["file", "api"])
def test_the_stream_forgets_a_renamed_or_removed_container_before_passing_it_on(
    podman: Any, unique: str, via: str
) -> None:
    """Whoever acts on a rename or a remove finds the container forgotten already."""
    src = PodmanSource(podman.url, events_file="auto" if via == "file" else None)
    stream = src.subscribe(None, None)
    seen: list[tuple[str, bool]] = []  # (action, remembered when it came)
    cid = ""

    def read() -> None:
        for ev in stream:
            if ev.container_id == cid:
                seen.append((ev.action, cid in src._known))
                if ev.action == "remove":
                    return

    reader = threading.Thread(target=read, daemon=True)
    try:
        cid = create(podman, unique)
        reader.start()
        podman.cli("start", cid)
        wait_until(lambda: ("start", False) in seen, 15, "the start")
        src.inspect(cid)
        assert src.started(start_event(cid)) is not None
        podman.cli("rename", cid, f"{podman.inspect(cid)['Name']}-renamed")
        wait_until(lambda: [a for a, _ in seen][-1] == "rename", 15, "the rename")
        src.inspect(cid)
        assert cid in src._known
        podman.cli("rm", "-f", "-t", "0", cid)
        reader.join(20)
        assert [s for s in seen if s[0] in ("rename", "remove")] == [
            ("rename", False),
            ("remove", False),
        ]
    finally:
        stream.close()
        if reader.is_alive():
            reader.join(10)
        src.close()
        if cid:
            podman.cli("rm", "-f", "-t", "0", cid, check=False)


def test_inspect_of_a_stopped_container_reports_no_run(
    source: PodmanSource, podman: Any, unique: str
) -> None:
    cid = podman.run(unique)
    source.inspect(cid)
    assert source.started(start_event(cid)) is not None
    podman.cli("kill", cid)
    podman.cli("wait", cid)
    st = source.inspect(cid)
    assert (st.running, st.pid, st.started_at_ns) == (False, 0, 0)
    # The PID file still names the dead process: no answer.
    assert source.started(start_event(cid)) is None
    podman.cli("rm", "-f", "-t", "0", cid)


# -- with a tracker --------------------------------------------------------------------


@pytest.fixture(params=["file", "api"])
def ptracked(podman: Any, request: pytest.FixtureRequest) -> Iterator[Tracked]:
    """A tracker on the private podman, following its events file or its API stream."""
    source = PodmanSource(podman.url, events_file="auto" if request.param == "file" else None)
    t = MicroserviceTracker(source, resync_interval=None)
    log = EventLog()
    t.subscribe(log)
    t.start()
    try:
        assert t.wait_in_sync(15), t.health()
        assert source.events_via == (podman.events_log if request.param == "file" else "api")
        yield Tracked(t, log)
    finally:
        t.stop()
    log.check()


def wait_for_quick_starts(t: MicroserviceTracker, n: int) -> None:
    """Wait until *n* starts were answered without an inspect; check it stays *n*."""
    wait_until(lambda: t.health().starts_without_inspect >= n, 15, f"{n} quick starts")
    time.sleep(0.3)  # nothing more is coming
    assert t.health().starts_without_inspect == n


def resync_changes_nothing(t: MicroserviceTracker, log: EventLog) -> None:
    """A reconnection (with its resync) reports no event and keeps every record."""
    before_events = log.snapshot()
    before_map = t.snapshot()
    resyncs = t.health().resyncs
    t._force_reconnect()
    wait_until(lambda: t.health().resyncs > resyncs and t.in_sync, 20, "a resync")
    assert log.snapshot() == before_events
    assert t.snapshot() == before_map


def test_tracker_starts_without_inspect_and_a_resync_agrees(
    ptracked: Tracked, podman: Any, unique: str
) -> None:
    t, log = ptracked.tracker, ptracked.log
    pod_id, _ = podman.create_pod()
    ids: list[str] = []
    try:
        ids += [podman.run(f"{unique}-{i}") for i in range(4)]
        ids.append(podman.run(f"{unique}-p", pod=pod_id))  # starts the infra too
        labels = [*(f"{unique}-{i}" for i in range(4)), f"{unique}-p"]
        for label in labels:
            log.wait_kinds(label, ["STARTED"])
        # The pod's infra container is unlabelled: not a microservice, but
        # its start was answered without an inspect all the same.  (The API
        # stream may bring a create with its start, late: the STARTED then
        # comes from the create's inspect, before the start is answered.)
        wait_for_quick_starts(t, len(ids) + 1)
        for label, cid in zip(labels, ids, strict=True):
            ms = t.snapshot()[label]
            assert ms.container_id == cid and ms.pid == podman.inspect(cid)["State"]["Pid"]
            assert ms.started_at_ns == process_start_ns(ms.pid)
        resync_changes_nothing(t, log)
        podman.cli("restart", "-t", "0", ids[0])
        log.wait_kinds(labels[0], ["STARTED", "STOPPED", "RESTARTED"])
        assert t.snapshot()[labels[0]].pid == podman.inspect(ids[0])["State"]["Pid"]
        resync_changes_nothing(t, log)
    finally:
        podman.cli("pod", "rm", "-f", "-t", "0", pod_id, check=False)
        if ids:
            podman.cli("rm", "-f", "-t", "0", *ids, check=False)


def test_tracker_started_after_the_create_inspects_the_start(podman: Any, unique: str) -> None:
    """A cache miss: the container was created before the tracker looked."""
    cid = create(podman, unique)
    time.sleep(0.05)
    # No replay of the seconds before (the create would be inspected then).
    t = MicroserviceTracker(PodmanSource(podman.url), resync_interval=None, since_margin=0)
    log = EventLog()
    t.subscribe(log)
    t.start()
    try:
        assert t.wait_in_sync(15), t.health()
        podman.cli("start", cid)
        log.wait_kinds(unique, ["STARTED"])
        assert t.health().starts_without_inspect == 0
        ms = t.snapshot()[unique]
        assert ms.pid == podman.inspect(cid)["State"]["Pid"]
        assert ms.started_at_ns == process_start_ns(ms.pid)
        # That inspect is remembered: the next start needs none.
        podman.cli("restart", "-t", "0", cid)
        log.wait_kinds(unique, ["STARTED", "STOPPED", "RESTARTED"])
        wait_for_quick_starts(t, 1)
        resync_changes_nothing(t, log)
    finally:
        t.stop()
        podman.cli("rm", "-f", "-t", "0", cid, check=False)
    log.check()


def bad_file(kind: str, real: str, where: str) -> str:
    path = os.path.join(where, "file")
    if kind == "symlink":
        os.symlink(real, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        os.mkdir(path)
    elif kind == "garbage":
        with open(path, "w") as f:
            f.write('12ab\n{"process": {"env": "A=1"}}')
    elif kind == "huge":
        with open(path, "w") as f:
            f.write("1" * 4096)
    elif kind == "missing":
        pass
    elif kind == "wrong-pid":  # a live process, not the container's
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize(
    "which,kind",
    [
        *(
            ("pid", k)
            for k in ("symlink", "fifo", "directory", "garbage", "huge", "missing", "wrong-pid")
        ),
        ("spec", "symlink"),
        ("spec", "garbage"),
        ("spec", "missing"),
    ],
)
def test_tracker_falls_back_to_inspect_on_a_bad_file(
    ptracked: Tracked, podman: Any, unique: str, which: str, kind: str
) -> None:
    """The PID file or OCI spec a start is read from is odd: the inspect answers."""
    t, log = ptracked.tracker, ptracked.log
    src = t._source
    assert isinstance(src, PodmanSource)
    cid = create(podman, unique)
    wait_until(lambda: cid in src._known, 15, "the create's inspect")
    with tempfile.TemporaryDirectory(prefix="nslibt-pidfile-") as where:
        with src._known_lock:
            known = src._known[cid]
            if which == "pid":
                bad = (bad_file(kind, known.pid_file, where), known.spec_file)
            else:
                bad = (known.pid_file, bad_file(kind, known.spec_file, where))
            src._known[cid] = podman_mod._Known(known.state, *bad)
        podman.cli("start", cid)
        log.wait_kinds(unique, ["STARTED"])
    assert t.health().starts_without_inspect == 0
    ms = t.snapshot()[unique]
    assert ms.pid == podman.inspect(cid)["State"]["Pid"]
    assert ms.started_at_ns == process_start_ns(ms.pid)
    # The inspect put the real PID file back: the restart is answered from it.
    podman.cli("restart", "-t", "0", cid)
    log.wait_kinds(unique, ["STARTED", "STOPPED", "RESTARTED"])
    wait_for_quick_starts(t, 1)
    resync_changes_nothing(t, log)
    podman.cli("rm", "-f", "-t", "0", cid)
    log.wait_kinds(unique, ["STARTED", "STOPPED", "RESTARTED", "STOPPED"])


def test_tracker_rename_then_start_has_the_new_name(
    ptracked: Tracked, podman: Any, unique: str
) -> None:
    t, log = ptracked.tracker, ptracked.log
    src = t._source
    assert isinstance(src, PodmanSource)
    cid = create(podman, unique)
    wait_until(lambda: cid in src._known, 15, "the create's inspect")
    new_name = f"{podman.inspect(cid)['Name']}-renamed"
    podman.cli("rename", cid, new_name)
    podman.cli("start", cid)
    log.wait_kinds(unique, ["STARTED"])
    assert t.snapshot()[unique].name == new_name
    podman.cli("restart", "-t", "0", cid)
    log.wait_kinds(unique, ["STARTED", "STOPPED", "RESTARTED"])
    assert t.snapshot()[unique].name == new_name
    wait_for_quick_starts(t, 2)
    resync_changes_nothing(t, log)
    podman.cli("rm", "-f", "-t", "0", cid)
