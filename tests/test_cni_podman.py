"""CNI interop with podman 4's CNI backend (libcni): the example plugin, the result cache.

Podman's CNI backend keeps its result cache in ``/var/lib/cni`` and its
state in ``/run`` whatever it is told, so every podman command runs inside
one private mount namespace (``unshare -m --propagation private``, entered
with ``nsenter -m``) where a tmpfs covers ``/run``, ``/var/lib/containers``
and ``/var/tmp`` and a temporary directory is bound over ``/var/lib/cni``.
The host's own directories are never written; the test checks that.

The network is the example plugin ``nslib-veth`` with ``host-local`` (its
store in a temporary directory both sides see), so podman adds no bridge
and no firewall rules.  Shown here:

* podman runs the Python example plugin: the container gets its address;
* nslib reads the cache file podman's libcni wrote, and deletes (DEL) that
  attachment with the container still running;
* nslib adds it again, writing the cache file, and podman's own teardown
  (``podman rm``) deletes it through that file.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import missing

import nslib
from nslib.cni import Runtime, plugin

pytestmark = [pytest.mark.root, pytest.mark.docker]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cni" / "nslib-veth"
PLUGIN_DIR = "/usr/lib/cni"
IMAGE = "nslib-busybox:test"
NETWORK = "nsltpod"
# What podman's CNI backend writes on the host unless it is kept in a mount namespace.
HOST_PATHS = ("/var/lib/cni", "/var/lib/containers", "/run/libpod", "/run/containers")


def _tree(path: str) -> dict[str, tuple[int, int]]:
    """Every entry under *path* with its mode and mtime (what a write would change)."""
    out: dict[str, tuple[int, int]] = {}
    if not os.path.lexists(path):
        return out
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            st = os.lstat(name)
            out[name] = (st.st_mode, st.st_mtime_ns)
    return out


def _host_state() -> tuple[object, ...]:
    """What this test could change on the host (others' tests run at the same time)."""
    import socket

    chains = []
    for table in ("filter", "nat"):
        out = subprocess.run(
            ["iptables", "-t", table, "-S"], capture_output=True, text=True, check=False
        ).stdout
        chains += [line for line in out.splitlines() if "CNI" in line]
    netns = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    return (
        {p: _tree(p) for p in HOST_PATHS},
        chains,
        sorted(n for _, n in socket.if_nameindex() if n.startswith(("nsp", "cni-"))),
        sorted(n for n in netns if n.startswith(("netns-", "cni-"))),
    )


@dataclass
class Podman:
    """Rootful podman with the CNI backend, all of its state private (see the module doc)."""

    base: Path
    holder: subprocess.Popen[bytes]
    subnet: str

    @property
    def cache_dir(self) -> str:
        return str(self.base / "cni")  # /var/lib/cni inside podman's mount namespace

    @property
    def ipam_dir(self) -> Path:
        return self.base / "ipam"

    def run(self, *args: str, check: bool = True, stdin: Any = None) -> str:
        argv = [
            "nsenter",
            "-t",
            str(self.holder.pid),
            "-m",
            "--",
            shutil.which("podman") or "podman",
            f"--root={self.base / 'storage'}",
            f"--runroot={self.base / 'runroot'}",
            f"--tmpdir={self.base / 'tmp'}",
            "--cgroup-manager=cgroupfs",
            "--events-backend=file",
            *args,
        ]
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CONTAINERS_CONF": str(self.base / "containers.conf"),
        }
        p = subprocess.run(
            argv, stdin=stdin, capture_output=True, env=env, check=False, timeout=120
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} failed ({p.returncode}): {p.stderr.decode()}"
            )
        return p.stdout.decode(errors="backslashreplace")

    def reserved(self) -> set[str]:
        d = self.ipam_dir / NETWORK
        return {f for f in os.listdir(d) if f[0].isdigit()} if d.exists() else set()


def _plugin_dir(base: Path) -> Path:
    d = base / "plugins"
    d.mkdir()
    plugin.install(EXAMPLE, d)  # what a user would do (lean start-up, this Python)
    return d


@pytest.fixture
def podman(dockerd, unique: str) -> Iterator[Podman]:
    for tool in ("podman", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            missing(f"needs {tool} (podman 4 with its CNI backend)")
    for n in ("host-local",):
        if not os.access(os.path.join(PLUGIN_DIR, n), os.X_OK):
            missing(f"needs the CNI reference plugins in {PLUGIN_DIR}")
    before = _host_state()
    base = Path(tempfile.mkdtemp(prefix=f"{unique}-podcni-"))
    for d in ("storage", "runroot", "tmp", "net", "cni", "ipam"):
        (base / d).mkdir()
    plugins = _plugin_dir(base)
    rnd = random.Random(unique)
    subnet = f"10.{rnd.randint(231, 250)}.{rnd.randint(0, 255)}.0/24"
    (base / "containers.conf").write_text(
        "[containers]\n"
        "default_ulimits = []\n"
        "[engine]\n"
        'events_logger = "file"\n'
        f'events_logfile_path = "{base}/events.log"\n'
        'cgroup_manager = "cgroupfs"\n'
        f'tmp_dir = "{base}/tmp"\n'
        f'image_copy_tmp_dir = "{base}/tmp"\n'
        "[network]\n"
        'network_backend = "cni"\n'
        f'network_config_dir = "{base}/net"\n'
        f'cni_plugin_dirs = ["{plugins}", "{PLUGIN_DIR}"]\n'
    )
    conflist = {
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": "nslib-veth",
                "hostInterfacePrefix": "nsp",
                "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(base / "ipam")},
            }
        ],
    }
    (base / "net" / f"{NETWORK}.conflist").write_text(json.dumps(conflist))
    script = (
        "set -e; mount -t tmpfs nslibt /run; mount -t tmpfs nslibt /var/lib/containers; "
        f"mount -t tmpfs nslibt /var/tmp; mount --bind '{base}/cni' /var/lib/cni; "
        "echo ready; exec sleep infinity"
    )
    holder = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "--", "sh", "-c", script],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    pm = Podman(base, holder, subnet)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        if pm.run("info", "--format", "{{.Host.NetworkBackend}}").strip() != "cni":
            missing("needs podman with the CNI network backend (podman 4)")
        save = subprocess.Popen(
            ["docker", "-H", dockerd.base_url, "save", IMAGE], stdout=subprocess.PIPE
        )
        assert save.stdout is not None
        pm.run("load", stdin=save.stdout)
        save.stdout.close()
        assert save.wait(60) == 0
        yield pm
    finally:
        with contextlib.suppress(Exception):
            pm.run("rm", "-af", "-t", "0", check=False)
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
        # conmon and friends lived in the mount namespace; wait until nothing does.
        deadline = time.monotonic() + 10
        while _mentioning(str(base)) and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(base, ignore_errors=True)
        after = _host_state()
        assert after == before, "podman left something behind on the host"


def _mentioning(text: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(int(pid))
    return pids


def _host_links() -> list[str]:
    return nslib.netlink.list_links(None)


def _inside(pm: Podman, name: str) -> str:
    return pm.run("exec", name, "ip", "-4", "addr", "show", "eth0", check=False)


def _ping(ip: str) -> bool:
    busybox = shutil.which("busybox") or "/bin/busybox"
    argv = [busybox, "ping", "-c", "1", "-W", "2", ip]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def test_podman_runs_the_example_and_shares_the_cache_with_nslib(
    podman: Podman, unique: str
) -> None:
    name = f"{unique}-c"
    cid = podman.run("run", "-d", "--name", name, "--network", NETWORK, IMAGE).strip()
    pid = int(podman.run("inspect", "--format", "{{.State.Pid}}", name))
    rt = Runtime([str(podman.base / "plugins"), PLUGIN_DIR], podman.cache_dir)

    # (a) podman ran the Python plugin: the container has its address, the host reaches it.
    [ip] = podman.reserved()
    assert f"inet {ip} peer " in _inside(podman, name)
    assert _ping(ip)

    # (b) nslib reads the cache file podman's libcni wrote.
    [att] = rt.attachments()
    assert (att.network, att.container_id, att.ifname) == (NETWORK, cid, "eth0")
    assert ("K8S_POD_NAME", name) in att.cni_args  # podman's CNI_ARGS, kept for DEL
    assert att.result is not None and att.result.ips[0].address == f"{ip}/24"
    assert att.network_config().plugins[0].type == "nslib-veth"
    host_end = att.result.interfaces[0].name
    assert host_end in _host_links()

    # nslib CHECKs and DELs podman's attachment, the container still running.
    nl = att.network_config()
    ns = f"pid:{pid}"
    kw = {"args": att.cni_args, "capability_args": att.capability_args}
    rt.check(nl, cid, ns, **kw)
    rt.delete(nl, cid, ns, **kw)
    assert "eth0" not in podman.run("exec", name, "ip", "link")
    assert podman.reserved() == set() and rt.attachments() == []
    assert host_end not in _host_links()

    # nslib adds it back (its cache file in libcni's format), and podman's own
    # teardown deletes it through that file.
    again = rt.add(nl, cid, ns, **kw)
    ip2 = again.ips[0].address.split("/")[0]
    assert f"inet {ip2} peer " in _inside(podman, name)
    assert podman.reserved() == {ip2} and len(rt.attachments()) == 1
    podman.run("rm", "-f", "-t", "0", name)
    assert podman.reserved() == set()
    assert rt.attachments() == []  # libcni read our file and removed it after its DEL
    assert host_end not in _host_links()
