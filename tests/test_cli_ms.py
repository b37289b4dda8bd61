"""``nslib ms ls`` and ``nslib ms watch`` with each runtime (``--source``), run as a user would.

Each runtime is a private daemon started by the suite: dockerd (the session
fixture), a ``podman system service`` (``tests/podmand.py``) and a containerd
(``tests/containerd_harness.py``).  The CLI finds podman through
``CONTAINER_HOST`` and containerd through ``CONTAINERD_ADDRESS``, as their own
tools do; the default source is the first of docker, podman and containerd
that answers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.root, pytest.mark.docker]


def _script() -> str:
    beside = Path(sys.executable).parent / "nslib"
    if beside.exists():
        return str(beside)
    found = shutil.which("nslib")
    assert found, "the nslib console script is not installed (pip install -e .)"
    return found


NSLIB = _script()
#: A label a hostile container could carry: a terminal escape and a newline.
HOSTILE = "\x1b]0;pwned\x07\nFAKE"


def nslib_cmd(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [NSLIB, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd="/",
    )
    assert "Traceback" not in r.stderr, r.stderr
    return r


def nowhere(tmp: Path) -> dict[str, str]:
    """No docker, podman or containerd at the addresses the CLI tries."""
    return {
        "DOCKER_HOST": f"unix://{tmp}/no-docker.sock",
        "CONTAINER_HOST": f"unix://{tmp}/no-podman.sock",
        "CONTAINERD_ADDRESS": f"{tmp}/no-containerd.sock",
    }


def ls_json(*args: str, env: dict[str, str]) -> list[dict[str, Any]]:
    r = nslib_cmd("ms", "ls", "--json", *args, env=env)
    assert r.returncode == 0, r.stderr
    out: list[dict[str, Any]] = json.loads(r.stdout)
    return out


def watch_until(args: list[str], env: dict[str, str], start: Any, label: str) -> dict[str, Any]:
    """Run ``ms watch --json *args*``, call *start* once it watches, return *label*'s event."""
    proc = subprocess.Popen(
        [NSLIB, "ms", "watch", "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        time.sleep(1.0)  # let it sync first (a replayed STARTED would do as well)
        start()
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            rec: dict[str, Any] = json.loads(line)
            if rec["label"] == label:
                proc.terminate()
                assert proc.wait(10) == 0
                return rec
        raise AssertionError(f"no event for {label!r}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


# -- arguments and the default --------------------------------------------------------


@pytest.mark.parametrize("bad", ["bogus", "docker:x", "podman:x", "containerd:", ""])
def test_bad_source_is_a_usage_error(bad: str) -> None:
    for verb in ("ls", "watch"):
        r = nslib_cmd("ms", verb, "--source", bad)
        assert r.returncode == 2, r.stderr
        assert "not a source" in r.stderr


def test_nothing_answers(tmp_path: Path) -> None:
    env = nowhere(tmp_path)
    for args in (["ms", "ls"], ["ms", "ls", "--json"], ["ms", "watch"]):
        r = nslib_cmd(*args, env=env, timeout=30)
        assert r.returncode == 1, r.stderr
        assert "docker daemon not reachable" in r.stderr
        for key in ("DOCKER_HOST", "CONTAINER_HOST", "CONTAINERD_ADDRESS"):
            assert env[key].removeprefix("unix://") in r.stderr  # every address it tried
        assert "--source" in r.stderr
    r = nslib_cmd("ms", "ls", "--source", "podman", env=env)
    assert r.returncode == 1 and "podman not reachable" in r.stderr, r.stderr
    r = nslib_cmd("ms", "ls", "--source", "containerd:k8s.io", env=env)
    assert r.returncode == 1 and "containerd not reachable" in r.stderr, r.stderr


# -- docker -------------------------------------------------------------------------------


def test_docker_source_column_and_escaping(
    dockerd: Any, docker_client: Any, unique: str, tmp_path: Path
) -> None:
    from dockerd import run_container

    label = f"{unique}{HOSTILE}"
    env = {**nowhere(tmp_path), "DOCKER_HOST": dockerd.base_url}
    c = run_container(docker_client, label=label)
    try:
        for args in ([], ["--source", "docker"]):  # the default finds docker first
            [entry] = [e for e in ls_json(*args, env=env) if e["label"] == label]
            assert entry["container_id"] == c.id
            assert entry["source"] == "docker" and entry["pod"] is None
        r = nslib_cmd("ms", "ls", env=env)
        assert r.returncode == 0, r.stderr
        header, *rows = r.stdout.splitlines()
        assert header.split()[:5] == ["LABEL", "CONTAINER", "NAME", "SOURCE", "PID"]
        [row] = [x for x in rows if x.startswith(unique)]
        assert "\x1b" not in r.stdout and "\x07" not in r.stdout
        assert row.startswith(f"{unique}\\x1b]0;pwned\\x07\\nFAKE")  # one row, escaped
        assert not any(x.startswith("FAKE") for x in rows)
        assert c.id[:12] in row and " docker " in row
    finally:
        c.remove(force=True)


# -- podman -------------------------------------------------------------------------------


def test_podman_ls_watch_and_default(podman: Any, unique: str, tmp_path: Path) -> None:
    env = {**nowhere(tmp_path), "CONTAINER_HOST": podman.url}
    ids: list[str] = []
    try:
        rec = watch_until(
            ["--source", "podman"], env, lambda: ids.append(podman.run(unique)), unique
        )
        assert rec["kind"] == "started" and rec["source"] == "podman"
        assert rec["container_id"] == ids[0]
        for args in (["--source", "podman"], []):  # docker does not answer: podman does
            [entry] = [e for e in ls_json(*args, env=env) if e["label"] == unique]
            assert entry["container_id"] == ids[0] and entry["source"] == "podman"
            assert entry["pid"] == podman.inspect(ids[0])["State"]["Pid"]

        pod_id, _infra = podman.create_pod()
        member = podman.run(f"{unique}{HOSTILE}", pod=pod_id)
        ids.append(member)
        [entry] = [e for e in ls_json(env=env) if e["container_id"] == member]
        assert entry["pod"] == pod_id and entry["label"] == f"{unique}{HOSTILE}"
        r = nslib_cmd("ms", "ls", "--source", "podman", env=env)
        assert r.returncode == 0 and "\x1b" not in r.stdout, r.stderr
        [row] = [x for x in r.stdout.splitlines() if member[:12] in x]
        assert row.startswith(f"{unique}\\x1b]0;pwned") and " podman " in row
    finally:
        for cid in ids:
            podman.cli("rm", "-f", "-t", "0", cid, check=False)
        podman.cli("pod", "rm", "-af", check=False)


# -- containerd ---------------------------------------------------------------------------


def test_containerd_namespaces_watch_and_default(ctrd: Any, unique: str, tmp_path: Path) -> None:
    env = {**nowhere(tmp_path), "CONTAINERD_ADDRESS": ctrd.address}
    made: list[tuple[str, str]] = []
    try:
        rec = watch_until(
            ["--source", "containerd"],
            env,
            lambda: made.append((ctrd.run(unique), "default")),
            unique,
        )
        cid = made[0][0]
        assert rec["kind"] == "started" and rec["source"] == "containerd:default"
        assert rec["container_id"] == cid and rec["pid"] == ctrd.task_pid(cid)
        for args in (["--source", "containerd"], ["--source", "containerd:default"], []):
            [entry] = [e for e in ls_json(*args, env=env) if e["label"] == unique]
            assert entry["container_id"] == cid and entry["source"] == "containerd:default"

        k8s = ctrd.run(f"{unique}-k", namespace="k8s.io")
        made.append((k8s, "k8s.io"))
        entries = ls_json("--source", "containerd:k8s.io", env=env)
        assert [e["container_id"] for e in entries if e["label"].startswith(unique)] == [k8s]
        assert entries[0]["source"] == "containerd:k8s.io"
        r = nslib_cmd("ms", "ls", "--source", "containerd:k8s.io", env=env)
        assert r.returncode == 0, r.stderr
        [row] = [x for x in r.stdout.splitlines() if x.startswith(f"{unique}-k")]
        assert k8s in row and "containerd:k8s.io" in row  # containerd IDs are shown whole
    finally:
        for cid, ns in made:
            ctrd.remove(cid, namespace=ns)
