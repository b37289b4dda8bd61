"""Podman side of nslib's test infrastructure: a private ``podman system service``.

``PrivatePodman`` runs rootful podman with its own storage (``--root``), run
root (``--runroot``), tmp dir, events log, network config dir and API socket
under a fresh temp dir, configured through its own ``containers.conf``
(``CONTAINERS_CONF``): cgroupfs, file events, and ``default_ulimits = []``
(podman's default nofile limit is above the hard limit on some hosts).  The
busybox test image is moved in from a docker daemon with
``docker save | podman load``.  The service may be restarted or killed by
tests; containers (under conmon) keep running, as with the real service.

Command line::

    python3 tests/podmand.py cleanup-stale
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from dockerd import (
    MICROSERVICE_ENV,
    NAME_PREFIX,
    TEST_IMAGE,
    _binary,
    _child_env,
    _umount_all,
    mounts_under,
    proc_alive,
    processes_mentioning,
)

ROOT_PREFIX = "nslibt-p-"
"""Temp dir prefix of private podman services: ``nslibt-p-<owner pid>-<random>``."""

PODMAN_IMAGE = f"localhost/{TEST_IMAGE}"
"""The test image's name once loaded into podman."""

_counter = iter(range(1, 1 << 30))


def unique_name(hint: str = "c") -> str:
    """A container name unique to this process: ``nslibt-<pid>-p<hint>-<n>``."""
    clean = re.sub(r"[^a-zA-Z0-9_.-]", "-", hint) or "c"
    return f"{NAME_PREFIX}-p{clean}-{next(_counter)}"


class PrivatePodman:
    """A dedicated rootful podman API service for the test suite.

    Usage::

        with PrivatePodman() as p:
            p.load_image_from_docker(dockerd.base_url)
            cid = p.run(label="web")
            p.restart_service()
    """

    def __init__(self, *, base_dir: str | os.PathLike[str] | None = None) -> None:
        self.base_dir = Path(base_dir or tempfile.gettempdir())
        self.root: Path | None = None
        self._service: subprocess.Popen[bytes] | None = None

    # -- paths ------------------------------------------------------------

    def _path(self, *parts: str) -> Path:
        if self.root is None:
            raise RuntimeError("private podman is not started")
        return self.root.joinpath(*parts)

    @property
    def socket_path(self) -> str:
        """The API socket's path."""
        return str(self._path("podman.sock"))

    @property
    def url(self) -> str:
        """``unix://`` URL of the API socket (for ``PodmanSource(url=...)``)."""
        return "unix://" + self.socket_path

    @property
    def events_log(self) -> str:
        """The events log file the service writes (``events_logfile_path``)."""
        return str(self._path("events.log"))

    @property
    def service_pid(self) -> int:
        """PID of the running ``podman system service``."""
        if self._service is None or self._service.poll() is not None:
            raise RuntimeError("the podman service is not running")
        return self._service.pid

    def global_args(self) -> list[str]:
        """Global options that make a local ``podman`` use this instance's state."""
        return [
            f"--root={self._path('storage')}",
            f"--runroot={self._path('run')}",
            f"--tmpdir={self._path('tmp')}",
            "--cgroup-manager=cgroupfs",
            "--events-backend=file",
            f"--network-config-dir={self._path('net')}",
        ]

    def env(self) -> dict[str, str]:
        """Environment for podman commands: our ``containers.conf``, no host overrides."""
        env = _child_env()
        env["CONTAINERS_CONF"] = str(self._path("containers.conf"))
        for k in ("CONTAINER_HOST", "CONTAINER_CONNECTION", "CONTAINERS_REGISTRIES_CONF"):
            env.pop(k, None)
        return env

    # -- lifecycle --------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Create the state directories and start the API service.

        :raises RuntimeError: already started, not root, or the service did
            not answer in time (everything made so far is removed first).
        """
        if self.root is not None:
            raise RuntimeError("private podman already started")
        if os.geteuid() != 0:
            raise RuntimeError("PrivatePodman needs root")
        _binary("podman", "podman")
        cleanup_stale(self.base_dir)
        self.root = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-", dir=self.base_dir))
        atexit.register(self._atexit_stop)
        try:
            for d in ("storage", "run", "tmp", "net"):
                self._path(d).mkdir()
            self._write_conf()
            self.start_service(timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise

    def _write_conf(self, events_max_size: int | None = None) -> None:
        size = "" if events_max_size is None else f'events_logfile_max_size = "{events_max_size}"\n'
        self._path("containers.conf").write_text(
            "[containers]\n"
            "default_ulimits = []\n"
            "[engine]\n"
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.events_log}"\n'
            f"{size}"
            'cgroup_manager = "cgroupfs"\n'
            f'tmp_dir = "{self._path("tmp")}"\n'
            "[network]\n"
            f'network_config_dir = "{self._path("net")}"\n'
        )

    def set_events_max_size(self, size: int | None) -> None:
        """Make podman rotate its events log past *size* bytes (None: its default).

        Restarts the service; later podman commands (and the cleanup of
        containers that exit) read the new setting themselves.
        """
        self._write_conf(size)
        self.restart_service()

    def start_service(self, timeout: float = 30.0) -> None:
        """Start ``podman system service`` on our socket and wait until it answers."""
        if self._service is not None and self._service.poll() is None:
            raise RuntimeError("the podman service is running already")
        Path(self.socket_path).unlink(missing_ok=True)
        with self._path("service.log").open("ab") as log:
            self._service = subprocess.Popen(
                [
                    _binary("podman", "podman"),
                    *self.global_args(),
                    "system",
                    "service",
                    "--time=0",
                    self.url,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._service.poll() is not None:
                raise RuntimeError(f"podman service exited\n{self.log_tail()}")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(2)
                    s.connect(self.socket_path)
                    s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
                    if s.recv(64).split(b" ")[1:2] == [b"200"]:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"podman service did not answer\n{self.log_tail()}")
            time.sleep(0.02)

    def stop_service(self, *, kill: bool = False) -> None:
        """Stop the API service (SIGTERM, or SIGKILL with *kill*); containers keep running."""
        proc, self._service = self._service, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart_service(self, *, kill: bool = False) -> None:
        """Stop (or kill) the API service and start it again on the same socket."""
        self.stop_service(kill=kill)
        self.start_service()

    def stop(self) -> None:
        """Remove every container and pod, stop the service, delete every trace.

        Every step runs even if an earlier one failed.
        :raises RuntimeError: something could not be cleaned up.
        """
        if self.root is None:
            return
        root = self.root
        problems: list[str] = []
        for what, fn in (
            ("stopping the service", self.stop_service),
            ("removing containers", lambda: self.local("rm", "-af", "-t", "0", check=False)),
            ("removing pods", lambda: self.local("pod", "rm", "-af", check=False)),
        ):
            try:
                fn()
            except Exception as e:
                problems.append(f"{what}: {type(e).__name__}: {e}")
        problems += _teardown_root(root)
        self.root = None
        atexit.unregister(self._atexit_stop)
        if problems:
            raise RuntimeError(f"private podman cleanup of {root}: {'; '.join(problems)}")

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
            self.stop()
        except Exception as e:
            print(f"PrivatePodman atexit cleanup: {e}", file=sys.stderr)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the service's log."""
        try:
            text = self._path("service.log").read_text(errors="replace").splitlines()
        except (OSError, RuntimeError):
            return ""
        return "\n".join(text[-lines:])

    # -- commands ---------------------------------------------------------

    def cli(
        self, *args: str, check: bool = True, timeout: float = 60.0, stdin: Any = None
    ) -> subprocess.CompletedProcess[str]:
        """``podman --remote --url <our socket> *args`` (through the service)."""
        return subprocess.run(
            [_binary("podman", "podman"), "--remote", "--url", self.url, *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=stdin,
            env=self.env(),
        )

    def local(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """A local ``podman`` on our state (works while the service is down)."""
        return subprocess.run(
            [_binary("podman", "podman"), *self.global_args(), *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
        )

    def load_image_from_docker(self, docker_url: str, image: str = TEST_IMAGE) -> None:
        """``docker -H <docker_url> save <image> | podman load``."""
        save = subprocess.Popen(
            [_binary("docker"), "-H", docker_url, "save", image],
            stdout=subprocess.PIPE,
            env=_child_env(),
        )
        try:
            self.cli("load", stdin=save.stdout, timeout=120)
        finally:
            assert save.stdout is not None
            save.stdout.close()
            save.wait(60)
        if save.returncode:
            raise RuntimeError(f"docker save {image} failed with {save.returncode}")

    def run(
        self,
        label: str | None = None,
        *,
        name: str | None = None,
        command: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        network: str | None = "none",
        pod: str | None = None,
        restart: str | None = None,
        extra: Sequence[str] = (),
    ) -> str:
        """``podman run -d`` a test container; return its full ID."""
        args = ["run", "-d", "--stop-timeout", "1", "--name", name or unique_name()]
        if label is not None:
            args += ["-e", f"{MICROSERVICE_ENV}={label}"]
        for k, v in (env or {}).items():
            args += ["-e", f"{k}={v}"]
        for k, v in (labels or {}).items():
            args += ["--label", f"{k}={v}"]
        args += ["--label", f"org.nslib.test={os.getpid()}"]
        if pod is not None:
            args += ["--pod", pod]
        elif network is not None:
            args += ["--network", network]
        if restart is not None:
            args += ["--restart", restart]
        args += [*extra, PODMAN_IMAGE, *command]
        return self.cli(*args).stdout.strip()

    def create_pod(self, name: str | None = None) -> tuple[str, str]:
        """A pod (own namespace, no network) with our image as infra: ``(pod ID, infra ID)``."""
        pod_id = self.cli(
            "pod",
            "create",
            "--name",
            name or unique_name("pod"),
            "--network",
            "none",
            "--infra-image",
            PODMAN_IMAGE,
        ).stdout.strip()
        info = json.loads(self.cli("pod", "inspect", pod_id).stdout)
        if isinstance(info, list):
            info = info[0]
        return pod_id, str(info["InfraContainerID"])

    def inspect(self, cid: str) -> dict[str, Any]:
        """``podman inspect`` of one container."""
        out = json.loads(self.cli("inspect", "--type", "container", cid).stdout)
        return dict(out[0])

    def running_ids(self) -> list[str]:
        """Full IDs of the running containers."""
        return self.cli("ps", "-q", "--no-trunc").stdout.split()


def _teardown_root(root: Path) -> list[str]:
    problems: list[str] = []

    def step(what: str, fn: Any) -> None:
        try:
            fn()
        except Exception as e:
            problems.append(f"{what}: {type(e).__name__}: {e}")

    def kill_all() -> None:
        # The service, conmon and `podman container cleanup` name the root in
        # their argv; container processes were removed by `rm -af` (or die
        # with their conmon's cleanup).
        deadline = time.monotonic() + 10
        while pids := set(processes_mentioning(f"{root}/")):
            if time.monotonic() > deadline:
                problems.append(f"processes still alive: {sorted(pids)}")
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def umount() -> None:
        if left := _umount_all(root):
            problems.append(f"still mounted: {left}")

    def files() -> None:
        if not mounts_under(root):
            shutil.rmtree(root, ignore_errors=True)
        if root.exists():
            problems.append(f"could not remove {root}")

    step("killing leftover processes", kill_all)
    step("unmounting", umount)
    step("removing the root", files)
    return problems


def cleanup_stale(base_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Tear down roots of private podman services whose owner process is gone."""
    base = Path(base_dir or tempfile.gettempdir())
    cleaned = []
    for root in sorted(base.glob(ROOT_PREFIX + "*")):
        m = re.fullmatch(re.escape(ROOT_PREFIX) + r"(\d+)-\w+", root.name)
        if not m or not root.is_dir():
            continue
        owner = int(m.group(1))
        if owner == os.getpid() or proc_alive(owner):
            continue
        p = PrivatePodman(base_dir=base)
        p.root = root
        with contextlib.suppress(Exception):
            p.local("rm", "-af", "-t", "0", check=False, timeout=60)
            p.local("pod", "rm", "-af", check=False, timeout=60)
        problems = _teardown_root(root)
        if problems:
            print(f"stale {root}: {'; '.join(problems)}", file=sys.stderr)
        cleaned.append(root)
    return cleaned


def main(argv: Iterable[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    args = list(argv if argv is not None else sys.argv[1:])
    if args == ["cleanup-stale"]:
        for root in cleanup_stale():
            print(f"removed {root}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
