"""``nslib cni``: add, check, del, status and ls on the real plugins."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import missing

from nslib import named

PLUGIN_DIR = "/usr/lib/cni"


@pytest.fixture
def setup(run_dir: str, unique: str) -> Iterator[tuple[list[str], Path, str]]:
    if not os.access(os.path.join(PLUGIN_DIR, "bridge"), os.X_OK):
        missing(f"needs the CNI reference plugins in {PLUGIN_DIR}")
    base = Path(tempfile.mkdtemp(prefix=f"{unique}-cnicli-"))
    conf = base / "net.d"
    conf.mkdir()
    (conf / "10-n.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "nsltcli",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": unique[:15],
                        "ipam": {
                            "type": "host-local",
                            "subnet": "10.233.7.0/24",
                            "dataDir": str(base / "ipam"),
                        },
                    }
                ],
            }
        )
    )
    opts = ["--cache-dir", str(base / "cache"), "--conf-dir", str(conf), "--plugin-dir", PLUGIN_DIR]
    try:
        yield opts, base, unique
    finally:
        subprocess.run(["ip", "link", "del", unique[:15]], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


def _cli(run_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "nslib.cni.cli", *args]
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    # --run-dir is a global option of nslib; python -m nslib.cni.cli takes it first too
    return subprocess.run(argv[:3] + argv[3:], capture_output=True, text=True, env=env, check=False)


@pytest.mark.root
def test_cli_add_check_ls_del(setup: tuple[list[str], Path, str], run_dir: str) -> None:
    opts, _base, unique = setup
    name = f"{unique}a"
    named.create(name, run_dir=run_dir).close()
    try:
        ref = f"path:{run_dir}/{name}"
        r = _cli(run_dir, "add", "nsltcli", ref, "--json", *opts)
        assert r.returncode == 0, r.stderr
        result = json.loads(r.stdout)
        assert result["ips"][0]["address"].startswith("10.233.7.")
        assert _cli(run_dir, "check", "nsltcli", ref, *opts).returncode == 0
        ls = _cli(run_dir, "ls", "--json", *opts)
        [att] = json.loads(ls.stdout)
        assert att["network"] == "nsltcli" and att["netns"] == f"{run_dir}/{name}"
        table = _cli(run_dir, "ls", *opts).stdout
        assert "nsltcli" in table and "10.233.7." in table
        st = _cli(run_dir, "status", "nsltcli", *opts)
        assert st.returncode == 0 and "ready" in st.stdout
        assert _cli(run_dir, "del", "nsltcli", ref, *opts).returncode == 0
        assert json.loads(_cli(run_dir, "ls", "--json", *opts).stdout) == []
    finally:
        named.delete(name, run_dir=run_dir)


@pytest.mark.root
def test_cli_errors(setup: tuple[list[str], Path, str], run_dir: str) -> None:
    opts, base, _unique = setup
    r = _cli(run_dir, "add", "nosuchnet", f"path:{run_dir}/x", *opts)
    assert (
        r.returncode == 1
        and "no network named 'nosuchnet'" in r.stderr
        and "Traceback" not in r.stderr
    )
    r = _cli(run_dir, "add", "nsltcli", f"path:{run_dir}/none", *opts)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    bad = base / "bad.conflist"
    bad.write_text('{"cniVersion": "7.7.7", "name": "x", "plugins": [{"type": "a"}]}')
    r = _cli(run_dir, "add", str(bad), f"path:{run_dir}/none", *opts)
    assert r.returncode == 1 and "7.7.7" in r.stderr and "Traceback" not in r.stderr
    r = _cli(run_dir, "del", "nsltcli", *opts)
    assert r.returncode == 1 and "--container-id" in r.stderr
    r = _cli(run_dir, "add", "nsltcli", *opts)
    assert r.returncode == 2


@pytest.mark.root
def test_installed_nslib_entry_point(setup: tuple[list[str], Path, str], run_dir: str) -> None:
    # `nslib cni` is registered in nslib's own parser, not only `python -m nslib.cni.cli`.
    opts, _base, unique = setup
    exe = shutil.which("nslib", path=os.path.dirname(sys.executable))
    if exe is None:
        missing("needs the installed nslib entry point next to the test's Python")
    assert exe is not None
    name = f"{unique}e"
    named.create(name, run_dir=run_dir).close()
    env = {**os.environ, "PYTHONWARNINGS": "error"}

    def nslib_cni(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [exe, "--run-dir", run_dir, "cni", *args, *opts]
        return subprocess.run(argv, capture_output=True, text=True, env=env, check=False)

    try:
        assert "ls" in nslib_cni("--help").stdout
        r = nslib_cni("add", "nsltcli", name, "--ifname", "net7", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["ips"][0]["address"].startswith("10.233.7.")
        [att] = json.loads(nslib_cni("ls", "--json").stdout)
        # A bare NAME is a named namespace in --run-dir; the cache records its path.
        assert (att["ifName"], att["netns"]) == ("net7", f"{run_dir}/{name}")
        assert nslib_cni("check", "nsltcli", name, "--ifname", "net7").returncode == 0
        assert nslib_cni("del", "nsltcli", name, "--ifname", "net7").returncode == 0
        assert json.loads(nslib_cni("ls", "--json").stdout) == []
    finally:
        named.delete(name, run_dir=run_dir)
