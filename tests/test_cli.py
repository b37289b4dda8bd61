"""The installed ``nslib`` console script, run as a user would run it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import missing, wait_for_exe

import nslib

pytestmark = pytest.mark.root


def _script() -> str:
    beside = Path(sys.executable).parent / "nslib"
    if beside.exists():
        return str(beside)
    found = shutil.which("nslib")
    assert found, "the nslib console script is not installed (pip install -e .)"
    return found


NSLIB = _script()
#: Root with every capability dropped.
UNPRIVILEGED = ("setpriv", "--inh-caps=-all", "--bounding-set=-all", "--")


def nslib_cmd(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [*prefix, NSLIB, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd="/",
    )
    assert "Traceback" not in r.stderr, r.stderr
    return r


def no_docker_env(tmp: Path) -> dict[str, str]:
    """No runtime answers: docker, podman and containerd all point at nothing.

    Without a ``--source`` the CLI takes the first runtime that answers, so a
    host where podman or containerd listens on its default socket must not
    change what these tests see.
    """
    return {
        "DOCKER_HOST": f"unix://{tmp}/no-docker-here.sock",
        "CONTAINER_HOST": f"unix://{tmp}/no-podman-here.sock",
        "CONTAINERD_ADDRESS": f"{tmp}/no-containerd-here.sock",
    }


@pytest.fixture
def named_ns(unique: str, run_dir: str) -> Iterator[tuple[str, str]]:
    r = nslib_cmd("--run-dir", run_dir, "add", unique)
    assert r.returncode == 0, r.stderr
    try:
        yield unique, run_dir
    finally:
        nslib_cmd("--run-dir", run_dir, "del", unique)


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A process in a namespace of its own (`unshare -n sleep`)."""
    proc = subprocess.Popen(["unshare", "-n", "sleep", "60"])
    try:
        wait_for_exe(proc.pid, "sleep")
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def ino_of(path: str) -> int:
    return os.stat(path).st_ino


# -- usage -------------------------------------------------------------------------------


def test_usage_errors_exit_2() -> None:
    assert nslib_cmd("--help").returncode == 0
    assert nslib_cmd("--version").stdout.startswith("nslib ")
    for args in ([], ["bogus"], ["add"], ["attach", "x", "notapid"], ["ms"], ["exec"]):
        r = nslib_cmd(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "usage:" in r.stderr


def test_bench_arguments_reach_the_runner() -> None:
    r = nslib_cmd("bench", "--help")
    assert r.returncode == 0
    assert "--quick" in r.stdout


# -- the ip netns verbs ------------------------------------------------------------------


def test_add_del_and_their_errors(run_dir: str, unique: str) -> None:
    r = nslib_cmd("--run-dir", run_dir, "add", unique)
    assert r.returncode == 0, r.stderr
    try:
        assert Path(run_dir, unique).exists()
        r = nslib_cmd("--run-dir", run_dir, "add", unique)
        assert r.returncode == 1
        assert unique in r.stderr and "exist" in r.stderr
    finally:
        r = nslib_cmd("--run-dir", run_dir, "del", unique)
    assert r.returncode == 0, r.stderr
    assert not Path(run_dir, unique).exists()
    r = nslib_cmd("--run-dir", run_dir, "del", unique)
    assert r.returncode == 1
    assert f"no named namespace {unique!r}" in r.stderr
    for bad in ("..", "a/b", "x" * 300):
        r = nslib_cmd("--run-dir", run_dir, "add", bad)
        assert r.returncode == 2, (bad, r.stderr)
    assert os.listdir(run_dir) == []


def test_attach_identify_pids(run_dir: str, unique: str, sleeper: int) -> None:
    r = nslib_cmd("--run-dir", run_dir, "attach", unique, str(sleeper))
    assert r.returncode == 0, r.stderr
    try:
        assert ino_of(f"{run_dir}/{unique}") == ino_of(f"/proc/{sleeper}/ns/net")
        r = nslib_cmd("--run-dir", run_dir, "identify", str(sleeper))
        assert r.stdout.split() == [unique]
        r = nslib_cmd("--run-dir", run_dir, "identify", str(sleeper), "--json")
        assert json.loads(r.stdout) == [unique]
        r = nslib_cmd("--run-dir", run_dir, "identify")  # our own: unnamed here
        assert r.returncode == 0 and r.stdout == ""
        r = nslib_cmd("--run-dir", run_dir, "pids", unique)
        assert r.stdout.split() == [str(sleeper)]
        assert json.loads(nslib_cmd("--run-dir", run_dir, "pids", unique, "--json").stdout) == [
            sleeper
        ]
    finally:
        nslib_cmd("--run-dir", run_dir, "del", unique)
    r = nslib_cmd("--run-dir", run_dir, "pids", unique)
    assert r.returncode == 1 and unique in r.stderr
    r = nslib_cmd("--run-dir", run_dir, "attach", unique, "999999999")
    assert r.returncode == 1 and "999999999" in r.stderr
    assert not Path(run_dir, unique).exists()


# -- exec ------------------------------------------------------------------------------


def test_exec_gets_etc_netns_and_sys(named_ns: tuple[str, str], etc_netns_dir: Path) -> None:
    name, run_dir = named_ns
    resolv = f"nameserver 192.0.2.1\nsearch {name}.example\n"
    (etc_netns_dir / "resolv.conf").write_text(resolv)
    (etc_netns_dir / f"{name}-absent.conf").write_text("x\n")
    veth = name[:13] + "va"
    assert (
        nslib_cmd(
            "--run-dir", run_dir, "exec", name, "--", "ip", "link", "add", veth, "type", "veth"
        ).returncode
        == 0
    )
    host_resolv = Path("/etc/resolv.conf").read_bytes()
    r = nslib_cmd(
        "--run-dir",
        run_dir,
        "exec",
        name,
        "--",
        "sh",
        "-c",
        "cat /etc/resolv.conf; echo ---; ls /sys/class/net; exit 9",
    )
    assert r.returncode == 9, r.stderr
    # A file with no /etc counterpart cannot be bound: a warning, as in ip netns exec.
    assert (
        f"warning: bind {etc_netns_dir}/{name}-absent.conf -> /etc/{name}-absent.conf" in r.stderr
    )
    got_resolv, _, got_sys = r.stdout.partition("---\n")
    assert got_resolv == resolv
    ifaces = got_sys.split()
    assert "lo" in ifaces and veth in ifaces
    assert len(ifaces) == 3  # lo and the veth pair
    # The parent's view is untouched.
    assert Path("/etc/resolv.conf").read_bytes() == host_resolv
    assert veth not in os.listdir("/sys/class/net")
    # --no-etc: only the network namespace.
    r = nslib_cmd("--run-dir", run_dir, "exec", "--no-etc", name, "--", "cat", "/etc/resolv.conf")
    assert r.stdout.encode() == host_resolv


def test_exec_references_and_exit_codes(
    named_ns: tuple[str, str], sleeper: int, unique: str
) -> None:
    name, run_dir = named_ns
    want_named = f"net:[{ino_of(f'{run_dir}/{name}')}]"
    want_pid = f"net:[{ino_of(f'/proc/{sleeper}/ns/net')}]"
    for ref, want in [
        (name, want_named),
        (f"name:{name}", want_named),
        (f"path:{run_dir}/{name}", want_named),
        (f"{run_dir}/{name}", want_named),
        (f"pid:{sleeper}", want_pid),
    ]:
        r = nslib_cmd("--run-dir", run_dir, "exec", ref, "--", "readlink", "/proc/self/ns/net")
        assert (r.returncode, r.stdout.strip()) == (0, want), (ref, r.stderr)
    # The command's own status, and the conventional ones when it cannot run.
    assert (
        nslib_cmd("--run-dir", run_dir, "exec", name, "--", "sh", "-c", "exit 42").returncode == 42
    )
    r = nslib_cmd("--run-dir", run_dir, "exec", name, "--", f"/nonexistent/{unique}")
    assert r.returncode == 127 and "command not found" in r.stderr
    r = nslib_cmd("--run-dir", run_dir, "exec", name, "--", "/etc/hostname")
    assert r.returncode == 126 and "cannot execute" in r.stderr
    # nslib's own failures.
    r = nslib_cmd("--run-dir", run_dir, "exec", f"{unique}x", "--", "true")
    assert r.returncode == 125 and f"{unique}x" in r.stderr
    r = nslib_cmd("exec", "pid:999999999", "--", "true")
    assert r.returncode == 125 and "999999999" in r.stderr
    for bad in ("pid:abc", "..", "name:", "a/b"):
        r = nslib_cmd("exec", bad, "--", "true")
        assert r.returncode == 2, (bad, r.stderr)
    # An unknown prefix is no prefix: by the one string rule it is a name.
    r = nslib_cmd("--run-dir", run_dir, "exec", "bogus:x", "--", "true")
    assert r.returncode == 125 and "no named namespace 'bogus:x'" in r.stderr
    r = nslib_cmd("--run-dir", run_dir, "exec", name)
    assert r.returncode == 2 and "no command" in r.stderr


def test_exec_passes_signals_and_stdio(named_ns: tuple[str, str]) -> None:
    # nslib exec *becomes* the command: same PID, stdin flows, signals reach it.
    name, run_dir = named_ns
    r = subprocess.run(
        [NSLIB, "--run-dir", run_dir, "exec", name, "--", "cat"],
        input="through\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.stdout == "through\n"
    proc = subprocess.Popen([NSLIB, "--run-dir", run_dir, "exec", name, "--", "sleep", "30"])
    try:
        wait_for_exe(proc.pid, "sleep")
        assert os.readlink(f"/proc/{proc.pid}/exe").endswith("sleep")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


# -- ls ----------------------------------------------------------------------------------


def test_ls_shows_the_built_topology(named_ns: tuple[str, str], sleeper: int) -> None:
    name, run_dir = named_ns
    named_ino = ino_of(f"{run_dir}/{name}")
    proc_ino = ino_of(f"/proc/{sleeper}/ns/net")
    with nslib.NsHandle.new() as by_fd:  # held only by this pytest process's fd
        fd_ino = by_fd.ns_id[1]
        r = nslib_cmd("--run-dir", run_dir, "ls", "--json", "--no-docker")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        by_ino = {ns["ino"]: ns for ns in data["namespaces"]}
        assert len(by_ino) == len(data["namespaces"])  # deduplicated
        assert by_ino[named_ino]["names"] == [name]
        assert by_ino[named_ino]["held_by"] == ["mounts"]
        assert by_ino[proc_ino]["pids"] == [sleeper]
        assert by_ino[proc_ino]["held_by"] == ["processes"]
        assert by_ino[proc_ino]["processes"][0]["command"] == "sleep 60"
        assert [(f["pid"], f["fd"]) for f in by_ino[fd_ino]["fds"]] == [
            (os.getpid(), by_fd.fileno())
        ]
        assert by_ino[fd_ino]["held_by"] == ["fds"]

        r = nslib_cmd("--run-dir", run_dir, "ls", "--no-docker")
        assert r.returncode == 0
        lines = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
        assert r.stdout.splitlines()[0].split()[:3] == ["NETNS", "NSID", "NAMES"]
        assert name in lines[str(named_ino)]
        assert f"{sleeper} sleep 60" in lines[str(proc_ino)]
        assert f"fd {os.getpid()}:{by_fd.fileno()}" in lines[str(fd_ino)]


def test_ls_with_docker_down_still_lists(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = nslib_cmd("ls", env=no_docker_env(tmp_path))
    assert r.returncode == 0
    assert time.monotonic() - t0 < 20
    assert "containers not shown: docker not reachable" in r.stderr


# -- microservices ------------------------------------------------------------------------


def test_ms_without_docker_says_so(tmp_path: Path) -> None:
    env = no_docker_env(tmp_path)
    for args in (
        ["ms", "ls"],
        ["ms", "ls", "--json"],
        ["ms", "watch"],
        ["exec", "ms:x", "--", "true"],
    ):
        t0 = time.monotonic()
        r = nslib_cmd(*args, env=env, timeout=30)
        assert r.returncode == (125 if args[0] == "exec" else 1), (args, r.stderr)
        assert "docker daemon not reachable" in r.stderr, r.stderr
        assert str(tmp_path) in r.stderr  # says which DOCKER_HOST it tried
        assert time.monotonic() - t0 < 15


@pytest.mark.docker
def test_ms_ls_watch_and_exec(dockerd: object, docker_client: Any, unique: str) -> None:
    from dockerd import run_container

    env = {"DOCKER_HOST": dockerd.base_url}  # type: ignore[attr-defined]
    watch = subprocess.Popen(
        [NSLIB, "ms", "watch", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    c = None
    try:
        time.sleep(1.0)  # let the watcher sync before the container starts
        c = run_container(docker_client, label=unique)
        c.reload()
        pid = c.attrs["State"]["Pid"]
        assert watch.stdout is not None
        deadline = time.monotonic() + 30
        event = None
        while time.monotonic() < deadline:
            line = watch.stdout.readline()
            if not line:
                break
            rec = json.loads(line)
            if rec["label"] == unique:
                event = rec
                break
        assert event is not None, "no event for the container"
        assert event["kind"] == "started"
        assert event["container_id"] == c.id and event["pid"] == pid

        r = nslib_cmd("ms", "ls", "--json", env=env)
        assert r.returncode == 0, r.stderr
        [entry] = [e for e in json.loads(r.stdout) if e["label"] == unique]
        assert entry["container_id"] == c.id
        r = nslib_cmd("ms", "ls", env=env)
        assert unique in r.stdout and c.id[:12] in r.stdout

        r = nslib_cmd("exec", f"ms:{unique}", "--", "readlink", "/proc/self/ns/net", env=env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"net:[{ino_of(f'/proc/{pid}/ns/net')}]"

        r = nslib_cmd("ls", "--json", env=env)
        [ns] = [n for n in json.loads(r.stdout)["namespaces"] if pid in n["pids"]]
        assert [x["label"] for x in ns["containers"]] == [unique]
        assert unique in nslib_cmd("ls", env=env).stdout

        # Ctrl-C ends the watch cleanly.
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=10) == 0
        assert watch.stderr is not None
        assert "Traceback" not in watch.stderr.read()
    finally:
        if watch.poll() is None:
            watch.kill()
        watch.wait()
        for stream in (watch.stdout, watch.stderr):
            if stream is not None:
                stream.close()
        if c is not None:
            c.remove(force=True)


# -- without privileges -------------------------------------------------------------------


def test_without_capabilities(run_dir: str, unique: str, tmp_path: Path) -> None:
    r = nslib_cmd("--run-dir", run_dir, "add", unique, prefix=UNPRIVILEGED)
    assert r.returncode == 1
    assert "CAP_SYS_ADMIN" in r.stderr
    assert not Path(run_dir, unique).exists()
    r = nslib_cmd("exec", "pid:1", "--", "true", prefix=UNPRIVILEGED)
    assert r.returncode == 125
    r = nslib_cmd("ls", "--no-docker", prefix=UNPRIVILEGED)
    assert r.returncode == 0
    assert "could not be inspected" in r.stderr


def _nobody_python() -> list[str] | None:
    """A way to run this checkout's nslib as uid 65534, if the host allows one."""
    repo = str(Path(nslib.__file__).resolve().parent.parent)
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    for py in (sys.executable, "/usr/bin/python3"):
        argv = [*drop, "env", f"PYTHONPATH={repo}", py]
        r = subprocess.run(
            [*argv, "-c", "import nslib.cli"], capture_output=True, cwd="/", timeout=30
        )
        if r.returncode == 0:
            return [*argv, "-m", "nslib.cli"]
    return None


def test_as_a_non_root_user(run_dir: str, unique: str) -> None:
    # The console script's interpreter may live where nobody cannot read it
    # (e.g. under /root); then the same CLI runs through an interpreter nobody can use.
    cmd = _nobody_python()
    if cmd is None:
        missing("no Python interpreter with nslib is usable by uid 65534 on this host")
    r = subprocess.run(
        [*cmd, "--run-dir", run_dir, "add", unique],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
    )
    assert r.returncode == 1, r.stderr
    assert "not root" in r.stderr and "Traceback" not in r.stderr
    assert not Path(run_dir, unique).exists()
    r = subprocess.run(
        [*cmd, "ls", "--no-docker"], capture_output=True, text=True, cwd="/", timeout=60
    )
    assert r.returncode == 0
    assert "run as root" in r.stderr
