"""``NetNamespace`` references: parse/str round trips and resolution."""

from __future__ import annotations

import os
import re
import subprocess
import threading

import pytest
from helpers import thread_ns
from hypothesis import assume, example, given
from hypothesis import strategies as st

import nslib
from nslib import (
    InvalidName,
    InvalidReference,
    NamespaceNotFound,
    NetNamespace,
    NotANamespace,
    NsHandle,
    ReferenceType,
    UnavailableMicroserviceError,
    open_namespace,
)
from nslib import _syscalls as sys_

root = pytest.mark.root

# -- strategies ----------------------------------------------------------------

PREFIXES = ["name:", "pid:", "path:", "ms:", "undefined:", "", "nsid:", "fd:", "Name:", ":"]


def encodable(s: str) -> bool:
    try:
        os.fsencode(s)
    except UnicodeEncodeError:
        return False
    return True


# Anything at all, and things that look almost right.
reference_strings = st.one_of(
    st.text(),
    st.tuples(st.sampled_from(PREFIXES), st.text()).map("".join),
    st.tuples(st.sampled_from(["pid:"]), st.integers(-5, 2**70).map(str)).map("".join),
    st.tuples(st.sampled_from(PREFIXES), st.sampled_from(["", ".", "..", "a/b", "0", "007"])).map(
        "".join
    ),
)

names = st.text(min_size=1).filter(
    lambda s: (
        s not in (".", "..")
        and "/" not in s
        and "\0" not in s
        and encodable(s)
        and len(os.fsencode(s)) <= 255
    )
)
paths = st.text(min_size=1).filter(lambda s: "\0" not in s and encodable(s))
labels = st.text(min_size=1).filter(lambda s: "\0" not in s)

valid_references = st.one_of(
    names.map(NetNamespace.named),
    st.integers(1, 2**64).map(NetNamespace.pid),
    paths.map(NetNamespace.path),
    st.tuples(st.integers(1, 2**22), st.integers(1, 2**22)).map(lambda t: NetNamespace.thread(*t)),
    labels.map(NetNamespace.microservice),
    st.just(NetNamespace(ReferenceType.UNDEFINED)),
)


# -- properties ----------------------------------------------------------------


@given(reference_strings)
@example("undefined:")
@example("undefined")
@example("name:a:b")
@example("a:b")
@example("pid:")
@example("path:")
@example("ms:")
@example("\ud800")
@example("pid:\u0661")  # an Arabic-Indic digit is not a pid
def test_parse_round_trips_or_raises(text: str) -> None:
    try:
        ref = NetNamespace.parse(text)
    except InvalidReference:
        return
    assert isinstance(ref.type, ReferenceType)
    again = NetNamespace.parse(str(ref))
    assert again == ref
    assert hash(again) == hash(ref)
    assert str(again) == str(ref)


@given(valid_references)
def test_str_parse_gives_back_the_value(ref: NetNamespace) -> None:
    text = str(ref)
    assert NetNamespace.parse(text) == ref
    assert text.partition(":")[0] in ("name", "pid", "path", "ms", "undefined")


@given(names)
def test_bare_name_is_a_name(name: str) -> None:
    assume(":" not in name)
    assert NetNamespace.parse(name) == NetNamespace.named(name)


# -- constructors ----------------------------------------------------------------


def test_helpers() -> None:
    assert NetNamespace.named("blue") == NetNamespace(ReferenceType.NSID, "blue")
    assert NetNamespace.pid(42) == NetNamespace(ReferenceType.PID, "42")
    assert NetNamespace.path("/run/netns/x") == NetNamespace(ReferenceType.FD, "/run/netns/x")
    assert NetNamespace.thread(1, 2) == NetNamespace(ReferenceType.FD, "/proc/1/task/2/ns/net")
    assert NetNamespace.microservice("web") == NetNamespace(ReferenceType.MICROSERVICE, "web")
    assert str(NetNamespace.named("blue")) == "name:blue"
    assert str(NetNamespace.pid(42)) == "pid:42"
    assert str(NetNamespace.path("/p")) == "path:/p"
    assert str(NetNamespace.microservice("web")) == "ms:web"
    assert str(NetNamespace(ReferenceType.UNDEFINED)) == "undefined:"
    assert NetNamespace.parse("pid:42") == NetNamespace.pid(42)


def test_plain_int_types_become_the_enum() -> None:
    ref = NetNamespace(1, "blue")  # type: ignore[arg-type]
    assert ref.type is ReferenceType.NSID
    assert ref == NetNamespace.named("blue")


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda: NetNamespace.pid(0), InvalidReference),
        (lambda: NetNamespace.pid(-1), InvalidReference),
        (lambda: NetNamespace.pid(True), InvalidReference),
        (lambda: NetNamespace.pid("42"), InvalidReference),
        (lambda: NetNamespace.thread(0, 1), InvalidReference),
        (lambda: NetNamespace.thread(1, -1), InvalidReference),
        (lambda: NetNamespace.path(""), InvalidReference),
        (lambda: NetNamespace.path("/a\0b"), InvalidReference),
        (lambda: NetNamespace.path("\ud800"), InvalidReference),
        (lambda: NetNamespace.named(""), InvalidName),
        (lambda: NetNamespace.named("a/b"), InvalidName),
        (lambda: NetNamespace.named(".."), InvalidName),
        (lambda: NetNamespace.named("\ud800"), InvalidName),
        (lambda: NetNamespace.microservice(""), InvalidReference),
        (lambda: NetNamespace(ReferenceType.UNDEFINED, "x"), InvalidReference),
        (lambda: NetNamespace(9, "x"), InvalidReference),  # type: ignore[arg-type]
        (lambda: NetNamespace("name", "x"), InvalidReference),  # type: ignore[arg-type]
        (lambda: NetNamespace(ReferenceType.NSID, 5), InvalidReference),  # type: ignore[arg-type]
        (lambda: NetNamespace.parse(5), InvalidReference),  # type: ignore[arg-type]
        (lambda: NetNamespace.parse("nsid:blue"), InvalidReference),
        (lambda: NetNamespace.parse("pid:007"), InvalidReference),
        (lambda: NetNamespace.parse("pid:-3"), InvalidReference),
        (lambda: NetNamespace.parse("undefined:x"), InvalidReference),
        (lambda: NetNamespace.parse("name:a\0b"), InvalidReference),
    ],
)
def test_invalid_references(call: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        call()  # type: ignore[operator]


def test_references_are_values() -> None:
    ref = NetNamespace.named("blue")
    with pytest.raises(AttributeError):
        ref.reference = "red"  # type: ignore[misc]
    assert {ref, NetNamespace.parse("blue")} == {ref}


# -- resolution ------------------------------------------------------------------


def test_open_pid_reference(fd_baseline: set[int]) -> None:
    with open_namespace(NetNamespace.pid(os.getpid())) as h:
        assert h.ns_id == thread_ns()
        assert h.what == f"pid:{os.getpid()}"


def test_open_thread_and_path_references(fd_baseline: set[int]) -> None:
    ref = NetNamespace.thread(os.getpid(), threading.get_native_id())
    with open_namespace(ref) as h:
        assert h.ns_id == thread_ns()
    with open_namespace(NetNamespace.parse("path:/proc/thread-self/ns/net")) as h:
        assert h.ns_id == thread_ns()


def test_open_exited_pid(fd_baseline: set[int]) -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    with pytest.raises(NamespaceNotFound, match=f"no process {p.pid}"):
        open_namespace(NetNamespace.pid(p.pid))


@pytest.mark.parametrize(
    ("text", "exc"),
    [
        ("path:/etc/hostname", NotANamespace),
        ("path:/proc/self/ns/mnt", NotANamespace),
        ("path:/nonexistent/ns", NamespaceNotFound),
        ("undefined:", InvalidReference),
        ("ms:web", UnavailableMicroserviceError),
    ],
)
def test_open_bad_references(text: str, exc: type[Exception], fd_baseline: set[int]) -> None:
    with pytest.raises(exc, match=re.escape(text)):  # the message names the reference
        open_namespace(NetNamespace.parse(text))


@root
def test_open_named_reference(run_dir: str, fd_baseline: set[int]) -> None:
    os.makedirs(run_dir)
    place = os.path.join(run_dir, "blue")
    open(place, "w").close()
    with NsHandle.new() as ns:
        sys_.mount(
            f"/proc/{os.getpid()}/fd/{ns.fileno()}".encode(), place.encode(), b"none", 4096, "bind"
        )
        try:
            with open_namespace(NetNamespace.parse("name:blue"), run_dir=run_dir) as h:
                assert h.same_namespace(ns)
        finally:
            sys_.umount2(place.encode(), sys_.MNT_DETACH, "unbind")
    with pytest.raises(NamespaceNotFound, match="blue"):
        open_namespace(NetNamespace.named("blue"), run_dir=os.path.join(run_dir, "gone"))


class _Service:
    def __init__(self, path: str) -> None:
        self.path = path

    def open_namespace(self) -> NsHandle:
        return NsHandle.from_path(self.path)


class _Tracker:
    """The tracker protocol open_namespace needs (the real one is another issue's)."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known

    def get(self, label: str) -> _Service | None:
        path = self.known.get(label)
        return _Service(path) if path else None


def test_open_microservice_through_a_tracker(fd_baseline: set[int]) -> None:
    tracker = _Tracker({"web": "/proc/thread-self/ns/net"})
    with open_namespace(NetNamespace.microservice("web"), tracker=tracker) as h:
        assert h.ns_id == thread_ns()
    with pytest.raises(UnavailableMicroserviceError, match="ms:db"):
        open_namespace(NetNamespace.microservice("db"), tracker=tracker)


@root
def test_entered_accepts_a_reference(fd_baseline: set[int], home_ns: tuple[int, int]) -> None:
    with NsHandle.new() as ns:
        ref = NetNamespace.path(f"/proc/{os.getpid()}/fd/{ns.fileno()}")
        with nslib.entered(ref) as h:
            assert h is None  # the fd entered() opened belongs to the switch
            assert thread_ns() == ns.ns_id
    assert thread_ns() == home_ns  # and fd_baseline: the switch closed its fd


def test_open_microservice_with_a_tracker_never_in_sync(tmp_path: object) -> None:
    """As NsPlugin: a tracker that never synced is an unavailable microservice,
    with docker's reason chained."""
    import docker

    client = docker.DockerClient(base_url=f"unix://{tmp_path}/absent.sock", version="1.41")
    tracker = nslib.MicroserviceTracker(client)
    tracker.start()
    tracker.stop()  # never in sync: get() raises at once
    try:
        with pytest.raises(UnavailableMicroserviceError, match="ms:web") as info:
            open_namespace(NetNamespace.microservice("web"), tracker=tracker)
        assert isinstance(info.value.__cause__, nslib.DockerUnavailableError)
    finally:
        client.close()
