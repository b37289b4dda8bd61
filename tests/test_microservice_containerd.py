"""The microservice tracker following containerd (``ContainerdSource``), against a
private containerd started here (``tests/containerd_harness.py``), in the
``default`` namespace and in ``k8s.io`` with Kubernetes-style pods made by ``ctr``.

Each scenario ends with the tracker's map equal to containerd's own listing
(``ctr task ls`` + ``ctr container info``, independent of nslib).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from mshelpers import HOST_NS, EventLog, Tracked, ns_of_pid, wait_equal, wait_until, winners

from nslib.microservice import ContainerdSource, MicroserviceTracker

pytestmark = [pytest.mark.docker, pytest.mark.root]

LABEL_ENV = "MICROSERVICE_LABEL"
K8S = "k8s.io"


def ctr_truth(
    c: Any, namespace: str = "default", label_key: str | None = None, pod_names: bool = False
) -> Any:
    """label -> (id, pid) by ``ctr``: env label first, then *label_key*, then, with
    *pod_names*, ``<namespace>/<pod>`` for a Kubernetes sandbox."""

    def truth() -> dict[str, tuple[str, int]]:
        records = []
        for cid, pid in c.running(namespace).items():
            info = json.loads(c.ctr("container", "info", cid, namespace=namespace).stdout)
            label = None
            for item in info["Spec"]["process"].get("env") or []:
                key, _, value = item.partition("=")
                if key == LABEL_ENV and value:
                    label = value
            if label is None and label_key:
                label = (info.get("Labels") or {}).get(label_key) or (
                    info["Spec"].get("annotations") or {}
                ).get(label_key)
            labels = info.get("Labels") or {}
            if not label and pod_names and labels.get("io.cri-containerd.kind") == "sandbox":
                label = (
                    f"{labels['io.kubernetes.pod.namespace']}/{labels['io.kubernetes.pod.name']}"
                )
            if label:
                records.append((label, cid, pid, 0, 0))
        return winners(records)

    return truth


def start(source: Any, **kw: Any) -> Tracked:
    t = MicroserviceTracker(source, **kw)
    log = EventLog()
    t.subscribe(log)
    t.start()
    assert t.wait_in_sync(15), t.health()
    return Tracked(t, log)


@pytest.fixture
def ctracked(ctrd: Any) -> Iterator[Tracked]:
    tr = start(ContainerdSource(ctrd.address, "default"))
    try:
        yield tr
    finally:
        tr.tracker.stop()
    tr.log.check()


def test_containerd_start_kill_crash_self_exit(ctracked: Tracked, ctrd: Any, unique: str) -> None:
    t, log = ctracked.tracker, ctracked.log
    killed = ctrd.run(f"{unique}-k")
    crashing = ctrd.run(f"{unique}-c", command=["sh", "-c", "sleep 1; kill -SEGV $$"])
    exiting = ctrd.run(f"{unique}-e", command=["sleep", "1"])
    for label in ("k", "c", "e"):
        log.wait_kinds(f"{unique}-{label}", ["STARTED"])
    ms = t.snapshot()[f"{unique}-k"]
    assert ms.container_id == killed and ms.source == "containerd:default"
    assert ms.pid == ctrd.task_pid(killed)
    with ms.open_namespace() as h:
        assert h.ns_id == ns_of_pid(ms.pid) != HOST_NS
    ctrd.kill(killed)
    for label, cid in (("k", killed), ("c", crashing), ("e", exiting)):
        log.wait_kinds(f"{unique}-{label}", ["STARTED", "STOPPED"])
        assert log.of(f"{unique}-{label}")[0][1] == cid
    ctrd.remove(killed)
    wait_equal(t, ctr_truth(ctrd))
    log.wait_replay(t)
    for cid in (killed, crashing, exiting):
        ctrd.remove(cid)


def test_containerd_namespaces_are_separate(ctracked: Tracked, ctrd: Any, unique: str) -> None:
    other = ctrd.run(unique, namespace=K8S)
    try:
        mine = ctrd.run(f"{unique}-d")
        ctracked.log.wait_kinds(f"{unique}-d", ["STARTED"])
        assert unique not in ctracked.tracker.snapshot()
        ctrd.remove(mine)
        ctracked.log.wait_kinds(f"{unique}-d", ["STARTED", "STOPPED"])
    finally:
        ctrd.remove(other, namespace=K8S)


POD = {
    "io.cri-containerd.kind": "sandbox",
    "io.kubernetes.pod.name": "web",
    "io.kubernetes.pod.namespace": "shop",
    "io.kubernetes.pod.uid": "0b5e8c7e-5f7a-4f0e-9d0e-2d1c9e3b7a11",
    "app": "frontend",
}


def test_kubernetes_pod_sandbox_and_containers(ctrd: Any, unique: str) -> None:
    """A CRI-style pod: the sandbox holds the namespace, its containers join it."""
    pod = {**POD, "io.kubernetes.pod.name": unique}
    sandbox = ctrd.run(namespace=K8S, labels=pod, annotations={"nslib/ms": f"{unique}-ann"})
    app_labels = {
        "io.cri-containerd.kind": "container",
        "io.kubernetes.pod.name": unique,
        "io.kubernetes.pod.namespace": "shop",
        "io.kubernetes.container.name": "app",
    }
    app = ctrd.run(
        f"{unique}-app",
        namespace=K8S,
        labels=app_labels,
        netns=f"/proc/{ctrd.task_pid(sandbox, K8S)}/ns/net",
    )
    try:
        # <namespace>/<pod> names the sandbox; the app's env names the app.
        by_name = start(ContainerdSource(ctrd.address, K8S, pod_names=True))
        # A pod annotation key as the label.
        by_key = start(ContainerdSource(ctrd.address, K8S), label_env=None, label_key="nslib/ms")
        try:
            snap = by_name.tracker.snapshot()
            ms_pod, ms_app = snap[f"shop/{unique}"], snap[f"{unique}-app"]
            assert ms_pod.container_id == sandbox and ms_pod.pod == f"shop/{unique}"
            assert ms_app.container_id == app and ms_app.pod == f"shop/{unique}"
            assert ms_app.name == "app" and ms_app.network_mode.startswith("netns:")
            with ms_pod.open_namespace() as a, ms_app.open_namespace() as b:
                assert a.same_namespace(b) and a.ns_id != HOST_NS
            assert by_key.tracker.snapshot()[f"{unique}-ann"].container_id == sandbox
            wait_equal(by_name.tracker, ctr_truth(ctrd, K8S, None, pod_names=True))
            # The pod goes away: both labels stop.
            ctrd.kill(app, namespace=K8S)
            ctrd.kill(sandbox, namespace=K8S)
            by_name.log.wait_kinds(f"shop/{unique}", ["STARTED", "STOPPED"])
            by_name.log.wait_kinds(f"{unique}-app", ["STARTED", "STOPPED"])
            by_key.log.wait_kinds(f"{unique}-ann", ["STARTED", "STOPPED"])
            by_name.log.check()
        finally:
            by_name.tracker.stop()
            by_key.tracker.stop()
    finally:
        ctrd.remove(app, namespace=K8S)
        ctrd.remove(sandbox, namespace=K8S)


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_containerd_restart_under_churn(
    ctracked: Tracked, ctrd: Any, unique: str, kill: bool
) -> None:
    """containerd restarts while tasks come and go; the resync makes the map right."""
    t, log = ctracked.tracker, ctracked.log
    stop = threading.Event()
    made: list[str] = []
    errors: list[BaseException] = []

    def churn() -> None:
        n = 0
        while not stop.is_set():
            try:
                made.append(ctrd.run(f"{unique}-{n % 4}", command=["sleep", "0.3"]))
                n += 1
            except Exception:
                time.sleep(0.05)  # containerd is restarting
            except BaseException as e:
                errors.append(e)
                return

    churner = threading.Thread(target=churn)
    before = t.health().reconnects
    churner.start()
    try:
        time.sleep(1)
        ctrd.restart_daemon(kill=kill)
        time.sleep(1)
    finally:
        stop.set()
        churner.join(60)
    assert not errors
    survivor = ctrd.run(f"{unique}-s")
    wait_until(lambda: t.health().reconnects > before, 20, "reconnect")
    wait_equal(t, ctr_truth(ctrd))
    assert t.snapshot()[f"{unique}-s"].container_id == survivor
    log.wait_replay(t)
    for cid in [*made, survivor]:
        ctrd.remove(cid)


def test_containerd_missing_then_up_and_missed_events(ctrd: Any, unique: str) -> None:
    """No daemon at start: not in sync, with a reason; then it comes: in sync.
    Events missed while the stream was down are repaired by the resync."""
    ctrd.stop_daemon()
    t = MicroserviceTracker(ContainerdSource(ctrd.address, "default", timeout=1))
    log = EventLog()
    t.subscribe(log)
    try:
        t.start()
        wait_until(lambda: t.health().last_error, 15, "an error")
        assert not t.in_sync and "containerd" in (t.health().last_error or "")
        ctrd.start_daemon()
        assert t.wait_in_sync(20), t.health()
        a = ctrd.run(f"{unique}-a")
        log.wait_kinds(f"{unique}-a", ["STARTED"])
        gate = threading.Event()
        t._force_reconnect(gate)
        wait_until(lambda: not t.health().connected, 5, "disconnect")
        ctrd.kill(a)
        b = ctrd.run(f"{unique}-b")
        gate.set()
        log.wait_kinds(f"{unique}-a", ["STARTED", "STOPPED"])
        log.wait_kinds(f"{unique}-b", ["STARTED"])
        wait_equal(t, ctr_truth(ctrd))
        log.check()
        ctrd.remove(a)
        ctrd.remove(b)
    finally:
        t.stop()
        if ctrd._proc is None:
            ctrd.start_daemon()


def test_missing_grpc_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "grpc", None)  # as if grpcio were not installed
    with pytest.raises(ImportError, match=r"pip install 'nslib\[containerd\]'"):
        ContainerdSource("/nonexistent.sock")
