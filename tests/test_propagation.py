"""Run-directory propagation check (``nslib._propagation``), in real mount namespaces
made with ``unshare -m`` around a fresh Python process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import missing

from nslib._procfs import read_mountinfo
from nslib._propagation import run_dir_propagation

pytestmark = pytest.mark.root

PROBE = (
    "import json, sys; from nslib._propagation import run_dir_propagation as p; "
    "r = p(sys.argv[1]); "
    "print(json.dumps([r.same_namespace, r.to_host, r.from_host, r.ok, r.message()]))"
)


def probe(propagation: str, run_dir: str) -> list[object]:
    if shutil.which("unshare") is None:
        missing("needs unshare (util-linux)")
    out = subprocess.run(
        ["unshare", "-m", f"--propagation={propagation}", sys.executable, "-c", PROBE, run_dir],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return list(json.loads(out))


def _host_shares(run_dir: str) -> bool:
    """The mount holding *run_dir* is shared in the host's mount namespace."""
    r = run_dir_propagation(run_dir)
    mounts = {m.mount_point: m for m in read_mountinfo("/proc/1/mountinfo")}
    return r.same_namespace and r.mount_point in mounts and bool(mounts[r.mount_point].shared_peer)


def test_same_namespace_is_fine() -> None:
    r = run_dir_propagation("/run/netns")
    assert r.same_namespace and r.known and r.ok and r.message() == ""


def test_private_mount_namespace_is_reported(tmp_path: Path) -> None:
    same, to_host, from_host, ok, message = probe("private", "/run/netns")
    assert not same and not to_host and not from_host and not ok
    assert "neither to nor from the host" in str(message) and "rshared" in str(message)


def test_slave_mount_namespace_only_receives() -> None:
    if not _host_shares("/run/netns"):
        pytest.fail("the host's /run is not a shared mount: cannot check the slave case")
    same, to_host, from_host, ok, message = probe("slave", "/run/netns")
    assert not same and not to_host and from_host and not ok
    assert "not to the host" in str(message)


def test_shared_mount_namespace_propagates() -> None:
    if not _host_shares("/run/netns"):
        pytest.fail("the host's /run is not a shared mount: cannot check the shared case")
    same, to_host, from_host, ok, message = probe("unchanged", "/run/netns")
    assert not same and to_host and from_host and ok and message == ""
