"""Docker side of nslib's test infrastructure.

* ``build_test_image`` / ``ensure_test_image``: the FROM-scratch busybox test image
  (``tests/image/Dockerfile``); the build context is assembled in a temp dir from the
  host's static busybox, so nothing binary lives in the repository.
* ``PrivateDockerd``: a dedicated dockerd + containerd pair for the test suite, with its
  own data/exec roots, socket, cgroup parent and no host networking side effects, so tests
  may restart or crash it without touching anybody else's containers.
* ``run_container`` / ``unique_name`` / ``remove_test_containers``: small helpers that
  create test containers with a 1 s stop timeout (a PID 1 ``sleep`` ignores SIGTERM).

Command line (used by scripts/host-setup.sh)::

    python3 tests/dockerd.py build-image [--tag TAG] [--force] [--host URL]
    python3 tests/dockerd.py cleanup-stale
    python3 tests/dockerd.py serve        # private daemon until Ctrl-C, for debugging

Everything here needs root (dockerd does).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import errno
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import docker
import docker.errors
from docker.models.containers import Container
from docker.models.images import Image

TEST_IMAGE = "nslib-busybox:test"
"""Tag of the test image (FROM scratch + static busybox, CMD sleep 3600)."""

IMAGE_DIR = Path(__file__).resolve().parent / "image"
"""Directory holding the test image's Dockerfile."""

IMAGE_HASH_LABEL = "org.nslib.test-image.hash"
"""Image label holding a hash of the build inputs; a mismatch triggers a rebuild."""

TEST_LABEL = "org.nslib.test"
"""Docker label put on every container made by ``run_container`` (value: creator PID)."""

MICROSERVICE_ENV = "MICROSERVICE_LABEL"
"""Env var that marks a container as a microservice (as in Ligato vpp-agent)."""

NAME_PREFIX = f"nslibt-{os.getpid()}"
"""Prefix of container names made by ``unique_name``: unique per test process."""

REQUIRED_APPLETS = ("sh", "sleep", "ip", "cat", "ls", "ping", "true", "env")
"""Busybox applets the tests rely on; the image build fails without them."""

ROOT_PREFIX = "nslibt-d-"
"""Temp dir prefix of private daemons: ``nslibt-d-<owner pid>-<random>``."""

_SBIN_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
_SHIM_SOCKET_DIR = Path("/run/containerd/s")  # hard-coded in containerd 1.6/1.7 shims
_MNT_DETACH = 2
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL

_name_counter = itertools.count(1)


# --------------------------------------------------------------------------- image


def _is_static_elf(path: Path) -> bool:
    """Return True if ``path`` is an ELF executable without a PT_INTERP header.

    A dynamically linked busybox (Debian package ``busybox``) would fail in a
    FROM-scratch image with a confusing "no such file or directory".
    """
    try:
        with path.open("rb") as f:
            ident = f.read(64)
            if len(ident) < 64 or ident[:4] != b"\x7fELF":
                return False
            endian = "<" if ident[5] == 1 else ">"
            if ident[4] == 2:  # ELFCLASS64
                (phoff,) = struct.unpack_from(endian + "Q", ident, 0x20)
                phentsize, phnum = struct.unpack_from(endian + "HH", ident, 0x36)
            else:  # ELFCLASS32
                (phoff,) = struct.unpack_from(endian + "I", ident, 0x1C)
                phentsize, phnum = struct.unpack_from(endian + "HH", ident, 0x2A)
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                (p_type,) = struct.unpack(endian + "I", f.read(4))
                if p_type == 3:  # PT_INTERP
                    return False
            return True
    except OSError:
        return False


def find_static_busybox() -> Path:
    """Locate a statically linked busybox (``$NSLIB_BUSYBOX``, then the usual paths)."""
    candidates = [
        os.environ.get("NSLIB_BUSYBOX"),
        "/bin/busybox",
        "/usr/bin/busybox",
        shutil.which("busybox"),
    ]
    for cand in candidates:
        if cand and Path(cand).is_file() and _is_static_elf(Path(cand)):
            return Path(cand).resolve()
    raise RuntimeError(
        "no statically linked busybox found: install busybox-static "
        "(apt-get install busybox-static) or set NSLIB_BUSYBOX"
    )


def _applets(busybox: Path) -> list[str]:
    """List the applets compiled into ``busybox``; check the required ones are there."""
    out = subprocess.run(
        [str(busybox), "--list"], check=True, capture_output=True, text=True
    ).stdout
    names = sorted({n for n in out.split() if n and "/" not in n and n != "busybox"})
    missing = [a for a in REQUIRED_APPLETS if a not in names]
    if missing:
        raise RuntimeError(f"{busybox} lacks required applets: {', '.join(missing)}")
    return names


_PASSWD = "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def _image_inputs() -> tuple[Path, list[str], bytes, str]:
    """Return (busybox path, applets, Dockerfile bytes, hash of all build inputs)."""
    busybox = find_static_busybox()
    applets = _applets(busybox)
    dockerfile = (IMAGE_DIR / "Dockerfile").read_bytes()
    h = hashlib.sha256()
    for part in (
        dockerfile,
        busybox.read_bytes(),
        "\n".join(applets).encode(),
        _PASSWD.encode(),
        _GROUP.encode(),
    ):
        h.update(hashlib.sha256(part).digest())
    return busybox, applets, dockerfile, h.hexdigest()[:16]


def build_test_image(client: docker.DockerClient, tag: str = TEST_IMAGE) -> Image:
    """Build the test image into the daemon behind ``client`` and return it.

    The context (Dockerfile + ``rootfs/``) is assembled in a temp dir: the static
    busybox, one symlink per applet in /bin, a world-writable /tmp and a minimal
    /etc/passwd and /etc/group. No network access is needed; it takes about a second.
    """
    busybox, applets, dockerfile, digest = _image_inputs()
    with tempfile.TemporaryDirectory(prefix="nslibt-img-") as tmp:
        ctx = Path(tmp)
        (ctx / "Dockerfile").write_bytes(dockerfile)
        rootfs = ctx / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy2(busybox, rootfs / "bin" / "busybox")
        for name in applets:
            (rootfs / "bin" / name).symlink_to("busybox")
        (rootfs / "tmp").mkdir()
        (rootfs / "tmp").chmod(0o1777)  # COPY keeps the mode bits of the context
        (rootfs / "etc").mkdir()
        (rootfs / "etc" / "passwd").write_text(_PASSWD)
        (rootfs / "etc" / "group").write_text(_GROUP)
        image, _logs = client.images.build(
            path=tmp,
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            labels={IMAGE_HASH_LABEL: digest},
            use_config_proxy=False,
        )
    return image


def ensure_test_image(
    client: docker.DockerClient, tag: str = TEST_IMAGE, *, force: bool = False
) -> tuple[Image, bool]:
    """Return ``(image, built)``: build the test image unless an up-to-date one exists.

    "Up to date" means its ``org.nslib.test-image.hash`` label matches the current
    Dockerfile, busybox binary and applet list.
    """
    if not force:
        digest = _image_inputs()[3]
        try:
            image = client.images.get(tag)
        except docker.errors.ImageNotFound:
            pass
        else:
            if (image.labels or {}).get(IMAGE_HASH_LABEL) == digest:
                return image, False
    return build_test_image(client, tag), True


# --------------------------------------------------------------- container helpers


def unique_name(hint: str = "c") -> str:
    """Return a container name unique to this process: ``nslibt-<pid>-<hint>-<n>``."""
    clean = re.sub(r"[^a-zA-Z0-9_.-]", "-", hint) or "c"
    return f"{NAME_PREFIX}-{clean}-{next(_name_counter)}"


def _restart_policy(restart: str | None) -> dict[str, Any] | None:
    """Translate ``"always"``, ``"unless-stopped"``, ``"on-failure[:N]"`` or ``"no"``."""
    if restart is None or restart == "no":
        return None
    name, _, count = restart.partition(":")
    if name not in ("always", "unless-stopped", "on-failure"):
        raise ValueError(f"unknown restart policy {restart!r}")
    policy: dict[str, Any] = {"Name": name}
    if count:
        if name != "on-failure":
            raise ValueError(f"only on-failure takes a retry count: {restart!r}")
        policy["MaximumRetryCount"] = int(count)
    return policy


def run_container(
    client: docker.DockerClient,
    label: str | None = None,
    name: str | None = None,
    restart: str | None = None,
    env: Mapping[str, str] | None = None,
    command: str | Sequence[str] | None = None,
    network: str = "none",
    *,
    labels: Mapping[str, str] | None = None,
    image: str = TEST_IMAGE,
    stop_timeout: int = 1,
) -> Container:
    """Create and start a detached test container; return it (already inspected).

    Args:
        client: Client of the daemon to use (normally ``PrivateDockerd.client()``).
        label: If given, sets the env var ``MICROSERVICE_LABEL=<label>``.
        name: Container name; default ``unique_name()``.
        restart: Restart policy: ``"always"``, ``"unless-stopped"``,
            ``"on-failure"``, ``"on-failure:N"`` or ``None``/``"no"``.
        env: Extra environment variables.
        command: Command overriding the image's ``/bin/sleep 3600``.
        network: Network mode: ``"none"`` (default: a netns with only ``lo``),
            ``"bridge"``, ``"host"``, ``"container:<id>"`` or a user-created network.
        labels: Docker labels; ``org.nslib.test=<pid>`` is always added so that
            ``remove_test_containers`` finds the container.
        image: Image to run.
        stop_timeout: Seconds between SIGTERM and SIGKILL on stop/daemon shutdown;
            short because the image's PID 1 ``sleep`` ignores SIGTERM.
    """
    environment = dict(env or {})
    if label is not None:
        environment[MICROSERVICE_ENV] = label
    all_labels = {TEST_LABEL: str(os.getpid()), **(labels or {})}
    api = client.api
    # The high-level containers.run() has no stop_timeout, hence the low-level API.
    host_config = api.create_host_config(
        network_mode=network, restart_policy=_restart_policy(restart)
    )
    cid = api.create_container(
        image=image,
        command=command if command is None or isinstance(command, str) else list(command),
        name=name or unique_name(),
        environment=environment,
        labels=all_labels,
        host_config=host_config,
        stop_timeout=stop_timeout,
        detach=True,
    )["Id"]
    try:
        api.start(cid)
    except Exception:
        api.remove_container(cid, force=True)
        raise
    return client.containers.get(cid)


def remove_test_containers(client: docker.DockerClient) -> int:
    """Force-remove every container carrying the ``org.nslib.test`` label; return count."""
    count = 0
    for info in client.api.containers(all=True, filters={"label": TEST_LABEL}):
        try:
            client.api.remove_container(info["Id"], force=True)
            count += 1
        except docker.errors.NotFound:
            pass
    return count


# ---------------------------------------------------------- host inspection helpers


def _mounts() -> list[tuple[bytes, bytes]]:
    """``(mount point, fs type)`` of every mount, as bytes (nslib's shared parser).

    Bytes because another program may have mounted something on a path that is
    not UTF-8; decoding it would make teardown crash and leave everything behind.
    Imported here, not at the top: ``build-image`` runs under a plain python3
    that may not have nslib installed.
    """
    from nslib._procfs import read_mountinfo

    return [(m.mount_point, m.fstype) for m in read_mountinfo("/proc/self/mountinfo")]


def _mount_points_under(root: bytes) -> list[bytes]:
    r = root.rstrip(b"/")
    found = {m for m, _ in _mounts() if m == r or m.startswith(r + b"/")}
    return sorted(found, key=lambda m: (m.count(b"/"), m), reverse=True)


def mounts_under(root: str | os.PathLike[str]) -> list[str]:
    """Mount points at or below ``root`` (per /proc/self/mountinfo), deepest first.

    Undecodable bytes come back as surrogates (``os.fsdecode``), so
    ``os.fsencode`` gives the exact path back.
    """
    return [os.fsdecode(m) for m in _mount_points_under(os.fsencode(root))]


def _umount_all(root: Path) -> list[str]:
    """Lazily unmount everything below ``root``; return what could not be unmounted."""
    libc = ctypes.CDLL(None, use_errno=True)
    top = os.fsencode(root)
    for _ in range(10):  # stacked mounts need several rounds
        mounts = _mount_points_under(top)
        if not mounts:
            return []
        for m in mounts:
            if libc.umount2(m, _MNT_DETACH) != 0:
                err = ctypes.get_errno()
                if err not in (errno.EINVAL, errno.ENOENT):
                    print(f"umount {m!r}: {os.strerror(err)}", file=sys.stderr)
    return mounts_under(root)


def _cgroup_dirs(name: str) -> list[Path]:
    """Existing ``<cgroup mount>/<name>`` directories, one per hierarchy."""
    seen: set[str] = set()
    dirs = []
    for mnt, fstype in _mounts():
        if fstype not in (b"cgroup", b"cgroup2"):
            continue
        d = Path(os.fsdecode(mnt)) / name
        if d.is_dir() and (real := os.path.realpath(d)) not in seen:
            seen.add(real)
            dirs.append(d)
    return dirs


def _cgroup_pids(name: str) -> set[int]:
    """PIDs of all processes in the cgroup subtree ``name`` of any hierarchy."""
    pids: set[int] = set()
    for top in _cgroup_dirs(name):
        for dirpath, _dirs, _files in os.walk(top):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
    return pids


def _remove_cgroups(name: str) -> list[str]:
    """rmdir the cgroup subtree ``name`` bottom-up in every hierarchy; return leftovers."""
    for top in _cgroup_dirs(name):
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            with contextlib.suppress(OSError):  # busy or already gone: reported below
                os.rmdir(dirpath)
    return [str(d) for d in _cgroup_dirs(name)]


def proc_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie.

    Shims are reparented to PID 1, which may not reap them (it does not on the
    firecracker test VM), so zombies must count as dead.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()  # the name may be any bytes
    except OSError:
        return False
    return stat.rpartition(b")")[2].split()[0] != b"Z"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def processes_mentioning(text: str) -> list[int]:
    """Live PIDs (not this process, not zombies) whose command line contains ``text``."""
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            pid = int(entry)
            if any(text in a for a in _cmdline(pid)) and proc_alive(pid):
                pids.append(pid)
    return pids


def _shim_socket(cmdline: list[str]) -> Path | None:
    """Socket path of a containerd-shim-runc-v2 given its command line.

    containerd 1.6/1.7 name it sha256(<containerd address>/<namespace>/<id>) under
    /run/containerd/s whatever the state dir; a killed shim leaves it behind.
    """
    if not cmdline or "containerd-shim" not in os.path.basename(cmdline[0]):
        return None
    opts = dict(zip(cmdline[1::2], cmdline[2::2], strict=False))
    try:
        key = os.path.join(opts["-address"], opts["-namespace"], opts["-id"])
    except KeyError:
        return None
    return _SHIM_SOCKET_DIR / hashlib.sha256(key.encode()).hexdigest()


def _teardown_root(root: Path, cgroup_name: str) -> list[str]:
    """Kill, unmount and delete everything a private daemon left under ``root``.

    Used after a graceful stop (normally nothing is left but the files) and for stale
    roots of crashed test runs. Every step runs even when an earlier one failed (a
    host with strange mounts must not leave a bridge or cgroups behind). Returns a
    list of problems (empty when all is clean).
    """
    problems: list[str] = []

    def step(what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as e:
            problems.append(f"{what} failed: {type(e).__name__}: {e}")

    shim_sockets: set[Path] = set()

    def kill_all() -> None:
        deadline = time.monotonic() + 10
        while True:
            # dockerd, containerd and shims name the root in their argv; container
            # processes are found through the cgroup parent.
            pids = set(processes_mentioning(f"{root}/"))
            with contextlib.suppress(Exception):  # cgroups are checked again below
                pids |= {p for p in _cgroup_pids(cgroup_name) if proc_alive(p)}
            if not pids:
                return
            if time.monotonic() > deadline:
                problems.append(f"processes still alive: {sorted(pids)}")
                return
            for pid in pids:
                if sock := _shim_socket(_cmdline(pid)):
                    shim_sockets.add(sock)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def unlink_shim_sockets() -> None:
        for sock in shim_sockets:
            sock.unlink(missing_ok=True)

    def umount() -> None:
        if left := _umount_all(root):
            problems.append(f"still mounted: {left}")

    def cgroups() -> None:
        if left := _remove_cgroups(cgroup_name):
            problems.append(f"cgroups left: {left}")

    def bridge() -> None:
        if not _delete_link(_bridge_name(root)):
            problems.append(f"could not delete bridge {_bridge_name(root)}")

    def files() -> None:
        if not mounts_under(root):  # never rm -rf through a live mount
            shutil.rmtree(root, ignore_errors=True)
        if root.exists():
            problems.append(f"could not remove {root}")

    step("killing leftover processes", kill_all)
    step("removing shim sockets", unlink_shim_sockets)
    step("unmounting", umount)
    step("removing cgroups", cgroups)
    step("deleting the bridge", bridge)
    step("removing the root", files)
    return problems


def cleanup_stale(base_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Tear down private daemon roots whose owning process is gone; return them.

    A test run that was SIGKILLed cannot clean up; the next ``PrivateDockerd.start()``
    calls this so that leftovers do not pile up.
    """
    base = Path(base_dir or tempfile.gettempdir())
    cleaned = []
    for root in sorted(base.glob(ROOT_PREFIX + "*")):
        m = re.fullmatch(re.escape(ROOT_PREFIX) + r"(\d+)-\w+", root.name)
        if not m or not root.is_dir():
            continue
        owner = int(m.group(1))
        if owner == os.getpid() or proc_alive(owner):
            continue
        problems = _teardown_root(root, root.name)
        if problems:
            print(f"stale {root}: {'; '.join(problems)}", file=sys.stderr)
        cleaned.append(root)
    return cleaned


def _unix_http_get(sock_path: str, url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Minimal HTTP/1.0 GET over a unix socket: ``(status, body)``.

    Used for readiness polling, which would otherwise leave a trail of SDK clients
    and connection errors.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(f"GET {url} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _binary(name: str, package: str = "docker.io") -> str:
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *_SBIN_PATH]))
    if path is None:
        raise RuntimeError(
            f"{name} not found: install {package} (run scripts/host-setup.sh as root)"
        )
    return path


def _bridge_name(root: Path) -> str:
    """Name of a private daemon's bridge: ``nslibt-`` + the 8 random chars of its root
    (IFNAMSIZ allows 15)."""
    return "nslibt-" + root.name[-8:]


def _delete_link(name: str) -> bool:
    """Delete host interface ``name`` if it exists; return False if that failed."""
    if not Path("/sys/class/net", name).exists():
        return True
    subprocess.run([_binary("ip", "iproute2"), "link", "del", name], check=False)
    return not Path("/sys/class/net", name).exists()


def _child_env() -> dict[str, str]:
    """Environment for dockerd/containerd/the CLI.

    Drops variables that would point them at another daemon or make dockerd talk to
    systemd (NOTIFY_SOCKET), and makes sure runc and the shims are on PATH.
    """
    drop = (
        "DOCKER_HOST",
        "DOCKER_CONTEXT",
        "DOCKER_TLS",
        "DOCKER_CERT_PATH",
        "CONTAINERD_ADDRESS",
        "CONTAINERD_NAMESPACE",
        "NOTIFY_SOCKET",
        "LISTEN_",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), *_SBIN_PATH]).lstrip(os.pathsep)
    return env


_help_cache: dict[str, str] = {}


def _dockerd_supports(dockerd: str, flag: str) -> bool:
    if dockerd not in _help_cache:
        _help_cache[dockerd] = subprocess.run(
            [dockerd, "--help"], capture_output=True, text=True, check=False
        ).stdout
    return flag in _help_cache[dockerd]


# ------------------------------------------------------------------ the daemon


class PrivateDockerd:
    """A dedicated dockerd (with its own containerd) for the test suite.

    Layout under a fresh temp dir ``<base>/nslibt-d-<pid>-<random>``: ``data/``
    (``--data-root``), ``exec/`` (``--exec-root``), ``docker.sock``, ``docker.pid``,
    ``daemon.json`` (empty, so the host's /etc/docker/daemon.json is ignored),
    ``containerd/`` (config, root, state, socket) and the two daemons' logs.
    Containers go below the cgroup parent ``/<temp dir name>``; the default ``bridge``
    network uses a bridge of its own (``bridge_name``), never the host's docker0.

    No iptables/ip6tables rules, no ip_forward/masquerade changes: the host's
    networking is left alone (tests mostly use ``--network none``). containerd is started
    explicitly rather than managed by dockerd because dockerd 20.10 silently uses
    /run/containerd/containerd.sock when a system containerd exists (the usual setup
    with systemd), which would share the ``moby`` namespace with the host's daemon.
    containerd also keeps running across ``restart()``, as with a real
    containerd.service.

    Usage::

        with PrivateDockerd() as d:
            client = d.client()
            try:
                c = run_container(client, label="ms1", restart="always")
                d.restart()            # c comes back with a new PID
            finally:
                client.close()
    """

    def __init__(
        self,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        image: str | None = TEST_IMAGE,
        extra_args: Sequence[str] = (),
    ) -> None:
        """Prepare (but do not start) a private daemon.

        Args:
            base_dir: Where to create the temp root (default: ``tempfile.gettempdir()``).
                Must be on a filesystem overlay2 accepts (ext4, xfs, tmpfs), and short,
                because unix socket paths are limited to 107 bytes.
            image: Test image tag to build into the daemon on first start (None: skip).
            extra_args: Additional dockerd arguments.
        """
        self.base_dir = Path(base_dir or tempfile.gettempdir())
        self.image = image
        self.extra_args = list(extra_args)
        self.root: Path | None = None
        self.api_version: str | None = None
        self.timings: dict[str, float] = {}
        """Seconds taken by the last ``start`` (daemon up), ``image``, ``restart``,
        ``stop``: handy for reporting."""
        self._dockerd: subprocess.Popen[bytes] | None = None
        self._containerd: subprocess.Popen[bytes] | None = None

    # ----------------------------------------------------------------- paths

    def _path(self, *parts: str) -> Path:
        if self.root is None:
            raise RuntimeError("private dockerd is not started")
        return self.root.joinpath(*parts)

    @property
    def socket_path(self) -> str:
        """Filesystem path of the daemon's API socket."""
        return str(self._path("docker.sock"))

    @property
    def base_url(self) -> str:
        """``unix://...`` URL for ``docker.DockerClient(base_url=...)``/``DOCKER_HOST``."""
        return "unix://" + self.socket_path

    @property
    def pid(self) -> int:
        """PID of the running dockerd (changes on ``restart()``)."""
        if self._dockerd is None or self._dockerd.poll() is not None:
            raise RuntimeError("private dockerd is not running")
        return self._dockerd.pid

    @property
    def containerd_pid(self) -> int:
        """PID of the private containerd (stable across ``restart()``)."""
        if self._containerd is None or self._containerd.poll() is not None:
            raise RuntimeError("private containerd is not running")
        return self._containerd.pid

    @property
    def cgroup_parent(self) -> str:
        """Cgroup parent of all containers (``--cgroup-parent``), e.g. ``/nslibt-d-1-x``."""
        return "/" + self._path().name

    @property
    def bridge_name(self) -> str:
        """Host bridge behind the private daemon's default ``bridge`` network.

        Created by ``start()`` and deleted by ``stop()``; dockerd gives it a free
        private subnet. No NAT, no iptables rules, no ip_forward: containers on it
        reach each other and the host only.
        """
        return _bridge_name(self._path())

    @property
    def running(self) -> bool:
        """True while dockerd is running."""
        return self._dockerd is not None and self._dockerd.poll() is None

    # ------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 30.0) -> None:
        """Start containerd and dockerd, wait for the API, load the test image.

        Raises RuntimeError (with the log tail) if the daemon does not answer within
        ``timeout`` seconds; everything started so far is torn down first.
        """
        if self.root is not None:
            raise RuntimeError("private dockerd already started")
        if os.geteuid() != 0:
            raise RuntimeError("PrivateDockerd needs root")
        dockerd, containerd = _binary("dockerd"), _binary("containerd")
        cleanup_stale(self.base_dir)
        t0 = time.monotonic()
        deadline = t0 + timeout
        self.root = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-", dir=self.base_dir))
        atexit.register(self._atexit_stop)
        try:
            if len(str(self._path("containerd", "containerd.sock.ttrpc"))) > _UNIX_PATH_MAX:
                raise RuntimeError(f"base_dir {self.base_dir} is too long for unix sockets")
            self._write_configs()
            subprocess.run(
                [_binary("ip", "iproute2"), "link", "add", self.bridge_name, "type", "bridge"],
                check=True,
            )
            self._start_containerd(containerd, deadline)
            self._start_dockerd(dockerd, deadline)
            self.timings["start"] = time.monotonic() - t0
            _status, body = _unix_http_get(self.socket_path, "/version")
            self.api_version = str(json.loads(body)["ApiVersion"])
            if self.image is not None:
                t1 = time.monotonic()
                client = self.client()
                try:
                    ensure_test_image(client, self.image)
                finally:
                    client.close()
                self.timings["image"] = time.monotonic() - t1
        except BaseException:
            try:
                self.stop(timeout=5)
            except Exception as e:  # keep the original error; just report this one
                print(f"PrivateDockerd cleanup after failed start: {e}", file=sys.stderr)
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the daemon and remove every trace of it; safe to call twice.

        SIGTERM to dockerd (it stops the running containers, each with its stop
        timeout), SIGKILL after ``timeout``; then containerd likewise. Leftovers
        (shims, container processes in our cgroup parent, mounts below the root,
        cgroup dirs) are killed/unmounted/removed, then the root is deleted.
        Raises RuntimeError if something could not be cleaned up.
        """
        if self.root is None:
            return
        t0 = time.monotonic()
        root = self.root
        problems: list[str] = []
        try:
            for name, proc, wait in (
                ("dockerd", self._dockerd, timeout),
                ("containerd", self._containerd, 10.0),
            ):
                try:  # each step whatever happened before; the teardown kills leftovers
                    self._stop_proc(proc, signal.SIGTERM, wait)
                except Exception as e:
                    problems.append(f"stopping {name}: {type(e).__name__}: {e}")
        finally:
            self._dockerd = self._containerd = None
            problems += _teardown_root(root, root.name)
            self.root = None
            atexit.unregister(self._atexit_stop)
            self.timings["stop"] = time.monotonic() - t0
        if problems:
            raise RuntimeError(f"private dockerd cleanup of {root}: {'; '.join(problems)}")

    def restart(self, timeout: float = 30.0, *, crash: bool = False) -> None:
        """Restart dockerd on the same data root (containerd keeps running).

        Without ``crash`` this is a clean ``systemctl restart docker``: SIGTERM, wait
        for the shutdown (running containers are stopped: ~1.5 s with 1 s stop timeouts),
        start again. With ``crash=True`` dockerd is SIGKILLed instead; its containers
        keep running under containerd until the new dockerd handles them (live-restore
        is off). In both cases containers with a restart policy are running again
        (new PID, new netns) by the time this returns, since dockerd restores them
        before its API answers.
        """
        dockerd = self._dockerd
        if dockerd is None or dockerd.poll() is not None:
            raise RuntimeError("private dockerd is not running")
        t0 = time.monotonic()
        self._stop_proc(dockerd, signal.SIGKILL if crash else signal.SIGTERM, timeout)
        self._dockerd = None
        if crash:  # a stale pidfile with a reused PID would stop the new dockerd
            self._path("docker.pid").unlink(missing_ok=True)
        self._start_dockerd(_binary("dockerd"), time.monotonic() + timeout)
        self.timings["restart"] = time.monotonic() - t0

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _atexit_stop(self) -> None:
        try:
            self.stop(timeout=10)
        except Exception as e:  # interpreter is exiting: report, do not raise
            print(f"PrivateDockerd atexit cleanup: {e}", file=sys.stderr)

    # --------------------------------------------------------------- clients

    def client(self, timeout: int = 60) -> docker.DockerClient:
        """A new ``docker.DockerClient`` for this daemon; the caller must ``close()`` it.

        The API version is fixed (the daemon's, read at start), so construction does no
        I/O and the client keeps working across ``restart()``.
        """
        return docker.DockerClient(
            base_url=self.base_url, version=self.api_version or "auto", timeout=timeout
        )

    def docker_cli(
        self, *args: str, check: bool = True, timeout: float = 120.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``docker -H unix://<our socket> *args``; return the completed process.

        Output is captured as text. With ``check`` a non-zero exit raises
        ``subprocess.CalledProcessError`` (its ``stderr`` says why). Remember
        ``--stop-timeout 1`` on ``docker run``: otherwise daemon shutdown/restart waits
        10 s for the image's SIGTERM-immune PID 1.
        """
        return subprocess.run(
            [_binary("docker"), "-H", self.base_url, *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=_child_env(),
        )

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the dockerd and containerd logs (for failure messages)."""
        out = []
        for name in ("dockerd.log", "containerd.log"):
            try:
                text = self._path(name).read_text(errors="replace").splitlines()
            except (OSError, RuntimeError):
                continue
            out.append(f"--- {name}\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    # ------------------------------------------------------------- internals

    def _write_configs(self) -> None:
        ctr = self._path("containerd")
        ctr.mkdir()
        # All containerd paths inside our root; CRI off (dockerd does not use it).
        # Shim sockets still go to /run/containerd/s (named by a hash of our address).
        ctr.joinpath("config.toml").write_text(
            "version = 2\n"
            f'root = "{ctr}/root"\n'
            f'state = "{ctr}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{ctr}/containerd.sock"\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f'  path = "{ctr}/opt"\n'
        )
        self._path("daemon.json").write_text("{}\n")

    def _dockerd_argv(self, dockerd: str) -> list[str]:
        argv = [
            dockerd,
            f"--config-file={self._path('daemon.json')}",
            f"--data-root={self._path('data')}",
            f"--exec-root={self._path('exec')}",
            f"--pidfile={self._path('docker.pid')}",
            f"--host={self.base_url}",
            f"--containerd={self._path('containerd', 'containerd.sock')}",
            f"--cgroup-parent={self.cgroup_parent}",
            # cgroupfs keeps the parent a plain directory we can find and remove
            # (dockerd 20.10 would pick systemd on a cgroup v2 + systemd host).
            "--exec-opt=native.cgroupdriver=cgroupfs",
            # Never --bridge=none: dockerd then deletes the host's "docker0" (moby's
            # removeDefaultBridgeInterface), breaking the system daemon's networking.
            f"--bridge={self.bridge_name}",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--live-restore=false",
        ]
        if _dockerd_supports(dockerd, "--ip6tables"):
            argv.append("--ip6tables=false")
        return argv + self.extra_args

    def _start_containerd(self, containerd: str, deadline: float) -> None:
        sock = str(self._path("containerd", "containerd.sock"))
        with self._path("containerd.log").open("ab") as log:
            self._containerd = subprocess.Popen(
                [containerd, "--config", str(self._path("containerd", "config.toml"))],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                start_new_session=True,  # a Ctrl-C in the terminal must not reach it
            )
        while True:
            if self._containerd.poll() is not None:
                raise RuntimeError(f"containerd exited at start\n{self.log_tail()}")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(sock)
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not come up\n{self.log_tail()}")
            time.sleep(0.02)

    def _start_dockerd(self, dockerd: str, deadline: float) -> None:
        with self._path("dockerd.log").open("ab") as log:
            self._dockerd = subprocess.Popen(
                self._dockerd_argv(dockerd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                start_new_session=True,
            )
        while True:
            if self._dockerd.poll() is not None:
                raise RuntimeError(
                    f"dockerd exited with {self._dockerd.returncode}\n{self.log_tail()}"
                )
            try:
                if _unix_http_get(self.socket_path, "/_ping", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer in time\n{self.log_tail()}")
            time.sleep(0.02)

    @staticmethod
    def _stop_proc(
        proc: subprocess.Popen[bytes] | None, sig: signal.Signals, timeout: float
    ) -> None:
        """Send ``sig``, wait ``timeout`` s, then SIGKILL; always reap the child."""
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------ CLI


def _cli_client(host: str | None) -> docker.DockerClient:
    return docker.DockerClient(base_url=host) if host else docker.from_env()


def main(argv: Iterable[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="tests/dockerd.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-image", help="build the test image unless it is up to date")
    b.add_argument("--tag", default=TEST_IMAGE)
    b.add_argument("--force", action="store_true", help="rebuild even if up to date")
    b.add_argument("--host", help="daemon URL (default: DOCKER_HOST or the system daemon)")
    sub.add_parser("cleanup-stale", help="remove private daemons of dead test runs")
    sub.add_parser("serve", help="run a private dockerd until Ctrl-C")
    args = parser.parse_args(list(argv) if argv is not None else None)

    if args.cmd == "build-image":
        client = _cli_client(args.host)
        try:
            t0 = time.monotonic()
            image, built = ensure_test_image(client, args.tag, force=args.force)
            what = f"built in {time.monotonic() - t0:.1f} s" if built else "up to date"
            print(f"image {args.tag}: {what} ({image.short_id})")
        finally:
            client.close()
    elif args.cmd == "cleanup-stale":
        for root in cleanup_stale():
            print(f"removed {root}")
    elif args.cmd == "serve":
        with PrivateDockerd() as d:
            print(
                f"export DOCKER_HOST={d.base_url}   # dockerd pid {d.pid}; Ctrl-C stops", flush=True
            )
            try:
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
