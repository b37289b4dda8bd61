"""The README's first command, end to end: `nslib demo` on the real host."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import missing

import nslib.named

pytestmark = [pytest.mark.root, pytest.mark.slow]

NSLIB = Path(sys.executable).parent / "nslib"


def _tag(out: str) -> str:
    """The run's own tag (``nsdemo<pid>``), from the demo's first line."""
    m = re.search(r"'(nsdemo\d+)-left'", out)
    assert m, f"no demo tag in the output: {out[:300]!r}"
    return m.group(1)


def _demo_leftovers(tag: str) -> list[str]:
    """Anything the demo run tagged *tag* left on the host; removed here, so
    that a failing run does not leave it behind."""
    names = [n for n in nslib.named.list() if n.startswith(f"{tag}-")]
    for name in names:
        nslib.named.delete(name)
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=org.nslib.demo={tag}"],
        capture_output=True,
        text=True,
        check=False,
    )
    containers = out.stdout.split()
    if containers:
        subprocess.run(["docker", "rm", "-f", *containers], capture_output=True, check=False)
    return names + [f"container {c}" for c in containers]


def _system_docker() -> None:
    import docker

    try:
        client = docker.from_env(timeout=5)
    except Exception as e:
        missing(f"the system docker daemon does not answer ({e}); scripts/host-setup.sh starts it")
    try:
        client.ping()
    finally:
        client.close()


@pytest.mark.docker
def test_demo_runs_end_to_end_and_leaves_nothing() -> None:
    _system_docker()
    assert NSLIB.exists(), f"console script missing: {NSLIB}"
    proc = subprocess.run(
        [str(NSLIB), "demo"],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=300,
        check=False,
    )
    out = proc.stdout
    left = _demo_leftovers(_tag(out))
    assert proc.returncode == 0, out + proc.stderr
    # Both pings (through the route, and into the container) went through.
    assert out.count(" 0% packet loss") == 2, out
    assert "status: PENDING (no container yet)" in out
    assert "eth1: inet 10.231.2.2/30" in out
    assert "[8/8] nslib ls" in out
    assert "host left as found" in out
    assert left == []
    # The docker client is closed after everything that uses it (the
    # container's removal, the tracker's stop); only namespaces go after it.
    teardown = out.split("\nteardown:", 1)[1].splitlines()
    undone = [line.strip()[2:] for line in teardown if line.startswith("  - ")]
    docker_steps = [u for u in undone if "namespace" not in u]
    assert docker_steps[-1] == "close docker client", undone
    assert any(u.startswith("remove container") for u in docker_steps[:-1]), undone
    assert "stop tracker" in docker_steps[:-1], undone
    assert not [u for u in undone if "FAILED" in u], undone


def test_demo_without_docker_still_builds_the_namespace_part() -> None:
    env = dict(os.environ, DOCKER_HOST="unix:///nonexistent/docker.sock")
    proc = subprocess.run(
        [str(NSLIB), "demo"],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=120,
        env=env,
        check=False,
    )
    out = proc.stdout
    left = _demo_leftovers(_tag(out))
    assert proc.returncode == 0, out + proc.stderr
    assert "skipped, docker is not available" in out
    assert out.count(" 0% packet loss") == 1
    assert "host left as found" in out
    assert left == []


def test_demo_interrupted_tears_down() -> None:
    env = dict(os.environ, DOCKER_HOST="unix:///nonexistent/docker.sock", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [str(NSLIB), "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="backslashreplace",
        env=env,
    )
    assert proc.stdout is not None
    # A demo stuck in its teardown must fail this test, not hang the suite.
    killer = threading.Timer(120, proc.kill)
    killer.start()
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("[3/"):  # namespaces and the veth pair exist now
                proc.send_signal(signal.SIGTERM)
                break
        rest = ""
        for line in proc.stdout:
            rest += line
            if line.startswith("teardown:"):
                # Impatient signals during the teardown must not cut it short.
                proc.send_signal(signal.SIGTERM)
                proc.send_signal(signal.SIGINT)
        rest += proc.stdout.read()
        proc.stdout.close()
        code = proc.wait(timeout=60)
    finally:
        killer.cancel()
    out = "".join(seen) + rest
    left = _demo_leftovers(_tag(out))
    assert code == 130, out
    assert "interrupted: tearing down" in out
    assert "host left as found" in out
    assert left == []
