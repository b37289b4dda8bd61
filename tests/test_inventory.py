"""nslib.inventory: every namespace the test builds shows up once, with the right holders."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import thread_ns, wait_for_exe

import nslib
from nslib import named
from nslib.inventory import Inventory, NamespaceInfo, inventory

pytestmark = pytest.mark.root


def find(inv: Inventory, h: nslib.NsHandle) -> NamespaceInfo:
    ns = inv.get(h.ns_id)
    assert ns is not None, f"{h.what} ({h.ns_id}) missing from the inventory"
    return ns


def no_duplicates(inv: Inventory) -> None:
    ids = [ns.ns_id for ns in inv]
    assert len(ids) == len(set(ids))


def set_nsid(ns_fd: int, nsid: int) -> None:
    """RTM_NEWNSID: give the namespace an nsid in this thread's namespace."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as nl:
        body = struct.pack("=B3x", socket.AF_UNSPEC)
        body += struct.pack("=HHI", 8, 3, ns_fd)  # NETNSA_FD
        body += struct.pack("=HHi", 8, 1, nsid)  # NETNSA_NSID
        nl.send(struct.pack("=IHHII", 16 + len(body), 88, 1 | 4, 1, 0) + body)  # REQUEST|ACK
        data = nl.recv(4096)
        (err,) = struct.unpack_from("=i", data, 16)
        if err:
            raise OSError(-err, os.strerror(-err))


@pytest.fixture
def process_ns() -> Iterator[tuple[int, tuple[int, int]]]:
    """(pid, ns_id) of `unshare -n sleep 60`, once it has unshared."""
    proc = subprocess.Popen(["unshare", "-n", "sleep", "60"])
    try:
        home = thread_ns()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st = os.stat(f"/proc/{proc.pid}/ns/net")
            if (st.st_dev, st.st_ino) != home and os.readlink(f"/proc/{proc.pid}/exe").endswith(
                "sleep"
            ):
                break
            time.sleep(0.01)
        yield proc.pid, (st.st_dev, st.st_ino)
    finally:
        proc.kill()
        proc.wait()


def test_the_built_topology_is_listed(
    run_dir: str, unique: str, process_ns: tuple[int, tuple[int, int]]
) -> None:
    pid, by_proc = process_ns
    with named.create(unique, run_dir=run_dir) as named_h, nslib.NsHandle.new() as by_fd:
        named_key = named_h.ns_id
        nsid = random.randint(100_000, 2_000_000)
        set_nsid(named_h.fileno(), nsid)
        named_h.close()  # only the bind mount holds it now
        try:
            inv = inventory(run_dir=run_dir, docker=False)
            no_duplicates(inv)

            ns = inv.get(named_key)
            assert ns is not None
            assert ns.names == (unique,)
            assert [m.path for m in ns.mounts] == [os.path.join(run_dir, unique)]
            assert ns.nsid == nsid
            assert ns.held_by == ("mounts",)
            assert inv.named(unique) == ns

            ns = inv.get(by_proc)
            assert ns is not None
            assert ns.pids == (pid,)
            assert ns.processes[0].command == "sleep 60"
            assert ns.processes[0].all_threads
            assert ns.held_by == ("processes",)
            assert ns.names == () and ns.nsid is None

            ns = find(inv, by_fd)
            assert ns.held_by == ("fds",)
            assert [(f.pid, f.fd, f.kind) for f in ns.fds] == [(os.getpid(), by_fd.fileno(), "ns")]

            here = inv.get(thread_ns())
            assert here is not None and here.current
            assert os.getpid() in here.pids
            assert sum(ns.current for ns in inv) == 1
        finally:
            named.delete(unique, run_dir=run_dir)
    # Gone once nothing holds them.
    inv = inventory(run_dir=run_dir, docker=False, nsid=False)
    assert inv.get(named_key) is None


def test_one_namespace_many_holders_is_listed_once(run_dir: str, unique: str) -> None:
    with named.create(unique, run_dir=run_dir) as h:
        proc = nslib.process.popen(h, ["sleep", "60"], etc=False)
        try:
            other = f"{unique[:-1]}z"
            named.attach(other, h, run_dir=run_dir)
            inv = inventory(run_dir=run_dir, docker=False)
            no_duplicates(inv)
            ns = find(inv, h)
            assert ns.names == tuple(sorted([unique, other]))
            assert ns.pids == (proc.pid,)
            assert ns.held_by == ("mounts", "processes", "fds")
            named.delete(other, run_dir=run_dir)
        finally:
            proc.kill()
            proc.wait()
            named.delete(unique, run_dir=run_dir)


def test_a_thread_inside_is_a_holder(netns: nslib.NsHandle) -> None:
    # A pinned worker thread: ip netns pids would miss it (main thread only).
    with nslib.pinned(netns) as ex:
        tid = ex.submit(threading.get_native_id).result()
        key = netns.ns_id
        netns_fd = netns.fileno()
        inv = inventory(docker=False, nsid=False)
    ns = inv.get(key)
    assert ns is not None
    [proc] = ns.processes
    assert proc.pid == os.getpid()
    assert tid in proc.threads
    assert not proc.all_threads
    assert (os.getpid(), netns_fd) in [(f.pid, f.fd) for f in ns.fds]


def test_a_socket_only_namespace_needs_sockets_true() -> None:
    with nslib.NsHandle.new() as h:
        key = h.ns_id
        sock = nslib.socket_in(h, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert inventory(docker=False, nsid=False).get(key) is None
        inv = inventory(docker=False, nsid=False, sockets=True)
        ns = inv.get(key)
        assert ns is not None
        assert [(f.pid, f.fd, f.kind) for f in ns.fds] == [(os.getpid(), sock.fileno(), "socket")]
        assert ns.held_by == ("sockets",)
        no_duplicates(inv)
    finally:
        sock.close()


def test_a_mount_in_another_mount_namespace(tmp_path: Path) -> None:
    # The namespace is bound onto a file inside a private mount namespace whose
    # only process (sleep) is in the host's network namespace.
    target = tmp_path / "pinned"
    target.touch()
    proc = subprocess.Popen(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"unshare --net={target} true && exec sleep 60",
        ]
    )
    try:
        wait_for_exe(proc.pid, "sleep")
        inv = inventory(docker=False, nsid=False)
        found = [ns for ns in inv if any(m.path == str(target) for m in ns.mounts)]
        assert len(found) == 1
        [mount] = [m for m in found[0].mounts if m.path == str(target)]
        assert mount.via_pid == proc.pid
        assert found[0].processes == ()
    finally:
        proc.kill()
        proc.wait()


def test_nsid_of_a_namespace_only_a_mount_namespace_without_processes_holds(
    tmp_path: Path,
) -> None:
    # The network namespace is bound onto a file inside a private mount
    # namespace; once that namespace's only process is gone, only our fd of
    # the mount namespace keeps it (and so the network namespace) alive.  No
    # path of ours opens it: the scan must ask its nsid from inside.
    target = tmp_path / "pinned"
    target.touch()
    proc = subprocess.Popen(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"unshare --net={target} true && exec sleep 60",
        ]
    )
    mnt_fd = -1
    try:
        wait_for_exe(proc.pid, "sleep")
        mnt_fd = os.open(f"/proc/{proc.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        nsid = random.randint(100_000, 2_000_000)
        with nslib.NsHandle.from_path(f"/proc/{proc.pid}/root{target}") as h:
            key = h.ns_id
            set_nsid(h.fileno(), nsid)
    finally:
        proc.kill()
        proc.wait()
    try:
        inv = inventory(docker=False)
        ns = inv.get(key)
        assert ns is not None and [m.via_pid for m in ns.mounts] == [0]
        assert ns.nsid == nsid
        assert [n for n in inv if n.nsid == nsid] == [ns], "the nsid also listed on its own"
        no_duplicates(inv)
    finally:
        os.close(mnt_fd)


def test_scan_survives_churn() -> None:
    # Processes and threads come and go during the scan: never an error.
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            subprocess.run(["unshare", "-n", "true"], check=False)

    threads = [threading.Thread(target=churn) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            inv = inventory(docker=False, sockets=True)
            no_duplicates(inv)
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_json_is_complete(netns: nslib.NsHandle) -> None:
    inv = inventory(docker=False)
    data = json.loads(inv.to_json())
    assert data["run_dir"] == "/run/netns"
    ids = {ns["ns_id"] for ns in data["namespaces"]}
    assert f"{netns.ns_id[0]}:{netns.ns_id[1]}" in ids
    one = data["namespaces"][0]
    for key in ("names", "mounts", "nsid", "processes", "fds", "containers", "held_by", "current"):
        assert key in one


def test_unreachable_docker_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    t0 = time.monotonic()
    inv = inventory()
    assert time.monotonic() - t0 < 10
    assert inv.docker.startswith("not reachable"), inv.docker
    assert inventory(docker=False).docker == "not asked"


@pytest.mark.docker
def test_containers_are_attached_to_their_namespace(
    dockerd: object, docker_client: Any, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    from dockerd import run_container

    c = run_container(docker_client, label=unique)
    try:
        c.reload()
        pid = c.attrs["State"]["Pid"]
        monkeypatch.setenv("DOCKER_HOST", dockerd.base_url)  # type: ignore[attr-defined]
        inv = inventory()
        assert inv.docker == "ok"
        with nslib.NsHandle.from_pid(pid) as h:
            ns = find(inv, h)
        [entry] = [x for x in ns.containers if x.id == c.id]
        assert entry.label == unique
        assert entry.pid == pid
        assert entry.name == c.name
        assert entry.network_mode == "none"
        assert pid in ns.pids
        no_duplicates(inv)
    finally:
        c.remove(force=True)


@pytest.mark.docker
def test_container_labels_agree_with_the_tracker(
    dockerd: Any, docker_client: Any, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    """`nslib ls` and `nslib ms ls` must name the same microservice for every container."""
    from dockerd import TEST_IMAGE, TEST_LABEL, run_container

    key = "org.nslib.test.ms"
    # The env var wins over the docker label, as in the tracker.
    both = run_container(docker_client, label=f"{unique}-e", labels={key: f"{unique}-l"})
    # An empty value is no label (and does not hide the docker label).
    empty = run_container(docker_client, env={"MICROSERVICE_LABEL": ""}, labels={key: unique})
    # Duplicate entries: the last one wins, as in the container's process.
    dup = docker_client.api.create_container(
        TEST_IMAGE,
        environment=[f"MICROSERVICE_LABEL={unique}-1", f"MICROSERVICE_LABEL={unique}-2"],
        labels={TEST_LABEL: str(os.getpid())},
        host_config=docker_client.api.create_host_config(network_mode="none"),
    )["Id"]
    docker_client.api.start(dup)
    monkeypatch.setenv("DOCKER_HOST", dockerd.base_url)
    inv = inventory(label_key=key, nsid=False)
    assert inv.docker == "ok"
    listed = {c.id: c.label for ns in inv for c in ns.containers}
    with nslib.MicroserviceTracker(docker_client, label_key=key) as t:
        assert t.wait_in_sync(15), t.health()
        tracked = {ms.container_id: label for label, ms in t.snapshot().items()}
    assert listed[both.id] == tracked[both.id] == f"{unique}-e"
    assert listed[empty.id] == tracked[empty.id] == unique
    assert listed[dup] == tracked[dup] == f"{unique}-2"


def test_the_calling_threads_mount_namespace_is_the_one_read(tmp_path: Path) -> None:
    """Mount namespaces are per thread: a mount only the calling thread's mount
    namespace has must be listed as the caller's own (``via_pid`` None)."""
    from nslib import _syscalls as sys_

    clone_newns = 0x00020000
    target = tmp_path / "pinned here"  # a space: mountinfo escapes it
    target.touch()
    out: list[Any] = []

    def in_private_mount_ns() -> None:
        try:
            sys_.unshare(clone_newns, "unshare the mount namespace")
            # Nothing this thread mounts may propagate back to the host.
            sys_.mount(b"none", b"/", b"", sys_.MS_REC | sys_.MS_PRIVATE, "make / private")
            with nslib.NsHandle.new() as h:
                src = b"/proc/thread-self/fd/%d" % h.fileno()
                sys_.mount(src, os.fsencode(target), b"", sys_.MS_BIND, "bind")
                key = h.ns_id
            out.append((key, inventory(docker=False, nsid=False)))
        except BaseException as e:
            out.append(e)

    # The thread ends with its mount namespace, and the bind mount goes with it.
    t = threading.Thread(target=in_private_mount_ns)
    t.start()
    t.join(30)
    [result] = out
    assert not isinstance(result, BaseException), result
    key, inv = result
    ns = inv.get(key)
    assert ns is not None, "the mount in the calling thread's mount namespace was missed"
    assert [(m.path, m.via_pid) for m in ns.mounts] == [(str(target), None)]
    assert ns.held_by == ("mounts",)


@contextlib.contextmanager
def slow_link_to(upstream: str, delay: float, directory: Path) -> Iterator[str]:
    """A unix socket in front of the daemon at *upstream* that delays every
    request by *delay* seconds (a slow or overloaded daemon); yields its URL."""
    path = str(directory / "slow.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    socks: list[socket.socket] = [server]
    threads: list[threading.Thread] = []

    def pipe(src: socket.socket, dst: socket.socket, slow: bool) -> None:
        try:
            while data := src.recv(65536):
                if slow:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # closed: the test is over
            daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            daemon.connect(upstream)
            socks.extend((client, daemon))
            for args in ((client, daemon, True), (daemon, client, False)):
                t = threading.Thread(target=pipe, args=args, daemon=True)
                t.start()
                threads.append(t)

    acceptor = threading.Thread(target=serve, daemon=True)
    acceptor.start()
    try:
        yield f"unix://{path}"
    finally:
        server.shutdown(socket.SHUT_RDWR)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        acceptor.join(5)
        for t in threads:
            t.join(5)
        for s in socks:
            s.close()


@pytest.mark.docker
def test_a_slow_daemon_costs_at_most_docker_timeout(
    dockerd: Any, docker_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, unique: str
) -> None:
    """docker_timeout bounds the whole docker part, not each of its requests."""
    from dockerd import run_container

    ids = [run_container(docker_client, label=f"{unique}-{i}").id for i in range(6)]
    with slow_link_to(dockerd.socket_path, 0.3, tmp_path) as url:
        monkeypatch.setenv("DOCKER_HOST", url)
        t0 = time.monotonic()
        inv = inventory(docker_timeout=1.0, nsid=False)
        took = time.monotonic() - t0
    # Per request, this is 0.3 s for the version check, 0.3 s for the list
    # and 0.3 s for each of the 6 inspects: 2.4 s and more.
    assert took < 1.8, f"{took:.2f} s for docker_timeout=1.0; docker: {inv.docker}"
    assert inv.docker.startswith("too slow:"), inv.docker
    shown = {c.id for ns in inv for c in ns.containers}
    assert not set(ids) <= shown  # cut short: what was inspected in time is shown


# -- holders that an older scan missed ------------------------------------------


@contextlib.contextmanager
def _holder(code: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A python process running *code*, once it printed ``ready``; killed on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready", "the holder process did not start"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_an_fd_opened_through_a_deleted_name_is_a_holder(run_dir: str, unique: str) -> None:
    # `ip netns add x`, another process opens /run/netns/x, `ip netns del x`:
    # that fd alone keeps the namespace alive, and its /proc link reads "/"
    # (the detached mount), not "net:[...]".
    with named.create(unique, run_dir=run_dir) as h:
        key = h.ns_id
    code = (
        "import os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); print('ready', flush=True);"
        " time.sleep(60)"
    )
    with _holder(code, os.path.join(run_dir, unique)) as proc:
        named.delete(unique, run_dir=run_dir)
        inv = inventory(run_dir=run_dir, docker=False)
        ns = inv.get(key)
        assert ns is not None, "a namespace held only by an fd of another process is missing"
        assert [(f.pid, f.kind) for f in ns.fds] == [(proc.pid, "ns")]
        assert ns.held_by == ("fds",)
        data = json.loads(inv.to_json())
        assert f"{key[0]}:{key[1]}" in {n["ns_id"] for n in data["namespaces"]}


def test_a_mount_in_a_mount_namespace_no_process_is_in(tmp_path: Path, unique: str) -> None:
    # The network namespace is bound in a mount namespace that only a bind
    # mount of its nsfs file keeps alive (`unshare --mount=FILE`): no
    # /proc/<pid>/mountinfo shows it.  `lsns` misses a namespace held only by
    # a mount in another mount namespace, even when a process is in that one.
    holder = tmp_path / "mnt-holder"
    holder.mkdir()
    subprocess.run(["mount", "--bind", str(holder), str(holder)], check=True)
    try:
        subprocess.run(["mount", "--make-private", str(holder)], check=True)
        (holder / "mnt").touch()
        target = tmp_path / "net-here"
        target.touch()
        subprocess.run(
            [
                "unshare",
                f"--mount={holder}/mnt",
                "--propagation",
                "private",
                "unshare",
                f"--net={target}",
                "true",
            ],
            check=True,
        )
        inv = inventory(docker=False)
        found = [ns for ns in inv if any(m.path == str(target) for m in ns.mounts)]
        assert len(found) == 1, "a mount in a mount namespace without processes was missed"
        [mount] = found[0].mounts
        mnt_ino = os.stat(holder / "mnt").st_ino
        assert (mount.via_pid, mount.mnt_ns) == (0, mnt_ino)
        assert found[0].held_by == ("mounts",)
    finally:
        subprocess.run(["umount", "-R", "-l", str(holder)], check=False)


def test_a_mount_in_another_processes_thread_mount_namespace(tmp_path: Path) -> None:
    # Mount namespaces are per thread: a worker thread of another process
    # unshares its filesystem context and mount namespace and binds a
    # namespace there; its main thread stays in the host's mount namespace.
    target = tmp_path / "thread-mount"
    target.touch()
    code = (
        "import os, sys, threading, time, ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def work():\n"
        "    assert libc.unshare(0x200 | 0x20000) == 0, ctypes.get_errno()\n"
        "    assert libc.mount(b'none', b'/', None, 0x4000 | 0x40000, None) == 0\n"
        "    fd = os.open('/proc/self/ns/net', os.O_RDONLY)\n"
        "    assert libc.unshare(0x40000000) == 0\n"
        "    src = b'/proc/thread-self/ns/net'\n"
        "    assert libc.mount(src, sys.argv[1].encode(), None, 4096, None) == 0\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "threading.Thread(target=work, daemon=True).start()\n"
        "time.sleep(60)\n"
    )
    with _holder(code, str(target)) as proc:
        inv = inventory(docker=False, nsid=False)
        found = [ns for ns in inv if any(m.path == str(target) for m in ns.mounts)]
        assert len(found) == 1, "a mount in a thread's own mount namespace was missed"
        [mount] = [m for m in found[0].mounts if m.path == str(target)]
        assert mount.via_pid == proc.pid


def test_a_namespace_known_only_by_its_nsid(unique: str) -> None:
    # Its only holder is a process the scan cannot see (here hidden by an
    # empty tmpfs over /proc/PID, in a private mount namespace): the nsid,
    # which dies with the namespace, still says it is alive.
    code = (
        "import json, os, subprocess, sys\n"
        "from nslib.inventory import inventory\n"
        "pid = sys.argv[1]\n"
        "subprocess.run(['mount', '-t', 'tmpfs', 'none', f'/proc/{pid}'], check=True)\n"
        "print(inventory(docker=False).to_json())\n"
    )
    proc = subprocess.Popen(["unshare", "-n", "sleep", "60"])
    try:
        wait_for_exe(proc.pid, "sleep")
        with nslib.NsHandle.from_pid(proc.pid) as h:
            nsid = random.randint(100_000, 2_000_000)
            set_nsid(h.fileno(), nsid)
        out = subprocess.run(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                sys.executable,
                "-c",
                code,
                str(proc.pid),
            ],
            check=True,
            capture_output=True,
        )
        data = json.loads(out.stdout)
        rows = [n for n in data["namespaces"] if n["nsid"] == nsid]
        assert len(rows) == 1, "a namespace with an nsid but no visible holder is missing"
        assert rows[0]["held_by"] == ["nsid"]
        assert rows[0]["ino"] == 0
    finally:
        proc.kill()
        proc.wait()
