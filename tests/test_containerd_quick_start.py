"""``ContainerdSource.started``: a ``/tasks/start`` answered from the event's PID
and what the source remembers of the container, without an inspect.

Against a private containerd started here (``tests/containerd_harness.py``).
The answer must equal ``inspect()`` field for field, for each container shape
(environment label, containerd label, own or shared network namespace, a
Kubernetes-style sandbox and its app container, a restarted task); a tracker
then needs no inspect for a start, and a resync afterwards changes nothing.
When what the source knows is missing, wrong or out of date (a container it
never saw, a PID that is not the container's, a container updated while it
was being read), the state still comes right.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mshelpers import EventLog, Tracked, wait_equal, wait_until, winners

from nslib.microservice import ContainerdSource, MicroserviceTracker
from nslib.microservice.sources import ContainerState, SourceEvent
from nslib.microservice.sources import containerd as containerd_module
from nslib.microservice.sources._containerd_api import CONTAINERS_GET

pytestmark = [pytest.mark.docker, pytest.mark.root]

LABEL_ENV = "MICROSERVICE_LABEL"
LABEL_KEY = "org.nslib.ms"
K8S = "k8s.io"
START = "/tasks/start"


class Counting(ContainerdSource):
    """A source that records the gRPC methods it calls."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.calls: list[str] = []
        self.before_return: Callable[[str], None] | None = None

    def _unary(self, method: str, request: Any, response: Any) -> Any:
        self.calls.append(method)
        answer = super()._unary(method, request, response)
        hook = self.before_return
        if hook is not None:
            hook(method)
        return answer


class Events:
    """*source*'s own event stream, read on a thread (as the tracker's reader does)."""

    def __init__(self, source: ContainerdSource) -> None:
        self.source = source
        self.stream = source.subscribe(None, None)
        self.got: list[SourceEvent] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for ev in self.stream:
            with self.cond:
                self.got.append(ev)
                self.cond.notify_all()

    def wait(self, cid: str, action: str, count: int = 1) -> SourceEvent:
        """The *count*-th event *action* of *cid*."""

        def found() -> list[SourceEvent]:
            return [e for e in self.got if e.container_id == cid and e.action == action]

        with self.cond:
            assert self.cond.wait_for(lambda: len(found()) >= count, 15), (cid, action, self.got)
            return found()[count - 1]

    def close(self) -> None:
        self.stream.close()
        self.thread.join(10)


@pytest.fixture
def cleanup(ctrd: Any) -> Iterator[list[tuple[str, str]]]:
    """(container ID, namespace) pairs removed after the test."""
    made: list[tuple[str, str]] = []
    yield made
    for cid, ns in reversed(made):
        ctrd.remove(cid, namespace=ns)


def restart_task(ctrd: Any, cid: str, namespace: str = "default") -> None:
    """Kill the container's task, delete it and start a new one (the container stays)."""
    ctrd.kill(cid, namespace)
    wait_until(lambda: ctrd.task_pid(cid, namespace) == 0, 15, "the task to stop")
    ctrd.ctr("task", "delete", cid, namespace=namespace)
    ctrd.ctr("task", "start", "-d", cid, namespace=namespace)


def check_started(ctrd: Any, namespace: str, ev: SourceEvent, *, pod_names: bool = False) -> None:
    """``started(ev)`` equals ``inspect()``: remembered (no request) and not (one Get)."""
    cid = ev.container_id
    assert ev.action == START and ev.pid == ctrd.task_pid(cid, namespace) > 0
    fresh = Counting(ctrd.address, namespace, pod_names=pod_names)
    warm = Counting(ctrd.address, namespace, pod_names=pod_names)
    try:
        quick = fresh.started(ev)
        assert fresh.calls == [CONTAINERS_GET]
        want = warm.inspect(cid)
        warm.calls.clear()
        assert warm.started(ev) == want
        assert warm.calls == []
        assert quick == want == fresh.inspect(cid)
        assert want.running and want.pid == ev.pid and want.started_at_ns > 0
    finally:
        fresh.close()
        warm.close()


def test_started_equals_inspect_default(
    ctrd: Any, unique: str, cleanup: list[tuple[str, str]]
) -> None:
    """An environment label, a containerd label, and one sharing another's network."""
    events = Events(ContainerdSource(ctrd.address, "default"))
    try:
        by_env = ctrd.run(unique, env={"OTHER": "x=y"})
        cleanup.append((by_env, "default"))
        by_key = ctrd.run(labels={LABEL_KEY: f"{unique}-k"})
        cleanup.append((by_key, "default"))
        shared = ctrd.run(f"{unique}-s", netns=f"/proc/{ctrd.task_pid(by_env)}/ns/net")
        cleanup.append((shared, "default"))
        for cid in (by_env, by_key, shared):
            check_started(ctrd, "default", events.wait(cid, START))
        look = ContainerdSource(ctrd.address, "default")
        try:
            assert look.inspect(by_env).network_mode == "default"
            assert look.inspect(shared).network_mode.startswith("netns:/proc/")
            assert look.inspect(by_key).labels[LABEL_KEY] == f"{unique}-k"
            assert f"{LABEL_ENV}={unique}" in look.inspect(by_env).env
        finally:
            look.close()
    finally:
        events.close()
        events.source.close()


POD = {
    "io.cri-containerd.kind": "sandbox",
    "io.kubernetes.pod.namespace": "shop",
    "io.kubernetes.pod.uid": "0b5e8c7e-5f7a-4f0e-9d0e-2d1c9e3b7a11",
    "app": "frontend",
}


def test_started_equals_inspect_kubernetes_pod(
    ctrd: Any, unique: str, cleanup: list[tuple[str, str]]
) -> None:
    """A CRI-style sandbox (labels, annotations, ``<namespace>/<pod>``) and its app."""
    events = Events(ContainerdSource(ctrd.address, K8S))
    try:
        sandbox = ctrd.run(
            namespace=K8S,
            labels={**POD, "io.kubernetes.pod.name": unique},
            annotations={"nslib/ms": f"{unique}-ann", "app": "not-the-label"},
        )
        cleanup.append((sandbox, K8S))
        app = ctrd.run(
            f"{unique}-app",
            namespace=K8S,
            labels={
                "io.cri-containerd.kind": "container",
                "io.kubernetes.pod.name": unique,
                "io.kubernetes.pod.namespace": "shop",
                "io.kubernetes.container.name": "app",
            },
            netns=f"/proc/{ctrd.task_pid(sandbox, K8S)}/ns/net",
        )
        cleanup.append((app, K8S))
        for cid in (sandbox, app):
            check_started(ctrd, K8S, events.wait(cid, START), pod_names=True)
        look = ContainerdSource(ctrd.address, K8S, pod_names=True)
        try:
            pod = look.inspect(sandbox)
            assert pod.default_label == f"shop/{unique}" == pod.pod
            assert pod.labels["nslib/ms"] == f"{unique}-ann" and pod.labels["app"] == "frontend"
            assert look.inspect(app).name == "app" and look.inspect(app).pod == f"shop/{unique}"
        finally:
            look.close()
    finally:
        events.close()
        events.source.close()


def test_started_equals_inspect_after_task_restart(
    ctrd: Any, unique: str, cleanup: list[tuple[str, str]]
) -> None:
    """The container stays, its task is deleted and started again: a new PID, same rest."""
    src = Counting(ctrd.address, "default")
    events = Events(src)
    try:
        cid = ctrd.run(unique)
        cleanup.append((cid, "default"))
        first = events.wait(cid, START)
        assert src.started(first) == src.inspect(cid)
        restart_task(ctrd, cid)
        again = events.wait(cid, START, 2)
        assert again.pid != first.pid
        src.calls.clear()
        quick = src.started(again)
        assert src.calls == []  # a deleted task leaves the container remembered
        assert quick == src.inspect(cid) and quick.pid == again.pid
        check_started(ctrd, "default", again)
    finally:
        events.close()
        src.close()


# -- with a tracker -------------------------------------------------------------


def env_truth(c: Any, namespace: str = "default") -> Callable[[], dict[str, tuple[str, int]]]:
    """label -> (id, pid) from ``ctr``: the environment label, else the label ``LABEL_KEY``."""

    def truth() -> dict[str, tuple[str, int]]:
        records = []
        for cid, pid in c.running(namespace).items():
            info = json.loads(c.ctr("container", "info", cid, namespace=namespace).stdout)
            label = (info.get("Labels") or {}).get(LABEL_KEY)
            for item in info["Spec"]["process"].get("env") or []:
                key, _, value = item.partition("=")
                if key == LABEL_ENV and value:
                    label = value
            if label:
                records.append((label, cid, pid, 0, 0))
        return winners(records)

    return truth


def track(source: ContainerdSource, **kw: Any) -> Tracked:
    t = MicroserviceTracker(source, resync_interval=None, **kw)
    log = EventLog()
    t.subscribe(log)
    t.start()
    assert t.wait_in_sync(15), t.health()
    return Tracked(t, log)


def resync_changes_nothing(tr: Tracked) -> None:
    """Drop the stream: the resync after the reconnection reports no change."""
    t, log = tr.tracker, tr.log
    before = len(log.snapshot())
    reconnects = t.health().reconnects
    t._force_reconnect()
    wait_until(lambda: t.health().reconnects > reconnects and t.in_sync, 20, "the resync")
    time.sleep(0.3)  # a spurious event would be published with the resync
    assert log.snapshot()[before:] == []


def test_tracker_starts_without_inspect(ctrd: Any, unique: str) -> None:
    n = 5
    src = Counting(ctrd.address, "default")
    tr = track(src)
    made: list[str] = []
    try:
        for i in range(n):
            made.append(ctrd.run(f"{unique}-{i}"))
        for i, cid in enumerate(made):
            tr.log.wait_kinds(f"{unique}-{i}", ["STARTED"])
            assert tr.tracker.snapshot()[f"{unique}-{i}"].pid == ctrd.task_pid(cid)
        wait_equal(tr.tracker, env_truth(ctrd))
        assert tr.tracker.health().starts_without_inspect == n
        resync_changes_nothing(tr)
        assert tr.tracker.health().starts_without_inspect == n
        tr.log.check()
    finally:
        tr.tracker.stop()
        for cid in made:
            ctrd.remove(cid)


class WrongPid(ContainerdSource):
    """Answers each start with this test's own PID: a process of another cgroup."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.answered = 0

    def started(self, event: SourceEvent) -> Any:
        state = super().started(event)
        if state is None:
            return None
        self.answered += 1
        return replace(state, pid=os.getpid())


def test_tracker_rejects_a_wrong_pid(ctrd: Any, unique: str) -> None:
    """The tracker's cgroup check turns the wrong answer into an inspect."""
    src = WrongPid(ctrd.address, "default")
    tr = track(src)
    made: list[str] = []
    try:
        for i in range(2):
            made.append(ctrd.run(f"{unique}-{i}"))
        for i, cid in enumerate(made):
            tr.log.wait_kinds(f"{unique}-{i}", ["STARTED"])
            assert tr.tracker.snapshot()[f"{unique}-{i}"].pid == ctrd.task_pid(cid) != os.getpid()
        assert src.answered == 2
        assert tr.tracker.health().starts_without_inspect == 0
        wait_equal(tr.tracker, env_truth(ctrd))
        resync_changes_nothing(tr)
        tr.log.check()
    finally:
        tr.tracker.stop()
        for cid in made:
            ctrd.remove(cid)


def test_tracker_rereads_an_updated_container(ctrd: Any, unique: str) -> None:
    """A container relabelled between two runs of its task starts with its new label."""
    src = Counting(ctrd.address, "default")
    tr = track(src, label_env=None, label_key=LABEL_KEY)
    t, log = tr.tracker, tr.log
    cid = ctrd.run(labels={LABEL_KEY: f"{unique}-a"})
    try:
        log.wait_kinds(f"{unique}-a", ["STARTED"])
        ctrd.ctr("containers", "label", cid, f"{LABEL_KEY}={unique}-b")
        log.wait_kinds(f"{unique}-a", ["STARTED", "STOPPED"])
        log.wait_kinds(f"{unique}-b", ["STARTED"])
        restart_task(ctrd, cid)
        wait_until(lambda: len(log.of(f"{unique}-b")) == 3, 15, "the restart")
        assert log.kinds(f"{unique}-b") == ["STARTED", "STOPPED", "RESTARTED"]
        assert log.of(f"{unique}-a")[1:] == [("STOPPED", cid, log.of(f"{unique}-a")[0][2])]
        ms = t.snapshot()[f"{unique}-b"]
        assert ms.pid == ctrd.task_pid(cid) and f"{unique}-a" not in t.snapshot()
        assert t.health().starts_without_inspect == 2
        wait_equal(t, env_truth(ctrd))
        resync_changes_nothing(tr)
        log.check()
    finally:
        t.stop()
        ctrd.remove(cid)


def test_a_fill_racing_an_update_is_not_remembered(
    ctrd: Any, unique: str, cleanup: list[tuple[str, str]]
) -> None:
    """containerd updates the container while the source reads it: the old answer
    must not be remembered, and the next start reads the container again."""
    src = Counting(ctrd.address, "default")
    events = Events(src)
    try:
        cid = ctrd.run(labels={LABEL_KEY: "old"})
        cleanup.append((cid, "default"))
        start = events.wait(cid, START)

        def update_meanwhile(method: str) -> None:
            if method == CONTAINERS_GET:
                src.before_return = None
                ctrd.ctr("containers", "label", cid, f"{LABEL_KEY}=new")
                events.wait(cid, "/containers/update")  # the reader has seen it

        src.before_return = update_meanwhile
        assert src.started(start).labels[LABEL_KEY] == "old"  # as it was read
        src.calls.clear()
        again = src.started(start)
        assert src.calls == [CONTAINERS_GET]
        assert again.labels[LABEL_KEY] == "new"
        assert again == src.inspect(cid)
    finally:
        events.close()
        src.close()


# -- the remembered containers, without a daemon ----------------------------------

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.integers(0, 3)),
        st.tuples(st.just("fill"), st.integers(0, 7)),
        st.tuples(st.just("change"), st.integers(0, 3)),
        st.tuples(st.just("reconnect"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=_OPS, size=st.sampled_from([2, 4096]))
def test_remembered_never_older_than_a_change(ops: list[tuple[str, int]], size: int) -> None:
    """Reads, changes (the event reader's invalidations) and fills in any order:
    what the source remembers of a container is never older than its last change,
    and a read that no change overtook is remembered (while nothing is evicted)."""
    src = ContainerdSource("/nonexistent/containerd.sock")
    version = [0, 0, 0, 0]  # of each container, bumped by a change
    pending: list[tuple[int, int, int]] = []  # reads in flight: (container, version, generation)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(containerd_module, "_CACHE_SIZE", size)
        for op, arg in ops:
            if op == "read":
                pending.append((arg, version[arg], src._generation))
            elif op == "change":
                version[arg] += 1
                src._invalidate(f"c{arg}")
            elif op == "reconnect":
                src._invalidate(None)
            elif pending:
                i, v, generation = pending.pop(arg % len(pending))
                state = ContainerState(
                    container_id=f"c{i}",
                    name="",
                    pid=0,
                    running=False,
                    created_ns=v,
                    started_at_ns=0,
                )
                src._remember({f"c{i}": state}, generation)
                if v == version[i] and size > len(version) and not src._forgotten > generation:
                    assert src._cache[f"c{i}"].created_ns == v
            for cid, state in src._cache.items():
                assert state.created_ns == version[int(cid[1:])], (cid, ops)
            assert len(src._cache) <= size and len(src._changed) <= size
    src.close()
