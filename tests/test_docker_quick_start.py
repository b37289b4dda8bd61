"""DockerSource answers a ``start`` from the files dockerd writes, without an inspect.

dockerd writes ``containers/<id>/config.v2.json`` and ``hostconfig.json``
under its root directory before it sends a container's ``start`` event;
``DockerSource.started`` reads them.  Its answer must be exactly what an
inspect says (the tracker compares whole records at every resync), and
anything doubtful must end in an inspect: these tests check both against the
private dockerd, with real trackers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import open_fds
from mshelpers import (
    EventLog,
    _rfc3339_ns,
    run,
    running_pid,
    wait_match,
    wait_until,
)

from nslib.microservice import MicroserviceTracker
from nslib.microservice.sources.base import ContainerState, SourceEvent
from nslib.microservice.sources.docker import DockerSource

pytestmark = [pytest.mark.docker, pytest.mark.root]


def _start_event(cid: str) -> SourceEvent:
    return SourceEvent(None, cid, "start")


@contextlib.contextmanager
def _source(dockerd: Any, cls: type[DockerSource] = DockerSource, **kw: Any) -> Iterator[Any]:
    """A subscribed *cls* on its own client (the subscription reads the root directory)."""
    client = dockerd.client()
    src = cls(client, **kw)
    try:
        src.subscribe(None, None).close()
        yield src
    finally:
        src.close()
        client.close()


@contextlib.contextmanager
def _tracker(
    dockerd: Any, make: Callable[[Any], DockerSource], **kw: Any
) -> Iterator[tuple[Any, EventLog]]:
    """A started, in-sync tracker on the source *make(client)* builds, with an event log."""
    client = dockerd.client()
    t = MicroserviceTracker(source=make(client), **kw)
    log = EventLog()
    t.subscribe(log)
    t.start()
    try:
        assert t.wait_in_sync(15), t.health()
        yield t, log
    finally:
        t.stop()
        client.close()
    log.check()


def _assert_same_as_inspect(src: DockerSource, cid: str) -> ContainerState:
    quick = src.started(_start_event(cid))
    assert quick is not None, "no state from the daemon's files"
    assert quick == src.inspect(cid)
    return quick


# -- started() equals inspect() -------------------------------------------------


def test_started_equals_inspect_for_each_shape(
    dockerd: Any, docker_client: Any, unique: str
) -> None:
    other = run(docker_client, f"{unique}-o")
    shapes = {
        "labels+env": run(
            docker_client,
            f"{unique}-l",
            env={"FOO": "a=b c", "UNI": "ünï\tcode"},
            labels={"ms.key": "x", "other": "ünï", "empty": ""},
        ),
        "none": run(docker_client, f"{unique}-n", network="none"),
        "bridge": run(docker_client, f"{unique}-b", network="bridge"),
        "default": run(docker_client, f"{unique}-d", network="default"),
        "container": run(docker_client, f"{unique}-c", network=f"container:{other.id}"),
        "unlabelled": run(docker_client, None),
    }
    with _source(dockerd) as src:
        for what, c in shapes.items():
            st = _assert_same_as_inspect(src, c.id)
            # And against the daemon's own words, read independently of nslib.
            info = docker_client.api.inspect_container(c.id)
            assert st.container_id == info["Id"], what
            assert st.name == info["Name"].lstrip("/"), what
            assert st.pid == info["State"]["Pid"] > 0, what
            assert st.created_ns == _rfc3339_ns(info["Created"]), what
            assert st.started_at_ns == _rfc3339_ns(info["State"]["StartedAt"]), what
            assert st.network_mode == info["HostConfig"]["NetworkMode"], what
            assert list(st.env) == info["Config"]["Env"], what
            assert dict(st.labels) == info["Config"]["Labels"], what
        assert src.inspect(shapes["labels+env"].id).labels["other"] == "ünï"
        assert src.inspect(shapes["container"].id).network_mode == f"container:{other.id}"


def test_started_after_a_restart_is_the_new_run(
    dockerd: Any, docker_client: Any, unique: str
) -> None:
    c = run(docker_client, unique)
    with _source(dockerd) as src:
        old = _assert_same_as_inspect(src, c.id)
        docker_client.api.restart(c.id, timeout=0)
        new = _assert_same_as_inspect(src, c.id)
        assert new.pid == running_pid(docker_client, c.id) != old.pid
        assert new.started_at_ns > old.started_at_ns and new.created_ns == old.created_ns
        # Stopped: the files say so, and the answer is left to the inspect.
        docker_client.api.stop(c.id, timeout=0)
        assert src.started(_start_event(c.id)) is None
        assert not src.inspect(c.id).running


# -- what is read, and what is refused ---------------------------------------------


class _RootedSource(DockerSource):
    """Reads the state files under a directory of the test's choosing."""

    state_dir: str | None = None

    def _find_state_dir(self, api: Any) -> str | None:
        return self.state_dir


def _copy_state(real_dir: str, cid: str, to: Path) -> Path:
    d = to / "containers" / cid
    d.mkdir(parents=True)
    for name in ("config.v2.json", "hostconfig.json"):
        shutil.copyfile(os.path.join(real_dir, cid, name), d / name)
    return d


def _edit_config(d: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    config = json.loads((d / "config.v2.json").read_bytes())
    edit(config)
    (d / "config.v2.json").write_text(json.dumps(config))


def _replace_with_symlink(d: Path) -> None:
    real = d.parent.parent / "elsewhere.json"
    (d / "config.v2.json").rename(real)
    (d / "config.v2.json").symlink_to(real)


def _replace_with_fifo(d: Path) -> None:
    (d / "config.v2.json").unlink()
    os.mkfifo(d / "config.v2.json")


def _pad(d: Path) -> None:
    config = (d / "config.v2.json").read_bytes()
    (d / "config.v2.json").write_bytes(config + b" " * (1 << 20))


_SPOILERS: dict[str, Callable[[Path], None]] = {
    "config missing": lambda d: (d / "config.v2.json").unlink(),
    "hostconfig missing": lambda d: (d / "hostconfig.json").unlink(),
    "not owned by root": lambda d: os.chown(d / "config.v2.json", 65534, 65534),
    "hostconfig not owned by root": lambda d: os.chown(d / "hostconfig.json", 65534, 65534),
    "symlink": _replace_with_symlink,
    "fifo": _replace_with_fifo,
    "too large": _pad,
    "not json": lambda d: (d / "config.v2.json").write_bytes(b'{"ID": '),
    "not utf-8": lambda d: (d / "config.v2.json").write_bytes(b'{"ID": "\xff"}'),
    "hostconfig not an object": lambda d: (d / "hostconfig.json").write_text("[]"),
    "another id": lambda d: _edit_config(d, lambda c: c.update(ID="f" * 64)),
    "not running": lambda d: _edit_config(d, lambda c: c["State"].update(Running=False)),
    "no pid": lambda d: _edit_config(d, lambda c: c["State"].update(Pid=0)),
    "bad start time": lambda d: _edit_config(d, lambda c: c["State"].update(StartedAt=7)),
    "bad created": lambda d: _edit_config(d, lambda c: c.update(Created="yesterday")),
    "config not an object": lambda d: _edit_config(d, lambda c: c.update(Config=[])),
}


def test_started_refuses_doubtful_files(
    dockerd: Any, docker_client: Any, unique: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A copy of the real files gives the inspect's state; each spoiled copy gives
    None, without a warning (the inspect that follows has its say)."""
    caplog.set_level(logging.WARNING, "nslib")
    c = run(docker_client, unique)
    with _source(dockerd) as real:
        real_dir = real._state_dir
        assert real_dir is not None and os.path.isdir(os.path.join(real_dir, c.id))
        want = real.inspect(c.id)
    with _source(dockerd, _RootedSource) as src:

        def point(path: str) -> None:  # the next subscription reads there
            src.state_dir = path
            src.subscribe(None, None).close()
            assert src._state_dir == path

        src.inspect(c.id)  # the kept-alive connection the files' check inspects on
        fds = open_fds()
        for i, (what, spoil) in enumerate([("intact", lambda d: None), *_SPOILERS.items()]):
            root = tmp_path / str(i)
            d = _copy_state(real_dir, c.id, root)
            spoil(d)
            point(str(root / "containers"))
            got = src.started(_start_event(c.id))
            assert got == (want if what == "intact" else None), what
        # The container's directory itself a symlink to the real one.
        root = tmp_path / "linked"
        (root / "containers").mkdir(parents=True)
        (root / "containers" / c.id).symlink_to(os.path.join(real_dir, c.id))
        point(str(root / "containers"))
        assert src.started(_start_event(c.id)) is None
        # Not a full ID: never a path.
        point(real_dir)
        assert src.started(_start_event(c.id)) == want
        for bad in (c.id[:12], "../" + c.id[3:], c.id.upper()):
            assert src.started(_start_event(bad)) is None, bad
        assert open_fds() <= fds, "started() left an fd open"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_files_that_disagree_with_inspect_are_turned_off(
    dockerd: Any, docker_client: Any, unique: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A daemon whose files say something its inspect does not (here: one more
    variable in the environment) is caught by the first start of a
    subscription: the answer is the inspect's, and its files are not read again."""
    caplog.set_level(logging.WARNING, "nslib")
    c = run(docker_client, unique)
    with _source(dockerd) as real:
        real_dir = real._state_dir
        assert real_dir is not None
        want = real.inspect(c.id)
    with _source(dockerd, _RootedSource) as src:
        d = _copy_state(real_dir, c.id, tmp_path)
        _edit_config(d, lambda cfg: cfg["Config"]["Env"].append("EXTRA=1"))
        src.state_dir = str(tmp_path / "containers")
        src.subscribe(None, None).close()
        assert src.started(_start_event(c.id)) == want
        assert src._state_dir is None
        assert src.started(_start_event(c.id)) is None
    assert [r for r in caplog.records if "do not match" in r.getMessage()]


def test_state_files_off_or_out_of_sight(dockerd: Any, docker_client: Any, unique: str) -> None:
    """``state_files=False``, or a root directory this process cannot see: no answer, quietly."""
    c = run(docker_client, unique)
    with _source(dockerd, state_files=False) as src:
        assert src._state_dir is None
        assert src.started(_start_event(c.id)) is None
    client = dockerd.client()
    try:
        # As the daemon seen from a container given only its socket.
        info = client.api.info
        client.api.info = lambda: {**info(), "DockerRootDir": "/nonexistent-nslib-test"}
        src = DockerSource(client)
        src.subscribe(None, None).close()
        assert src._state_dir is None
        assert src.started(_start_event(c.id)) is None
        src.close()
        # A client that wraps inspect_container (to see or change every
        # inspect) keeps seeing the inspect of every start.
        client.api.info = info
        src = DockerSource(_WrappedClient(client))
        src.subscribe(None, None).close()
        assert src._state_dir is None
        src.close()
    finally:
        client.close()


class _WrappedClient:
    def __init__(self, client: Any) -> None:
        self._api = client.api

    @property
    def api(self) -> _WrappedClient:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def inspect_container(self, cid: str) -> Any:
        return self._api.inspect_container(cid)


# -- with a real tracker ---------------------------------------------------------------


def test_tracker_starts_without_inspect_and_resync_agrees(
    dockerd: Any, docker_client: Any, unique: str
) -> None:
    """N starts (new containers and a restart) are all answered from the files; a
    forced reconnect with its resync then finds the very same runs: no event."""
    with _tracker(dockerd, DockerSource) as (t, log):
        base = t.health().starts_without_inspect
        labels = [f"{unique}-{i}" for i in range(5)]
        cs = [run(docker_client, lb) for lb in labels]
        cs.append(run(docker_client, f"{unique}-s", network=f"container:{cs[0].id}"))
        labels.append(f"{unique}-s")
        for lb in labels:
            log.wait_kinds(lb, ["STARTED"])
        docker_client.api.restart(cs[1].id, timeout=0)
        log.wait_kinds(labels[1], ["STARTED", "STOPPED", "RESTARTED"])
        wait_match(t, docker_client)
        assert t.health().starts_without_inspect - base == len(labels) + 1
        for lb, c in zip(labels, cs, strict=True):
            ms = t.snapshot()[lb]
            assert (ms.container_id, ms.pid) == (c.id, running_pid(docker_client, c.id))
        before = log.snapshot()
        resyncs = t.health().resyncs
        t._force_reconnect()
        wait_until(lambda: t.health().resyncs > resyncs and t.in_sync, 15, "resync")
        wait_match(t, docker_client)
        assert log.snapshot() == before
        log.wait_replay(t)


def test_tracker_without_state_files_still_right(
    dockerd: Any, docker_client: Any, unique: str, tmp_path: Path
) -> None:
    """Files off, or under a wrong root: every start is inspected, and right."""

    def wrong_root(client: Any) -> DockerSource:
        src = _RootedSource(client)
        src.state_dir = str(tmp_path)  # no container's directory in it
        return src

    makers: dict[str, Callable[[Any], DockerSource]] = {
        "off": lambda client: DockerSource(client, state_files=False),
        "wrong root": wrong_root,
    }
    for what, make in makers.items():
        with _tracker(dockerd, make) as (t, log):
            label = f"{unique}-{what[0]}"
            c = run(docker_client, label)
            log.wait_kinds(label, ["STARTED"])
            assert log.of(label) == [("STARTED", c.id, running_pid(docker_client, c.id))]
            wait_match(t, docker_client)
            assert t.health().starts_without_inspect == 0, what


class _WrongPidSource(DockerSource):
    """Answers every start from the files, but with a PID that is not the container's."""

    wrong = 0

    def started(self, event: SourceEvent) -> ContainerState | None:
        st = super().started(event)
        if st is None:
            return None
        self.wrong += 1
        return dataclasses.replace(st, pid=os.getpid())  # alive, in the host's cgroup


def test_tracker_refuses_a_wrong_pid(
    dockerd: Any, docker_client: Any, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The tracker's cgroup check turns a wrong PID into an inspect: the event is right."""
    sources: list[_WrongPidSource] = []

    def make(client: Any) -> DockerSource:
        sources.append(_WrongPidSource(client))
        return sources[-1]

    caplog.set_level(logging.WARNING, "nslib")
    with _tracker(dockerd, make) as (t, log):
        c = run(docker_client, unique)
        log.wait_kinds(unique, ["STARTED"])
        assert log.of(unique) == [("STARTED", c.id, running_pid(docker_client, c.id))]
        assert sources[0].wrong >= 1
        assert t.health().starts_without_inspect == 0
        wait_match(t, docker_client)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_label_key_from_the_files(dockerd: Any, docker_client: Any, unique: str) -> None:
    """With only a label key (the daemon filters the events), the label comes from the files."""
    with _tracker(dockerd, DockerSource, label_env=None, label_key="ms.key") as (t, log):
        c = run(docker_client, None, labels={"ms.key": unique})
        log.wait_kinds(unique, ["STARTED"])
        ms = t.snapshot()[unique]
        assert (ms.container_id, ms.pid) == (c.id, running_pid(docker_client, c.id))
        assert t.health().starts_without_inspect == 1
        wait_match(t, docker_client, label_env=None, label_key="ms.key")
