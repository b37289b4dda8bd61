"""nslib.named: ip netns-compatible named namespaces, against the real kernel."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import gc
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from caps import CAP_SYS_ADMIN, set_effective_cap
from helpers import PREFIX, open_fds, thread_ns, unmount_tree
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import nslib
from nslib import (
    InvalidName,
    InvalidReference,
    NamespaceExists,
    NamespaceNotFound,
    NotANamespace,
    NsHandle,
    named,
)
from nslib._procfs import read_mountinfo
from nslib.names import DEFAULT_RUN_DIR

pytestmark = pytest.mark.root

# -- helpers ------------------------------------------------------------------


def mounts_below(run_dir: str) -> Counter[str]:
    """How many times each name under *run_dir* is a mount point."""
    prefix = os.fsencode(os.path.realpath(run_dir)) + b"/"
    found: Counter[str] = Counter()
    for m in read_mountinfo("/proc/self/mountinfo"):
        if m.mount_point.startswith(prefix):
            found[os.fsdecode(m.mount_point[len(prefix) :])] += 1
    return found


def mounts_at(path: str) -> int:
    real = os.fsencode(os.path.realpath(path))
    return sum(1 for m in read_mountinfo("/proc/self/mountinfo") if m.mount_point == real)


def entries(run_dir: str) -> list[str]:
    try:
        return sorted(os.listdir(run_dir))
    except FileNotFoundError:
        return []


def assert_clean(run_dir: str) -> None:
    """No placeholder and no namespace mount left in *run_dir*."""
    assert entries(run_dir) == []
    assert mounts_below(run_dir) == Counter()


def ns_of(path: str) -> tuple[int, int]:
    st_ = os.stat(path)
    return (st_.st_dev, st_.st_ino)


def host_ip_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


# -- capabilities and inotify, for failure injection -------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def without_sys_admin(fn: Callable[[], object]) -> BaseException | None:
    """Run *fn* on a thread without CAP_SYS_ADMIN; return what it raised."""
    box: list[BaseException | None] = []

    def body() -> None:
        try:
            # Per thread; the threads this one creates inherit the reduced set.
            set_effective_cap(CAP_SYS_ADMIN, False)
            fn()
            box.append(None)
        except BaseException as e:
            box.append(e)

    t = threading.Thread(target=body, name="test-nocap")
    t.start()
    t.join()
    return box[0]


class Inotify:
    """The CREATE/DELETE events of one directory (proof of what happened)."""

    IN_CREATE = 0x100
    IN_DELETE = 0x200

    def __init__(self, path: str) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        mask = self.IN_CREATE | self.IN_DELETE
        if _libc.inotify_add_watch(self.fd, os.fsencode(path), mask) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), "inotify_add_watch")

    def events(self) -> list[tuple[str, str]]:
        out = []
        try:
            buf = os.read(self.fd, 65536)
        except BlockingIOError:
            return out
        i = 0
        while i < len(buf):
            _, mask, _, size = struct.unpack_from("iIII", buf, i)
            name = buf[i + 16 : i + 16 + size].rstrip(b"\0").decode()
            kind = "create" if mask & self.IN_CREATE else "delete"
            out.append((kind, name))
            i += 16 + size
        return out

    def close(self) -> None:
        os.close(self.fd)


def mount_tmpfs(path: str, *options: str) -> None:
    os.makedirs(path, exist_ok=True)
    opts = ",".join(("size=1m", *options))
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "nslt", path], check=True)


# -- basics -------------------------------------------------------------------


def test_lazy_export() -> None:
    import nslib.named as direct

    assert nslib.named is direct
    assert "named" in nslib.__all__


def test_create_delete(run_dir: str, fd_baseline: set[int], home_ns: tuple[int, int]) -> None:
    with named.create("blue", run_dir=run_dir) as h:
        path = os.path.join(run_dir, "blue")
        assert h.ns_id == ns_of(path)
        assert h.ns_id != thread_ns()
        assert named.exists("blue", run_dir=run_dir)
        assert named.list(run_dir=run_dir) == ["blue"]
        assert mounts_below(run_dir) == Counter({"blue": 1})
        with NsHandle.from_name("blue", run_dir=run_dir) as again:
            assert again.same_namespace(h)
        assert named.identify(h, run_dir=run_dir) == ["blue"]
        assert named.stale(run_dir=run_dir) == []
        assert named.run_dir_status(run_dir).ready

        named.delete("blue", run_dir=run_dir)
        assert_clean(run_dir)
        assert not named.exists("blue", run_dir=run_dir)
        # The handle keeps the namespace alive after its name is gone.
        assert named.identify(h, run_dir=run_dir) == []
        with nslib.socket_in(h, socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))  # lo exists (down) in the kept namespace
        with pytest.raises(NamespaceNotFound):
            named.delete("blue", run_dir=run_dir)


def test_lookups_never_create(run_dir: str) -> None:
    assert named.list(run_dir=run_dir) == []
    assert named.stale(run_dir=run_dir) == []
    assert not named.exists("nope", run_dir=run_dir)
    assert named.identify(os.getpid(), run_dir=run_dir) == []
    with pytest.raises(NamespaceNotFound):
        named.pids("nope", run_dir=run_dir)
    with pytest.raises(NamespaceNotFound):
        named.delete("nope", run_dir=run_dir)
    with pytest.raises(NamespaceNotFound):
        named.repair("nope", run_dir=run_dir)
    with pytest.raises(NamespaceNotFound):
        NsHandle.from_name("nope", run_dir=run_dir)
    assert not named.run_dir_status(run_dir).exists
    assert not os.path.exists(run_dir)


def test_name_max_boundary(run_dir: str) -> None:
    longest = "n" * 255
    named.create(longest, run_dir=run_dir).close()
    assert named.list(run_dir=run_dir) == [longest]
    named.delete(longest, run_dir=run_dir)
    assert_clean(run_dir)


BAD_NAMES = ["", ".", "..", "a/b", "/abs", "x" * 256, "é" * 128, "a\0b", b"bytes", None]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
@pytest.mark.parametrize(
    "call",
    [
        lambda n, d: named.create(n, run_dir=d),
        lambda n, d: named.delete(n, run_dir=d),
        lambda n, d: named.exists(n, run_dir=d),
        lambda n, d: named.attach(n, os.getpid(), run_dir=d),
        lambda n, d: named.pids(n, run_dir=d),
        lambda n, d: named.repair(n, run_dir=d),
    ],
    ids=["create", "delete", "exists", "attach", "pids", "repair"],
)
def test_invalid_names_touch_nothing(
    bad: Any, call: Callable[[Any, str], object], run_dir: str, fd_baseline: set[int]
) -> None:
    with pytest.raises(InvalidName) as ei:
        call(bad, run_dir)
    assert isinstance(ei.value, ValueError)
    assert not os.path.exists(run_dir)  # the run dir was not even created


def test_run_dir_nul_byte_rejected(run_dir: str) -> None:
    with pytest.raises(InvalidReference):
        named.create("x", run_dir=run_dir + "\0")
    assert not os.path.exists(run_dir)


# -- the model-based test -----------------------------------------------------


class NamedMachine(RuleBasedStateMachine):
    """create/delete/attach/list/identify/exists against a dict model.

    The model maps each name to the identity of the namespace bound to it;
    after every step the directory, the mount table and the model agree.
    """

    names = st.sampled_from(["red", "green", "blue", "self"])

    def __init__(self) -> None:
        super().__init__()
        self.base = tempfile.mkdtemp(prefix=f"{PREFIX}-sm-")
        self.dir = os.path.join(self.base, "netns")
        self.model: dict[str, tuple[int, int]] = {}

    @rule(name=names)
    def create(self, name: str) -> None:
        if name in self.model:
            with pytest.raises(NamespaceExists):
                named.create(name, run_dir=self.dir)
            return
        with named.create(name, run_dir=self.dir) as h:
            assert h.ns_id not in self.model.values()
            self.model[name] = h.ns_id

    @rule(name=names)
    def delete(self, name: str) -> None:
        if name not in self.model:
            with pytest.raises(NamespaceNotFound):
                named.delete(name, run_dir=self.dir)
            return
        named.delete(name, run_dir=self.dir)
        del self.model[name]

    @rule(name=names, source=names)
    def attach_alias(self, name: str, source: str) -> None:
        if source not in self.model:
            return
        with NsHandle.from_name(source, run_dir=self.dir) as h:
            if name in self.model:
                with pytest.raises(NamespaceExists):
                    named.attach(name, h, run_dir=self.dir)
                return
            named.attach(name, h, run_dir=self.dir)
        self.model[name] = self.model[source]

    @rule(name=names)
    def attach_pid(self, name: str) -> None:
        if name in self.model:
            with pytest.raises(NamespaceExists):
                named.attach(name, os.getpid(), run_dir=self.dir)
            return
        named.attach(name, os.getpid(), run_dir=self.dir)
        self.model[name] = ns_of(f"/proc/{os.getpid()}/ns/net")

    @rule(name=names)
    def exists(self, name: str) -> None:
        assert named.exists(name, run_dir=self.dir) == (name in self.model)

    @rule()
    def list(self) -> None:
        assert named.list(run_dir=self.dir) == sorted(self.model)

    @rule(source=names)
    def identify(self, source: str) -> None:
        if source not in self.model:
            return
        want = sorted(n for n, ident in self.model.items() if ident == self.model[source])
        with NsHandle.from_name(source, run_dir=self.dir) as h:
            assert named.identify(h, run_dir=self.dir) == want

    @rule()
    def identify_self(self) -> None:
        me = ns_of(f"/proc/{os.getpid()}/ns/net")
        want = sorted(n for n, ident in self.model.items() if ident == me)
        assert named.identify(os.getpid(), run_dir=self.dir) == want

    @invariant()
    def directory_mounts_and_model_agree(self) -> None:
        assert entries(self.dir) == sorted(self.model)
        assert mounts_below(self.dir) == Counter(dict.fromkeys(self.model, 1))
        for name, ident in self.model.items():
            assert ns_of(os.path.join(self.dir, name)) == ident
        assert named.stale(run_dir=self.dir) == []

    def teardown(self) -> None:
        try:
            for name in builtin_list(self.model):
                named.delete(name, run_dir=self.dir)
            assert_clean(self.dir)
        finally:
            unmount_tree(self.base)
            shutil.rmtree(self.base, ignore_errors=True)


builtin_list = list
TestNamedMachine = NamedMachine.TestCase
TestNamedMachine.settings = settings(
    settings.default, max_examples=min(settings.default.max_examples, 25), stateful_step_count=20
)


# -- interop with the real ip binary ----------------------------------------


def _ip_name() -> str:
    return f"{PREFIX}ip{uuid.uuid4().hex[:8]}"


def test_interop_nslib_to_ip(fd_baseline: set[int]) -> None:
    name = _ip_name()
    try:
        with named.create(name) as h:
            assert name in host_ip_names()
            out = subprocess.run(
                ["ip", "netns", "exec", name, "ip", "-o", "link", "show"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert [line.split(":")[1].strip() for line in out.splitlines()] == ["lo"]
            who = subprocess.run(
                ["ip", "netns", "exec", name, "ip", "netns", "identify"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            assert who == [name]
            assert named.identify(h) == [name]
        # ip deletes what nslib made.
        subprocess.run(["ip", "netns", "del", name], check=True)
        assert name not in host_ip_names()
        assert not named.exists(name)
    finally:
        if name in entries(DEFAULT_RUN_DIR):
            named.delete(name)


def test_interop_ip_to_nslib(fd_baseline: set[int]) -> None:
    name = _ip_name()
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert named.exists(name)
        assert name in named.list()
        with NsHandle.from_name(name) as h:
            assert h.ns_id == ns_of(f"/run/netns/{name}")
            assert named.identify(h) == [name]
            with nslib.entered(h):
                assert thread_ns() == h.ns_id
        named.delete(name)
        assert name not in host_ip_names()
        assert name not in named.list()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


# -- failure injection --------------------------------------------------------


def test_existing_name_untouched(run_dir: str, fd_baseline: set[int]) -> None:
    with named.create("dup", run_dir=run_dir) as first:
        with pytest.raises(NamespaceExists) as ei:
            named.create("dup", run_dir=run_dir)
        assert isinstance(ei.value, FileExistsError)
        assert ei.value.errno == errno.EEXIST
        with pytest.raises(NamespaceExists):
            named.attach("dup", os.getpid(), run_dir=run_dir)
        assert ns_of(os.path.join(run_dir, "dup")) == first.ns_id
        assert mounts_below(run_dir) == Counter({"dup": 1})
        named.delete("dup", run_dir=run_dir)
    assert_clean(run_dir)


def test_run_dir_on_readonly_mount(run_dir: str, fd_baseline: set[int], home_ns: object) -> None:
    ro = os.path.dirname(run_dir)  # the run dir would be made inside a ro tmpfs
    mount_tmpfs(ro, "ro")
    with pytest.raises(OSError) as ei:
        named.create("x", run_dir=run_dir)
    assert ei.value.errno == errno.EROFS
    assert str(run_dir) in str(ei.value)
    assert not os.path.exists(run_dir)
    assert mounts_at(run_dir) == 0


def test_placeholder_on_readonly_mount(
    run_dir: str, fd_baseline: set[int], home_ns: object
) -> None:
    base = os.path.dirname(run_dir)
    mount_tmpfs(base)
    os.mkdir(run_dir)
    subprocess.run(["mount", "-o", "remount,ro", base], check=True)
    with pytest.raises(OSError) as ei:
        named.create("x", run_dir=run_dir)
    assert ei.value.errno == errno.EROFS
    assert_clean(run_dir)


def test_placeholder_cannot_be_created(
    run_dir: str, fd_baseline: set[int], home_ns: object
) -> None:
    base = os.path.dirname(run_dir)
    mount_tmpfs(base, "nr_inodes=2")  # the root and the run dir use both inodes
    os.mkdir(run_dir)
    with pytest.raises(OSError) as ei:
        named.create("x", run_dir=run_dir)
    assert ei.value.errno == errno.ENOSPC
    assert_clean(run_dir)


def test_bind_mount_fails(run_dir: str, fd_baseline: set[int], home_ns: object) -> None:
    named.create("warm", run_dir=run_dir).close()  # set the run dir up first
    named.delete("warm", run_dir=run_dir)
    assert named.run_dir_status(run_dir).ready
    watch = Inotify(run_dir)
    try:
        with NsHandle.new() as other:
            err = without_sys_admin(lambda: named.attach("x", other, run_dir=run_dir))
        assert isinstance(err, PermissionError), err
        assert "x" in str(err)
        # The placeholder was made and then removed, not skipped.
        assert watch.events() == [("create", "x"), ("delete", "x")]
        assert_clean(run_dir)

        # create: unshare(2) on the C core's thread fails the same way.
        err = without_sys_admin(lambda: named.create("y", run_dir=run_dir))
        assert isinstance(err, PermissionError), err
        assert watch.events() == [("create", "y"), ("delete", "y")]
        assert_clean(run_dir)
    finally:
        watch.close()


def test_run_dir_setup_fails(run_dir: str, fd_baseline: set[int], home_ns: object) -> None:
    err = without_sys_admin(lambda: named.create("x", run_dir=run_dir))
    assert isinstance(err, PermissionError), err
    assert_clean(run_dir)
    assert mounts_at(run_dir) == 0


def test_attach_missing_pid(run_dir: str, fd_baseline: set[int]) -> None:
    with pytest.raises(NamespaceNotFound):
        named.attach("x", 2**22 + 12345, run_dir=run_dir)
    assert_clean(run_dir)


# -- propagation and the run directory ---------------------------------------


def _make_shared_mount(path: str) -> None:
    subprocess.run(["mount", "--bind", path, path], check=True)
    subprocess.run(["mount", "--make-shared", path], check=True)


def test_first_setup_gets_own_peer_group(run_dir: str, fd_baseline: set[int]) -> None:
    base = os.path.dirname(run_dir)
    _make_shared_mount(base)  # as on systemd hosts, where / is shared
    with named.create("once", run_dir=run_dir):
        status = named.run_dir_status(run_dir)
        assert status.ready and status.own_peer_group, status
        assert status.parent_peer_group is not None  # the parent is shared
        # The namespace mount does not propagate onto the parent as well.
        assert mounts_below(base) == Counter({"netns": 1, "netns/once": 1})
        named.delete("once", run_dir=run_dir)
    assert mounts_below(base) == Counter({"netns": 1})


def test_status_flags_legacy_peer_of_parent(run_dir: str) -> None:
    base = os.path.dirname(run_dir)
    _make_shared_mount(base)
    os.mkdir(run_dir)
    # What ip netns 6.1 does: a self-bind that joins the parent's peer group.
    subprocess.run(["mount", "--bind", run_dir, run_dir], check=True)
    status = named.run_dir_status(run_dir)
    assert status.mount_point and status.shared and not status.own_peer_group
    assert status.peer_group == status.parent_peer_group
    assert any("peer group" in p for p in status.problems)
    # nslib never re-groups an existing mount (others may receive from it):
    # each namespace mount shows twice there, and delete removes both.
    with named.create("twice", run_dir=run_dir):
        assert mounts_below(base)["netns/twice"] == 2
        named.delete("twice", run_dir=run_dir)
    assert "netns/twice" not in mounts_below(base)


def test_status_not_a_mount_point(run_dir: str) -> None:
    os.mkdir(run_dir)
    status = named.run_dir_status(run_dir)
    assert status.exists and not status.mount_point and not status.ready
    assert status.problems


def test_status_unshared(run_dir: str) -> None:
    os.mkdir(run_dir)
    subprocess.run(["mount", "--bind", run_dir, run_dir], check=True)
    subprocess.run(["mount", "--make-private", run_dir], check=True)
    status = named.run_dir_status(run_dir)
    assert status.mount_point and not status.shared and not status.ready
    assert any("not a shared" in p for p in status.problems)
    # create() repairs exactly that (it is what ip does): shared again.
    named.create("x", run_dir=run_dir).close()
    assert named.run_dir_status(run_dir).ready
    named.delete("x", run_dir=run_dir)


# -- stale placeholders -------------------------------------------------------


def test_stale_and_repair(run_dir: str, fd_baseline: set[int]) -> None:
    named.create("gone", run_dir=run_dir).close()
    with named.create("fine", run_dir=run_dir):
        pass
    path = os.path.join(run_dir, "gone")
    subprocess.run(["umount", path], check=True)  # behind nslib's back

    assert named.stale(run_dir=run_dir) == ["gone"]
    assert named.list(run_dir=run_dir) == ["fine", "gone"]  # as ip netns list
    assert not named.exists("gone", run_dir=run_dir)
    with pytest.raises(NotANamespace):
        NsHandle.from_name("gone", run_dir=run_dir)
    with pytest.raises(NotANamespace):
        named.pids("gone", run_dir=run_dir)
    with pytest.raises(NamespaceExists):
        named.create("gone", run_dir=run_dir)
    with pytest.raises(NamespaceNotFound, match="repair"):
        named.delete("gone", run_dir=run_dir)
    assert os.path.exists(path)  # delete leaves a stale file alone

    with pytest.raises(NamespaceExists, match="delete"):
        named.repair("fine", run_dir=run_dir)
    assert named.exists("fine", run_dir=run_dir)

    named.repair("gone", run_dir=run_dir)
    assert named.list(run_dir=run_dir) == ["fine"]
    assert named.stale(run_dir=run_dir) == []
    named.create("gone", run_dir=run_dir).close()  # the name is free again
    named.delete("gone", run_dir=run_dir)
    named.delete("fine", run_dir=run_dir)
    assert_clean(run_dir)


def test_creation_in_progress_is_not_stale(run_dir: str, fd_baseline: set[int]) -> None:
    named.create("warm", run_dir=run_dir).close()
    named.delete("warm", run_dir=run_dir)
    # What create() holds between reserving a name and binding it.
    path = os.path.join(run_dir, "busy")
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert named.stale(run_dir=run_dir) == []
        with pytest.raises(NamespaceExists, match="being created"):
            named.repair("busy", run_dir=run_dir)
        with pytest.raises(NamespaceNotFound):
            named.delete("busy", run_dir=run_dir)
        assert os.path.exists(path)
    finally:
        os.close(fd)
    assert named.stale(run_dir=run_dir) == ["busy"]
    named.repair("busy", run_dir=run_dir)
    assert_clean(run_dir)


def test_repair_refuses_non_placeholders(run_dir: str) -> None:
    os.makedirs(os.path.join(run_dir, "adir"))
    os.symlink("/proc/self/ns/net", os.path.join(run_dir, "alink"))
    for name in ("adir", "alink"):
        with pytest.raises((InvalidReference, NamespaceExists)):
            named.repair(name, run_dir=run_dir)
    assert named.stale(run_dir=run_dir) == []
    assert entries(run_dir) == ["adir", "alink"]


# -- identify and pids ---------------------------------------------------------


def test_identify(run_dir: str, fd_baseline: set[int]) -> None:
    with named.create("one", run_dir=run_dir) as h, NsHandle.new() as anon:
        named.attach("alias", h, run_dir=run_dir)
        assert named.identify(h, run_dir=run_dir) == ["alias", "one"]
        assert named.identify(anon, run_dir=run_dir) == []
        proc = nslib.run_in(h, subprocess.Popen, ["sleep", "30"])
        try:
            assert named.identify(proc.pid, run_dir=run_dir) == ["alias", "one"]
        finally:
            proc.kill()
            proc.wait()
        with pytest.raises(NamespaceNotFound):
            named.identify(2**22 + 12345, run_dir=run_dir)
        with pytest.raises(InvalidReference):
            named.identify(0, run_dir=run_dir)
        for name in ("one", "alias"):
            named.delete(name, run_dir=run_dir)
    assert_clean(run_dir)


def test_pids_process_and_thread(run_dir: str, fd_baseline: set[int]) -> None:
    with named.create("busy", run_dir=run_dir) as h:
        assert named.pids("busy", run_dir=run_dir) == []
        proc = nslib.run_in(h, subprocess.Popen, ["sleep", "30"])
        try:
            assert named.pids("busy", run_dir=run_dir) == [proc.pid]
        finally:
            proc.kill()
            proc.wait()
        assert named.pids("busy", run_dir=run_dir) == []

        # A thread of this process pinned inside: the main thread is not in
        # it, so only a per-thread scan finds os.getpid().
        with nslib.pinned(h) as pool:
            pool.submit(lambda: None).result()
            assert thread_ns() != h.ns_id
            assert ns_of(f"/proc/{os.getpid()}/ns/net") != h.ns_id
            assert named.pids("busy", run_dir=run_dir) == [os.getpid()]
        # join() returns before the OS thread is fully gone from /proc.
        deadline = time.monotonic() + 5
        while named.pids("busy", run_dir=run_dir) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert named.pids("busy", run_dir=run_dir) == []
        named.delete("busy", run_dir=run_dir)


# -- concurrency ---------------------------------------------------------------

NAMES = ["c0", "c1", "c2", "c3"]


def check_outcome(run_dir: str, created: Counter[str], deleted: Counter[str]) -> None:
    """Successes add up per name, and the directory and mounts show the rest."""
    present = set(entries(run_dir))
    for name in NAMES:
        assert created[name] - deleted[name] == (1 if name in present else 0), name
    assert mounts_below(run_dir) == Counter(dict.fromkeys(present, 1))
    assert mounts_at(run_dir) == 1  # one self-bind: the setup never stacked
    assert named.stale(run_dir=run_dir) == []
    for name in present:
        named.delete(name, run_dir=run_dir)
    assert_clean(run_dir)


def test_threads_create_delete_concurrently(
    run_dir: str, fd_baseline: set[int], home_ns: object
) -> None:
    created: Counter[str] = Counter()
    deleted: Counter[str] = Counter()
    bad: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        mine_c: Counter[str] = Counter()
        mine_d: Counter[str] = Counter()
        start.wait()  # all at once, and the run dir's first setup races too
        for _ in range(25):
            name = rnd.choice(NAMES)
            try:
                roll = rnd.random()
                if roll < 0.45:
                    named.create(name, run_dir=run_dir).close()
                    mine_c[name] += 1
                elif roll < 0.9:
                    named.delete(name, run_dir=run_dir)
                    mine_d[name] += 1
                else:
                    named.list(run_dir=run_dir)
                    named.exists(name, run_dir=run_dir)
                    named.identify(os.getpid(), run_dir=run_dir)
                    named.stale(run_dir=run_dir)
            except (NamespaceExists, NamespaceNotFound):
                pass
            except BaseException as e:
                bad.append(e)
        with lock:
            created.update(mine_c)
            deleted.update(mine_d)

    threads = [threading.Thread(target=worker, args=(i,), name=f"test-w{i}") for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad, bad
    assert sum(created.values()) > 0 and sum(deleted.values()) > 0
    check_outcome(run_dir, created, deleted)


CHILD = r"""
import json, random, sys
from nslib import named, NamespaceExists, NamespaceNotFound

run_dir, seed, ops, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
names = names.split(",")
rnd = random.Random(seed)
out = {"created": {}, "deleted": {}, "clean": 0, "errors": []}
sys.stdin.readline()  # start together
for _ in range(ops):
    name = rnd.choice(names)
    try:
        if rnd.random() < 0.5:
            named.create(name, run_dir=run_dir).close()
            out["created"][name] = out["created"].get(name, 0) + 1
        else:
            named.delete(name, run_dir=run_dir)
            out["deleted"][name] = out["deleted"].get(name, 0) + 1
    except (NamespaceExists, NamespaceNotFound):
        out["clean"] += 1
    except BaseException as e:
        out["errors"].append(repr(e))
print(json.dumps(out))
"""


def test_processes_create_delete_concurrently(run_dir: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, run_dir, str(seed), "40", ",".join(NAMES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    try:
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    created: Counter[str] = Counter()
    deleted: Counter[str] = Counter()
    for p, (stdout, stderr) in zip(procs, outs, strict=True):
        assert p.returncode == 0, stderr
        result = json.loads(stdout)
        assert result["errors"] == []
        created.update(result["created"])
        deleted.update(result["deleted"])
    assert sum(created.values()) > 0 and sum(deleted.values()) > 0
    check_outcome(run_dir, created, deleted)


# -- scale ---------------------------------------------------------------------


@pytest.mark.slow
def test_thousand_namespaces(run_dir: str, fd_baseline: set[int], home_ns: object) -> None:
    base = os.path.dirname(run_dir)
    assert mounts_below(base) == Counter()
    names = [f"s{i:04d}" for i in range(1000)]
    try:
        idents = {}
        for name in names:
            with named.create(name, run_dir=run_dir) as h:
                idents[name] = h.ns_id
        assert named.list(run_dir=run_dir) == names
        assert mounts_below(run_dir) == Counter(dict.fromkeys(names, 1))
        assert len(set(idents.values())) == 1000
        for name in names[::50]:
            with NsHandle.from_name(name, run_dir=run_dir) as h:
                assert h.ns_id == idents[name]
                assert named.identify(h, run_dir=run_dir) == [name]
        assert named.identify(os.getpid(), run_dir=run_dir) == []
        assert named.stale(run_dir=run_dir) == []
    finally:
        for name in names:
            with contextlib.suppress(NamespaceNotFound):
                named.delete(name, run_dir=run_dir)
    assert_clean(run_dir)
    # Only the run dir's own self-bind remains of all that.
    assert mounts_below(base) == Counter({"netns": 1})


# -- interrupts at every point --------------------------------------------------

_NSLIB_DIR = os.path.dirname(nslib.__file__) + os.sep


# Where CPython 3.11 raises a pending signal's exception: as a function starts
# (``call``) and as a call returns (``return``, ``c_return``; the check after
# ``CALL``).  ``c_call`` comes right before a C call, which is no such point.
_CHECKS = frozenset({"call", "return", "c_return"})


class _InterruptAt:
    """A profile hook that raises ``KeyboardInterrupt`` at the *k*-th event.

    The events are those of nslib's own frames: a Python function starting
    and returning, a C function returning.  They are exactly the points
    where CPython raises a pending signal's exception (a function's start,
    and as a call returns, before its result is stored), so walking
    *k* over every event puts a Ctrl-C at every point a real one could land,
    one run each, deterministically.  C calls that nslib chains without
    bytecode between them report no event, as no signal can land there.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.fired = ""

    def __call__(self, frame: Any, event: str, arg: object) -> None:
        if self.fired or not frame.f_code.co_filename.startswith(_NSLIB_DIR):
            return
        if event not in _CHECKS or frame.f_code.co_name == "__del__":
            # Not a point where CPython looks for signals; and what a
            # finalizer raises is swallowed (printed), it interrupts nothing.
            return
        self.k -= 1
        if self.k < 0:
            code = frame.f_code
            where = f"{os.path.basename(code.co_filename)}:{frame.f_lineno} {code.co_name}"
            self.fired = f"{event} {getattr(arg, '__name__', '')} in {where}"
            raise KeyboardInterrupt  # the profiler unsets itself on an exception


def _interrupted(k: int, op: Callable[[], object]) -> str:
    """Run *op* with an interrupt at its *k*-th event; where it fired ('' if it ran out)."""
    hook = _InterruptAt(k)
    with warnings.catch_warnings():
        # A handle the interrupt dropped says so when collected (and is closed).
        warnings.simplefilter("ignore", ResourceWarning)
        sys.setprofile(hook)
        try:
            op()
        except KeyboardInterrupt:
            pass
        finally:
            sys.setprofile(None)
        gc.collect()
    return hook.fired


@pytest.mark.parametrize("what", ["create", "delete"])
def test_an_interrupt_at_any_point_leaves_no_half_done_name(
    run_dir: str, fd_baseline: set[int], what: str
) -> None:
    """Ctrl-C at every point of create() and delete(): whole or gone, no leaked fd."""
    name = f"{PREFIX}{uuid.uuid4().hex[:6]}"
    named.create("setup", run_dir=run_dir).close()  # the run directory is ready
    named.delete("setup", run_dir=run_dir)
    fds = set(fd_baseline)

    def op() -> None:
        if what == "create":
            named.create(name, run_dir=run_dir).close()
        else:
            named.delete(name, run_dir=run_dir)

    k, outcomes = 0, Counter[str]()
    while True:
        if what == "delete":
            named.create(name, run_dir=run_dir).close()
        fired = _interrupted(k, op)
        # Never a placeholder without its namespace, never a stray mount.
        assert named.stale(run_dir=run_dir) == [], f"stale after an interrupt at {fired}"
        assert set(mounts_below(run_dir)) <= set(entries(run_dir))
        whole = named.exists(name, run_dir=run_dir)
        assert entries(run_dir) == ([name] if whole else [])
        outcomes["whole" if whole else "gone"] += 1
        if whole:
            named.delete(name, run_dir=run_dir)
        assert_clean(run_dir)
        leaked = open_fds() - fds
        assert not leaked, f"fds {sorted(leaked)} leaked by an interrupt at {fired}"
        if not fired:
            break  # k went past the last event: the call ran to its end
        k += 1
    assert k > 20, f"only {k} interruptible points: is the hook seeing nslib's frames?"
    assert outcomes["whole"] and outcomes["gone"]
