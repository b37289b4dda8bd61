"""Self-tests of the private dockerd harness in tests/dockerd.py."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import dockerd
import pytest
from dockerd import (
    MICROSERVICE_ENV,
    TEST_IMAGE,
    PrivateDockerd,
    ensure_test_image,
    mounts_under,
    proc_alive,
    processes_mentioning,
    remove_test_containers,
    run_container,
    unique_name,
)
from helpers import docker_client_of, missing

pytestmark = pytest.mark.docker

SYSTEM_SOCKET = "/var/run/docker.sock"


_unavailable = missing  # skip locally, fail under CI=true


@pytest.fixture(scope="module")
def pd() -> Iterator[PrivateDockerd]:
    if os.geteuid() != 0:
        _unavailable("needs root")
    if shutil.which("dockerd", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
        _unavailable("dockerd not installed (run scripts/host-setup.sh)")
    with PrivateDockerd() as d:  # start() on entry, stop() on exit
        yield d


@pytest.fixture
def client(pd: PrivateDockerd) -> Iterator[docker.DockerClient]:
    """A client of this module's own daemon (not the session's ``docker_client``)."""
    with docker_client_of(pd) as c:
        yield c


@pytest.fixture
def system_client() -> Iterator[docker.DockerClient]:
    """Client of the host's own daemon, which must not notice the private one."""
    c = docker.DockerClient(base_url="unix://" + SYSTEM_SOCKET, version="1.41")
    try:
        try:
            c.ping()
        except Exception:
            _unavailable("system dockerd not running (run scripts/host-setup.sh)")
        ensure_test_image(c)
        yield c
    finally:
        remove_test_containers(c)
        c.close()


def _netns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def test_private_daemon_is_separate(
    pd: PrivateDockerd, client: docker.DockerClient, system_client: docker.DockerClient
) -> None:
    mine, theirs = client.info(), system_client.info()
    # Not info()["ID"]: dockerd 20.10 derives it from /etc/docker/key.json, shared by
    # every daemon on the host (newer engines keep it in the data root).
    assert pd.root is not None
    assert Path(mine["DockerRootDir"]).is_relative_to(pd.root)
    assert mine["DockerRootDir"] != theirs["DockerRootDir"]
    assert mine["CgroupDriver"] == "cgroupfs"
    assert mine["LiveRestoreEnabled"] is False
    # Its default bridge network sits on a bridge of its own, not on docker0 ...
    bridge = client.networks.get("bridge")
    assert bridge.attrs["Options"]["com.docker.network.bridge.name"] == pd.bridge_name
    # ... and the host's docker0 survived (dockerd --bridge=none would delete it).
    sys_bridge = system_client.networks.get("bridge").attrs["Options"]
    assert Path("/sys/class/net", sys_bridge["com.docker.network.bridge.name"]).exists()
    # Containers on one daemon are invisible to the other ...
    c = run_container(client)
    bystander = run_container(system_client, name=unique_name("sys"))
    assert c.id not in {x.id for x in system_client.containers.list(all=True)}
    assert bystander.id not in {x.id for x in client.containers.list(all=True)}
    # ... and restarting the private daemon leaves the host's containers alone.
    before = bystander.attrs["State"]
    pd.restart()
    bystander.reload()
    after = bystander.attrs["State"]
    assert after["Running"]
    assert (after["Pid"], after["StartedAt"]) == (before["Pid"], before["StartedAt"])


def test_image_runs(pd: PrivateDockerd, client: docker.DockerClient) -> None:
    out = pd.docker_cli(
        "run",
        "--rm",
        "--network",
        "none",
        TEST_IMAGE,
        "sh",
        "-c",
        "ip -o link show lo && ping -c1 -W1 127.0.0.1 >/dev/null && echo ok",
    ).stdout
    assert "lo:" in out and out.rstrip().endswith("ok")

    c = run_container(client, label="ms1", env={"OTHER": "x"})
    state, config = c.attrs["State"], c.attrs["Config"]
    assert state["Running"] and state["Pid"] > 0
    assert f"{MICROSERVICE_ENV}=ms1" in config["Env"]
    assert c.attrs["HostConfig"]["NetworkMode"] == "none"
    assert c.name.startswith(f"nslibt-{os.getpid()}-")
    # Own netns, and the container sits below the private daemon's cgroup parent.
    assert _netns(state["Pid"]) != _netns(os.getpid())
    cgroup = Path(f"/proc/{state['Pid']}/cgroup").read_text(errors="surrogateescape")
    assert f"{pd.cgroup_parent}/{c.id}" in cgroup
    assert pd.docker_cli("exec", c.id, "cat", "/proc/1/cmdline").stdout == "/bin/sleep\x003600\x00"


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "sigkill"])
def test_restart_policy_survives_restart(
    pd: PrivateDockerd, client: docker.DockerClient, crash: bool
) -> None:
    always = run_container(client, label="ms-always", restart="always")
    plain = run_container(client, label="ms-plain")
    old_pid, old_dockerd, ctr_pid = always.attrs["State"]["Pid"], pd.pid, pd.containerd_pid

    pd.restart(crash=crash)

    assert pd.pid != old_dockerd
    assert pd.containerd_pid == ctr_pid  # containerd lives on, like containerd.service
    always.reload()  # the old client object keeps working
    plain.reload()
    assert always.attrs["State"]["Running"]
    assert always.attrs["State"]["Pid"] not in (0, old_pid)
    assert _netns(always.attrs["State"]["Pid"]) != _netns(os.getpid())
    assert not plain.attrs["State"]["Running"]
    assert plain.attrs["State"]["ExitCode"] == 137


def test_stop_leaves_nothing(pd: PrivateDockerd) -> None:
    # A second private daemon next to the module's one (and the system daemon).
    had_docker0 = Path("/sys/class/net/docker0").exists()
    d = PrivateDockerd()
    d.start()
    root, cgroup_parent, bridge = d.root, d.cgroup_parent, d.bridge_name
    assert root is not None and root != pd.root
    daemons = (d.pid, d.containerd_pid)
    c = d.client()
    try:
        ids = [
            run_container(c, restart="always", network="bridge").id,
            run_container(c, command=["sh", "-c", "trap '' TERM; sleep 3600"]).id,
        ]
        assert mounts_under(root)  # overlay rootfs, netns bind mounts, ...
        shims = set(processes_mentioning(f"{root}/")) - set(daemons)
        assert len(shims) == 2
    finally:
        c.close()
        d.stop()
    assert d.root is None
    assert mounts_under(root) == []
    assert processes_mentioning(f"{root}/") == []
    # (zombies count as gone: on the firecracker VM, PID 1 does not reap orphans)
    assert not any(proc_alive(pid) for pid in (*daemons, *shims))
    assert not root.exists()
    assert not Path("/sys/class/net", bridge).exists()
    assert Path("/sys/class/net/docker0").exists() == had_docker0
    name = cgroup_parent.lstrip("/")
    assert not [*Path("/sys/fs/cgroup").glob(name), *Path("/sys/fs/cgroup").glob(f"*/{name}")]
    # containerd shims put their sockets outside the root, named by this hash.
    ctr_sock = f"{root}/containerd/containerd.sock"
    for cid in ids:
        key = hashlib.sha256(f"{ctr_sock}/moby/{cid}".encode()).hexdigest()
        assert not Path("/run/containerd/s", key).exists()
    # The module's daemon is unaffected.
    pc = pd.client()
    try:
        assert pc.ping()
    finally:
        pc.close()


@contextlib.contextmanager
def _tmpfs_at(path: bytes) -> Iterator[bytes]:
    """A tmpfs mounted on *path* (created), detached and removed afterwards."""
    os.makedirs(path, exist_ok=True)
    subprocess.run([b"mount", b"-t", b"tmpfs", b"nslibt-odd", path], check=True)
    try:
        yield path
    finally:
        subprocess.run([b"umount", b"-l", path], check=False, capture_output=True)
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _assert_gone(root: Path, bridge: str, cgroup_parent: str) -> None:
    assert mounts_under(root) == []
    assert processes_mentioning(f"{root}/") == []
    assert not root.exists()
    assert not Path("/sys/class/net", bridge).exists()
    name = cgroup_parent.lstrip("/")
    assert not [*Path("/sys/fs/cgroup").glob(name), *Path("/sys/fs/cgroup").glob(f"*/{name}")]


ODD = b"nslibt-\xff\xfe odd\nname\\"  # not UTF-8, and every byte mountinfo escapes


def test_stop_with_non_utf8_mounts_leaves_nothing(pd: PrivateDockerd) -> None:
    """A host mount on a non-UTF-8 path, and one inside the root, do not break stop()."""
    base = os.fsencode(tempfile.mkdtemp(prefix="nslibt-odd-"))
    try:
        with _tmpfs_at(os.path.join(base, ODD)):
            d = PrivateDockerd()
            d.start()
            root, cgroup_parent, bridge = d.root, d.cgroup_parent, d.bridge_name
            assert root is not None
            c = d.client()
            try:
                run_container(c, network="bridge")
                inner = os.path.join(os.fsencode(root), ODD)
                os.makedirs(inner)
                subprocess.run([b"mount", b"-t", b"tmpfs", b"nslibt-odd", inner], check=True)
                assert os.fsdecode(inner) in mounts_under(root)
            finally:
                c.close()
                d.stop()
            _assert_gone(root, bridge, cgroup_parent)
    finally:
        os.rmdir(base)


def test_stop_runs_every_cleanup_step(pd: PrivateDockerd, monkeypatch: pytest.MonkeyPatch) -> None:
    """One cleanup step failing does not skip the others; stop() reports it."""
    d = PrivateDockerd(image=None)
    d.start()
    root, cgroup_parent, bridge = d.root, d.cgroup_parent, d.bridge_name
    assert root is not None
    real = dockerd._remove_cgroups

    def broken(name: str) -> list[str]:
        raise OSError(errno.EIO, "injected cgroup failure")

    monkeypatch.setattr(dockerd, "_remove_cgroups", broken)
    try:
        with pytest.raises(RuntimeError, match=r"removing cgroups failed.*injected"):
            d.stop()
        assert d.root is None
        # The steps after the failing one ran anyway.
        assert not root.exists() and not Path("/sys/class/net", bridge).exists()
        assert mounts_under(root) == []
    finally:
        monkeypatch.undo()
        real(cgroup_parent.lstrip("/"))
    _assert_gone(root, bridge, cgroup_parent)
