"""``ContainerdSource.subscribe`` returns only once containerd delivers (a private containerd).

containerd registers a subscriber some time after the call reaches it and
says nothing when it has; an event in between was lost (and the resync
after it could have listed too early to see its effect).  The source now
publishes a mark of its own and waits for it to come back.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import missing

from nslib.microservice import ContainerdSource
from nslib.microservice.sources._containerd_api import EVENTS_PUBLISH, M
from nslib.microservice.sources.base import SourceEvent


@pytest.fixture(scope="module")
def bare_ctrd() -> Iterator[Any]:
    """A private containerd (no image needed: the events are published here)."""
    if shutil.which("containerd") is None:
        missing("needs containerd (docker.io installs it)")
    from containerd_harness import PrivateContainerd

    with PrivateContainerd() as c:
        yield c


def _publish_delete(src: ContainerdSource, cid: str) -> None:
    """Publish a ``/containers/delete`` of *cid*, as another client of containerd could."""
    req = M.PublishRequest(topic="/containers/delete")
    req.event.type_url = "containerd.events.ContainerDelete"
    req.event.value = M.ContainerRef(id=cid).SerializeToString()
    src._unary(EVENTS_PUBLISH, req, M.Empty)


def _first_event(stream: Any, timeout: float) -> SourceEvent | None:
    got: list[SourceEvent] = []

    def read() -> None:
        for ev in stream:
            got.append(ev)
            return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    stream.close()
    t.join(5)
    return got[0] if got else None


def test_an_event_right_after_subscribe_is_never_lost(bare_ctrd: Any) -> None:
    # Before the mark, about 1 in 5 of these was never delivered.
    other = ContainerdSource(bare_ctrd.address, "default")
    try:
        for i in range(60):
            src = ContainerdSource(bare_ctrd.address, "default")
            try:
                stream = src.subscribe(None, None)
                _publish_delete(other, f"gap{i}")
                ev = _first_event(stream, 5.0)
            finally:
                src.close()
            assert ev is not None, f"round {i}: the event after subscribe() never came"
            assert (ev.container_id, ev.action) == (f"gap{i}", "/containers/delete")
    finally:
        other.close()


def test_marks_are_not_events_and_subscribers_do_not_confuse_each_other(bare_ctrd: Any) -> None:
    # Several subscribers confirm at once, each on its own mark; a mark is
    # never passed on as a container event.
    sources = [ContainerdSource(bare_ctrd.address, "default") for _ in range(4)]
    streams: list[Any] = [None] * len(sources)
    errors: list[BaseException] = []

    def sub(k: int) -> None:
        try:
            streams[k] = sources[k].subscribe(None, None)
        except BaseException as e:
            errors.append(e)

    try:
        threads = [threading.Thread(target=sub, args=(k,)) for k in range(len(sources))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        _publish_delete(sources[0], "after-marks")
        for stream in streams:
            ev = _first_event(stream, 5.0)
            assert ev is not None
            assert (ev.container_id, ev.action) == ("after-marks", "/containers/delete")
    finally:
        for s in sources:
            s.close()


def test_another_namespace_does_not_confirm(bare_ctrd: Any) -> None:
    # The mark goes to the subscriber's own namespace; a subscriber of
    # another namespace is confirmed by its own mark, and sees no event of
    # this one.
    a = ContainerdSource(bare_ctrd.address, "default")
    b = ContainerdSource(bare_ctrd.address, "nslib-other")
    try:
        sb = b.subscribe(None, None)
        _publish_delete(a, "in-default")
        assert _first_event(sb, 1.0) is None
    finally:
        a.close()
        b.close()
