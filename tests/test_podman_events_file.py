"""Following podman's events log file (``FileEvents``) on synthetic files.

The file is written here the way podman 4.3 writes it (one JSON object a
line, appended; rotation renames a copy of the second half over it, or
truncates it in place across file systems), so that partial lines,
rotations, truncations, a late file and hostile content can be driven
exactly.  The same reader against a real podman is in
``test_microservice_podman.py``.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nslib.microservice.sources._podman_events import FileEvents, parse_line
from nslib.microservice.sources.base import SourceEvent

T0 = 1_780_000_000_000_000_000


def cid(n: int) -> str:
    return f"{n:064x}"


def rfc3339(ns: int) -> str:
    import time

    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))
    frac = f"{ns % 1_000_000_000:09d}".rstrip("0")
    return f"{whole}.{frac}Z" if frac else f"{whole}Z"


def line(n: int, status: str = "start", t: int | None = None, **attrs: str) -> bytes:
    ev = {
        "ID": cid(n),
        "Image": "localhost/x:test",
        "Name": f"c{n}",
        "Status": status,
        "Time": rfc3339(T0 + n if t is None else t),
        "Type": "container",
        "Attributes": attrs,
    }
    return json.dumps(ev, separators=(",", ":")).encode() + b"\n"


ROTATE = (
    b'{"Name":"/x/events.log","Status":"log-rotation","Time":"2026-01-01T00:00:00Z",'
    b'"Type":"system"}\n'
)


class Reader:
    """Iterates a FileEvents on a thread; events arrive in a queue."""

    def __init__(self, stream: FileEvents) -> None:
        self.stream = stream
        self.q: queue.Queue[SourceEvent | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for ev in self.stream:
                self.q.put(ev)
        finally:
            self.q.put(None)

    def take(self, n: int, timeout: float = 10.0) -> list[SourceEvent]:
        out = []
        for _ in range(n):
            ev = self.q.get(timeout=timeout)
            assert ev is not None, "the stream ended"
            out.append(ev)
        return out

    def until(self, sentinel: int, timeout: float = 10.0) -> list[int]:
        """IDs (as numbers) up to and without the event of container *sentinel*."""
        out = []
        while True:
            ev = self.q.get(timeout=timeout)
            assert ev is not None, "the stream ended"
            n = int(ev.container_id, 16)
            if n == sentinel:
                return out
            out.append(n)

    def close(self) -> None:
        self.stream.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/thread-self/fd"))


def reading(path: Path, since: int | None = None, key: str | None = None) -> Iterator[Reader]:
    r = Reader(FileEvents(str(path), since, key))
    try:
        yield r
    finally:
        r.close()


def test_live_events_partial_line_and_hostile_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(line(1) + line(2, "died"))  # before the subscription: not reported
    for r in reading(path):
        whole = line(3)
        append(path, whole[:40])
        append(path, whole[40:] + line(3, "died")[:-1])  # the second one without its newline
        assert [(e.container_id, e.action, e.time_ns) for e in r.take(1)] == [
            (cid(3), "start", T0 + 3)
        ]
        append(path, b"\n")
        assert r.take(1)[0].action == "died"
        append(path, b"\xff\xfe not json\n")
        append(path, b'{"ID":"\\u001b[31mred","Status":"start","Type":"container"}\n')
        append(path, line(4, "sync") + line(4, "create") + line(4).replace(b'"Time":', b'"T":'))
        append(path, line(5).replace(b'"container"', b'"image"') + ROTATE + b"[1,2]\n\n")
        append(path, b"x" * (3 << 20))  # an endless "line": dropped, not buffered for ever
        append(path, b"\n" + line(6, "remove"))
        got = r.take(2)
        assert [(e.container_id, e.action) for e in got] == [(cid(4), "start"), (cid(6), "remove")]
        assert got[0].time_ns is None  # a line without a time is reported, untimed


def test_rotation_by_rename_reports_the_copied_half_once(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(b"".join(line(n, "sync") for n in range(1, 50)))
    for r in reading(path):
        append(path, line(100) + line(101))
        r.take(2)
        # podman: the second half (with the lines already read) into a new
        # file renamed over the log, then its rotation event, then the event.
        tmp = tmp_path / "tmp123"
        tmp.write_bytes(line(40, "sync") + line(100) + line(101) + ROTATE + line(102))
        os.rename(tmp, path)
        append(path, line(103))
        assert r.until(103) == [102]


def test_truncation_in_place_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(b"".join(line(n, "sync") for n in range(1, 200)))
    for r in reading(path):
        append(path, line(300))
        r.take(1)
        with open(path, "r+b") as f:  # the same file, shorter than what was read
            f.truncate(0)
            f.write(line(300) + ROTATE + line(301))
        append(path, line(302))
        assert r.until(302) == [301]


def test_a_file_that_appears_late(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    for r in reading(path):
        append(path, line(1) + line(2, "died"))
        assert [e.action for e in r.take(2)] == ["start", "died"]
        path.unlink()  # removed and made again: followed
        append(path, line(3, "remove"))
        assert r.until(3) == []


def test_label_key_filters_on_the_attributes(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.touch()
    for r in reading(path, key="app"):
        append(path, line(1) + line(2, app="") + line(3, other="x") + line(4, app="y"))
        assert [e.container_id for e in r.take(2)] == [cid(2), cid(4)]


def test_close_ends_a_blocked_iteration_and_releases_every_fd(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.touch()
    before = open_fds()
    r = Reader(FileEvents(str(path), None, None))
    r.close()
    assert r.q.get(timeout=1) is None
    FileEvents(str(path), None, None).close()  # never iterated
    assert open_fds() == before


def test_not_readable_is_an_error(tmp_path: Path) -> None:
    """What makes PodmanSource use the API stream instead."""
    import pytest

    with pytest.raises(OSError):
        FileEvents(str(tmp_path / "no-such-dir" / "events.log"), None, None)
    with pytest.raises(OSError):
        FileEvents(str(tmp_path), None, None)  # a directory


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    gaps=st.lists(st.integers(0, 3_000_000_000), min_size=1, max_size=400),
    pad=st.integers(0, 3000),
    at=st.integers(0, 400),
)
@example(gaps=[1_000_000_000] * 400, pad=2000, at=200)  # 880 kB: the replay seeks
def test_replay_since_gives_exactly_the_later_events(
    tmp_path: Path, gaps: list[int], pad: int, at: int
) -> None:
    """Whatever the file's size, the replay starts at the cursor: nothing before, nothing lost."""
    path = tmp_path / f"events-{len(gaps)}-{pad}-{at}.log"
    times, t = [], T0
    for g in gaps:
        t += g
        times.append(t)
    path.write_bytes(b"".join(line(i + 1, t=ti, pad="p" * pad) for i, ti in enumerate(times)))
    since = times[min(at, len(times) - 1)] - (at % 2)
    sentinel = len(times) + 1
    for r in reading(path, since=since):
        append(path, line(sentinel, t=times[-1] + 1))
        assert r.until(sentinel) == [i + 1 for i, ti in enumerate(times) if ti >= since]


def test_parse_line_never_raises() -> None:
    for raw in (b"", b"{", b"null", b'{"Type":"container","Status":"start","ID":1}', b"\x00" * 5):
        assert parse_line(raw, None) is None
    assert parse_line(line(7, "died"), None) == SourceEvent(T0 + 7, cid(7), "died")


def test_where_podman_writes_its_events(tmp_path: Path) -> None:
    """containers.conf and the service's flags, as podman 4.3 resolves them."""
    from nslib.microservice.sources._podman_events import _path_from

    conf = tmp_path / "c.conf"
    env = {b"CONTAINERS_CONF": os.fsencode(conf)}
    conf.write_text('[engine]\nevents_logger = "file"\n')
    assert _path_from([], env) == "/run/libpod/events/events.log"
    conf.write_text('[engine]\nevents_logger = "file"\ntmp_dir = "/t"\n')
    assert _path_from([], env) == "/t/events/events.log"
    assert _path_from([b"podman", b"--tmpdir", b"/u", b"system"], env) == "/u/events/events.log"
    conf.write_text(
        '[engine]\nevents_logger = "file"\nevents_logfile_path = "/e.log"\ntmp_dir = "/t"\n'
    )
    assert _path_from([b"podman", b"--tmpdir=/u"], env) == "/e.log"
    assert _path_from([b"podman", b"--events-backend=journald"], env) is None
    conf.write_text('[engine]\nevents_logger = "journald"\n')
    assert _path_from([], env) is None
    assert _path_from([b"podman", b"--events-backend", b"file"], env) == (
        "/run/libpod/events/events.log"
    )
    conf.write_bytes(b"[engine\n\xff")  # not TOML: podman's defaults
    assert _path_from([b"podman", b"--events-backend=file"], env) == (
        "/run/libpod/events/events.log"
    )


def test_a_file_rewritten_in_place_and_grown_past_our_offset(tmp_path: Path) -> None:
    """Truncated and refilled (podman's copy across file systems, or copytruncate)
    before the reader looked: the new content is read from its start, once."""
    path = tmp_path / "events.log"
    path.write_bytes(line(1, "sync"))
    stream = FileEvents(str(path), None, None)
    try:
        events = iter(stream)
        append(path, line(10))
        assert next(events).container_id == cid(10)  # the reader is paused right here
        with open(path, "r+b") as f:
            f.truncate(0)
            f.write(line(10) + ROTATE + b"".join(line(n) for n in range(11, 30)))
        got: queue.Queue[int] = queue.Queue()
        threading.Thread(
            target=lambda: [got.put(int(e.container_id, 16)) for e in events], daemon=True
        ).start()  # the same iteration goes on, on a thread (so a failure cannot hang)
        assert [got.get(timeout=10) for _ in range(19)] == list(range(11, 30))
    finally:
        stream.close()
