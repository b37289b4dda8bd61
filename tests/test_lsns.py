"""nslib.lsns: every namespace of every kind, against util-linux lsns, plus what holds it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import PREFIX, missing

import nslib
from nslib.errors import InvalidReference
from nslib.kinds import NsKind
from nslib.lsns import FdHolder, MountHolder, namespaces

pytestmark = pytest.mark.root


def lsns_json() -> list[dict[str, Any]]:
    if shutil.which("lsns") is None:
        missing("needs lsns (util-linux)")
    out = subprocess.run(["lsns", "-J"], capture_output=True, text=True, check=True).stdout
    flat: list[dict[str, Any]] = []

    def walk(items: list[dict[str, Any]]) -> None:
        for item in items:
            flat.append(item)
            walk(item.get("children", []))  # lsns -J nests some as a tree

    walk(json.loads(out)["namespaces"])
    return flat


@contextlib.contextmanager
def unshared(*flags: str) -> Iterator[int]:
    """A process in new namespaces; yields its PID (unshare's child)."""
    if shutil.which("unshare") is None:
        missing("needs unshare (util-linux)")
    proc = subprocess.Popen(
        ["unshare", *flags, "--kill-child", "sh", "-c", "echo ok; exec >/dev/null; exec sleep 600"],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        with proc.stdout:
            assert proc.stdout.readline() == b"ok\n"
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_bytes().split()
        yield int(children[0])
    finally:
        proc.kill()
        proc.wait()


def link_ino(pid: int | str, kind: str) -> int:
    link = os.readlink(f"/proc/{pid}/ns/{kind}")
    return int(link[len(kind) + 2 : -1])


def test_everything_lsns_lists_is_listed_with_the_same_facts(fd_baseline: object) -> None:
    with unshared("-fmuinpC", "--mount-proc") as pid:
        # Other programs start and stop processes meanwhile: what lsns saw
        # both before and after our scan was there during it.
        theirs = lsns_json()
        ours = namespaces()
        after = {(n["type"], n["ns"]) for n in lsns_json()}
        keys = {(e.kind.proc_name, e.ino) for e in ours}
        stable = [(n["type"], n["ns"]) for n in theirs if (n["type"], n["ns"]) in after]
        assert [k for k in stable if k not in keys] == []
        # The namespaces of the target are quiet: every column agrees exactly.
        for kind in ("mnt", "uts", "ipc", "net", "pid", "cgroup"):
            ino = link_ino(pid, kind)
            (ref,) = [n for n in theirs if (n["type"], n["ns"]) == (kind, ino)]
            entry = ours.get(NsKind.parse(kind), ino)
            assert entry is not None
            mine = entry.to_dict()
            assert {k: mine[k] for k in ("ns", "type", "nprocs", "pid", "user", "command")} == {
                k: ref[k] for k in ("ns", "type", "nprocs", "pid", "user", "command")
            }
            assert pid in entry.pids


def test_namespaces_held_only_by_a_bind_mount_or_an_fd(fd_baseline: object) -> None:
    if shutil.which("unshare") is None:
        missing("needs unshare (util-linux)")
    base = tempfile.mkdtemp(prefix=f"{PREFIX}-lsns-")
    holder = os.path.join(base, "uts")
    Path(holder).touch()
    mounted = False
    fd = -1
    try:
        # unshare --uts=FILE keeps the new UTS namespace alive by a bind mount only.
        subprocess.run(["unshare", f"--uts={holder}", "true"], check=True)
        mounted = True
        uts_ino = os.stat(holder).st_ino
        # An IPC namespace whose only process exits: our fd keeps it.
        with unshared("-i") as pid:
            fd = os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
            ipc_ino = os.fstat(fd).st_ino
        theirs = {(n["type"], n["ns"]) for n in lsns_json()}
        ours = namespaces()
        uts = ours.get(NsKind.UTS, uts_ino)
        ipc = ours.get(NsKind.IPC, ipc_ino)
        assert uts is not None and ipc is not None
        assert ("uts", uts_ino) not in theirs and ("ipc", ipc_ino) not in theirs
        assert uts.mounts == (MountHolder(holder, None),) and uts.held_by == ("mounts",)
        assert (uts.nprocs, uts.pid, uts.command) == (0, None, None)
        assert FdHolder(os.getpid(), fd) in ipc.fds and ipc.held_by == ("fds",)
        assert len(ours) > len({(n["type"], n["ns"]) for n in lsns_json()})
    finally:
        if fd >= 0:
            os.close(fd)
        if mounted:
            subprocess.run(["umount", holder], check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_a_thread_in_another_namespace_is_seen(fd_baseline: object) -> None:
    # lsns reads /proc/PID/ns only; a single switched thread holds its namespace too.
    inside, done = threading.Event(), threading.Event()
    tid = [0]
    with nslib.NsHandle.new() as ns:
        ino = ns.ns_id[1]

        def body() -> None:
            with nslib.entered(ns):
                tid[0] = threading.get_native_id()
                inside.set()
                done.wait(30)

        t = threading.Thread(target=body)
        t.start()
        try:
            assert inside.wait(10)
            entry = namespaces(["net"]).get(NsKind.NET, ino)
            assert entry is not None
            assert (os.getpid(), tid[0]) in entry.threads
            assert "threads" in entry.held_by
        finally:
            done.set()
            t.join()


def test_a_mount_in_another_mount_namespace_is_seen(fd_baseline: object) -> None:
    if shutil.which("unshare") is None:
        missing("needs unshare (util-linux)")
    script = (
        "mount --make-rprivate / && touch /tmp/nslib-lsns-uts && "
        "unshare --uts=/tmp/nslib-lsns-uts true && echo ok && exec >/dev/null && exec sleep 600"
    )
    proc = subprocess.Popen(
        ["unshare", "-m", "--kill-child", "sh", "-c", script], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        with proc.stdout:
            assert proc.stdout.readline() == b"ok\n"
        (child,) = map(int, Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_bytes().split())
        ino = os.stat(f"/proc/{child}/root/tmp/nslib-lsns-uts").st_ino
        entry = namespaces(["uts"]).get(NsKind.UTS, ino)
        assert entry is not None and entry.nprocs == 0
        (mount,) = entry.mounts
        assert mount.path == "/tmp/nslib-lsns-uts" and mount.via_pid is not None
        assert os.readlink(f"/proc/{mount.via_pid}/ns/mnt") == os.readlink(f"/proc/{child}/ns/mnt")
    finally:
        proc.kill()
        proc.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink("/tmp/nslib-lsns-uts")  # the file is ours; the mount died with its ns


def test_json_is_exact_and_lsns_shaped(fd_baseline: object) -> None:
    # A command line with a newline and an undecodable byte stays exact in JSON.
    odd = b"name\n\xff"
    proc = subprocess.Popen(
        [b"unshare", b"-u", b"--kill-child", b"sh", b"-c", b"sleep 600; :", odd],
        start_new_session=True,  # sh forks sleep: the group is killed, not just unshare
    )
    try:
        # unshare itself runs in the new UTS namespace: the lowest PID in it.
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{proc.pid}/ns/uts") == os.readlink("/proc/self/ns/uts"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ino = link_ino(proc.pid, "uts")
        data = json.loads(namespaces().to_json())
        assert set(data) == {"namespaces", "unreadable"}
        for entry in data["namespaces"]:
            assert {"ns", "type", "nprocs", "pid", "user", "command"} <= set(entry)
        (entry,) = [e for e in data["namespaces"] if (e["type"], e["ns"]) == ("uts", ino)]
        assert entry["pid"] == proc.pid
        assert os.fsencode(entry["command"]) == b"unshare -u --kill-child sh -c sleep 600; : " + odd
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_kinds_filter_and_bad_kind() -> None:
    only = namespaces(["uts", NsKind.IPC], mounts=False, fds=False, nsid=False)
    assert {e.kind for e in only} == {NsKind.UTS, NsKind.IPC}
    with pytest.raises(InvalidReference, match="not a kind"):
        namespaces(["network"])


def test_nsid_of_a_named_network_namespace(run_dir: str, unique: str) -> None:
    from nslib import named

    with named.create(unique, run_dir=run_dir) as h:
        from nslib._nsid import Rtnl

        with Rtnl() as rtnl:
            rtnl.set(h.fileno(), 77, "test")
        entry = namespaces(["net"]).get(NsKind.NET, h.ns_id[1])
        assert entry is not None and entry.nsid == 77
        assert MountHolder(os.path.join(run_dir, unique), None) in entry.mounts
    named.delete(unique, run_dir=run_dir)
