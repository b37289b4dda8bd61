"""containerd side of nslib's test infrastructure: a private containerd and ``ctr``.

``PrivateContainerd`` runs containerd with its own ``--root``, ``--state`` and
gRPC address under a fresh temp dir (CRI plugin off: Kubernetes pods are
imitated with ``ctr`` and the labels the CRI plugin sets).  Containers are
made with ``ctr run`` below a cgroup parent of our own, so teardown finds
them; the busybox test image comes from a docker daemon through
``docker save`` and ``ctr image import``.

Command line::

    python3 tests/containerd_harness.py cleanup-stale
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from dockerd import (
    MICROSERVICE_ENV,
    TEST_IMAGE,
    _binary,
    _child_env,
    _teardown_root,
    proc_alive,
)

ROOT_PREFIX = "nslibt-c-"
"""Temp dir prefix: ``nslibt-c-<owner pid>-<random>``."""

CTR_IMAGE = f"docker.io/library/{TEST_IMAGE}"
"""The test image's name once imported into containerd."""

_counter = iter(range(1, 1 << 30))


def unique_id(hint: str = "c") -> str:
    """A container ID unique to this process (containerd's identifier rules)."""
    clean = re.sub(r"[^a-zA-Z0-9_.-]", "-", hint) or "c"
    return f"nslibt-{os.getpid()}-{clean}-{next(_counter)}"


class PrivateContainerd:
    """A dedicated containerd for the tests; ``ctr`` against it with :meth:`ctr`."""

    def __init__(self, *, base_dir: str | os.PathLike[str] | None = None) -> None:
        self.base_dir = Path(base_dir or tempfile.gettempdir())
        self.root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def _path(self, *parts: str) -> Path:
        if self.root is None:
            raise RuntimeError("private containerd is not started")
        return self.root.joinpath(*parts)

    @property
    def address(self) -> str:
        """The gRPC socket's path."""
        return str(self._path("containerd.sock"))

    @property
    def cgroup_parent(self) -> str:
        """Cgroup parent of every container made by :meth:`run`."""
        return "/" + self._path().name

    @property
    def pid(self) -> int:
        """PID of the running containerd."""
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("private containerd is not running")
        return self._proc.pid

    def start(self, timeout: float = 30.0) -> None:
        """Write the config, start containerd and wait for its socket.

        :raises RuntimeError: already started, not root, or no answer in time.
        """
        if self.root is not None:
            raise RuntimeError("private containerd already started")
        if os.geteuid() != 0:
            raise RuntimeError("PrivateContainerd needs root")
        _binary("containerd")
        cleanup_stale(self.base_dir)
        self.root = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-", dir=self.base_dir))
        atexit.register(self._atexit_stop)
        try:
            self._path("config.toml").write_text(
                "version = 2\n"
                f'root = "{self._path("root")}"\n'
                f'state = "{self._path("state")}"\n'
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                "[grpc]\n"
                f'  address = "{self.address}"\n'
                '[plugins."io.containerd.internal.v1.opt"]\n'
                f'  path = "{self._path("opt")}"\n'
            )
            self.start_daemon(timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise

    def start_daemon(self, timeout: float = 30.0) -> None:
        """Start containerd (again) on the same root and wait for its socket."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("containerd is running already")
        with self._path("containerd.log").open("ab") as log:
            self._proc = subprocess.Popen(
                [_binary("containerd"), "--config", str(self._path("config.toml"))],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"containerd exited\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(self.address)
                if self.ctr("version", check=False).returncode == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not come up\n{self.log_tail()}")
            time.sleep(0.05)

    def stop_daemon(self, *, kill: bool = False) -> None:
        """Stop (or kill) containerd; tasks keep running under their shims."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart_daemon(self, *, kill: bool = False) -> None:
        """Stop (or kill) containerd and start it again on the same root."""
        self.stop_daemon(kill=kill)
        self.start_daemon()

    def stop(self) -> None:
        """Stop containerd, kill every task, unmount and delete everything.

        :raises RuntimeError: something could not be cleaned up.
        """
        if self.root is None:
            return
        root = self.root
        problems: list[str] = []
        try:
            self.stop_daemon()
        except Exception as e:
            problems.append(f"stopping containerd: {type(e).__name__}: {e}")
        problems += _teardown_root(root, root.name)
        self.root = None
        atexit.unregister(self._atexit_stop)
        if problems:
            raise RuntimeError(f"private containerd cleanup of {root}: {'; '.join(problems)}")

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
            print(f"PrivateContainerd atexit cleanup: {e}", file=sys.stderr)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of containerd's log."""
        try:
            text = self._path("containerd.log").read_text(errors="replace").splitlines()
        except (OSError, RuntimeError):
            return ""
        return "\n".join(text[-lines:])

    # -- ctr ------------------------------------------------------------------

    def ctr(
        self, *args: str, namespace: str = "default", check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """``ctr --address <ours> --namespace <namespace> *args``."""
        return subprocess.run(
            [_binary("ctr", "containerd"), "--address", self.address, "-n", namespace, *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_child_env(),
        )

    def import_image_from_docker(
        self, docker_url: str, namespaces: Iterable[str] = ("default",), image: str = TEST_IMAGE
    ) -> None:
        """``docker save <image> | ctr image import -`` into each namespace."""
        tar = self._path("image.tar")
        with tar.open("wb") as out:
            subprocess.run(
                [_binary("docker"), "-H", docker_url, "save", image],
                stdout=out,
                check=True,
                env=_child_env(),
            )
        try:
            for ns in namespaces:
                self.ctr("image", "import", str(tar), namespace=ns, timeout=120)
        finally:
            tar.unlink()

    def run(
        self,
        label: str | None = None,
        *,
        cid: str | None = None,
        namespace: str = "default",
        command: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        netns: str | None = None,
    ) -> str:
        """``ctr run -d`` a test container (own network namespace unless *netns*); its ID."""
        cid = cid or unique_id()
        args = ["run", "-d", "--cgroup", f"{self.cgroup_parent}/{cid}"]
        if label is not None:
            args += ["--env", f"{MICROSERVICE_ENV}={label}"]
        for k, v in (env or {}).items():
            args += ["--env", f"{k}={v}"]
        for k, v in {"org.nslib.test": str(os.getpid()), **(labels or {})}.items():
            args += ["--label", f"{k}={v}"]
        for k, v in (annotations or {}).items():
            args += ["--annotation", f"{k}={v}"]
        if netns is not None:
            args += ["--with-ns", f"network:{netns}"]
        args += [CTR_IMAGE, cid, *command]
        self.ctr(*args, namespace=namespace)
        return cid

    def kill(self, cid: str, namespace: str = "default") -> None:
        """SIGKILL the container's task (the task and the container stay)."""
        self.ctr("task", "kill", "-s", "SIGKILL", cid, namespace=namespace)

    def task_pid(self, cid: str, namespace: str = "default") -> int:
        """The PID of the container's task, 0 if it has none running."""
        for line in self.ctr("task", "ls", namespace=namespace).stdout.splitlines()[1:]:
            parts = line.split()
            if parts and parts[0] == cid:
                return int(parts[1]) if parts[2] in ("RUNNING", "PAUSED") else 0
        return 0

    def remove(self, cid: str, namespace: str = "default") -> None:
        """Kill and delete the task, then delete the container."""
        self.ctr("task", "kill", "-s", "SIGKILL", cid, namespace=namespace, check=False)
        deadline = time.monotonic() + 10
        while self.ctr("task", "delete", cid, namespace=namespace, check=False).returncode:
            if "not found" in self.ctr("task", "ls", namespace=namespace).stdout:
                break
            if cid not in self.ctr("task", "ls", "-q", namespace=namespace).stdout.split():
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.ctr("container", "delete", cid, namespace=namespace, check=False)

    def running(self, namespace: str = "default") -> dict[str, int]:
        """container ID -> PID of every running task, by ``ctr task ls``."""
        out: dict[str, int] = {}
        for line in self.ctr("task", "ls", namespace=namespace).stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[2] in ("RUNNING", "PAUSED"):
                out[parts[0]] = int(parts[1])
        return out


def cleanup_stale(base_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Tear down private containerd roots whose owner process is gone."""
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


if __name__ == "__main__":
    if sys.argv[1:] == ["cleanup-stale"]:
        for r in cleanup_stale():
            print(f"removed {r}")
        sys.exit(0)
    print(__doc__, file=sys.stderr)
    sys.exit(2)
