"""The nsenter/lsns side of the CLI: ``nslib exec --target PID ...`` and ``nslib ls --kind``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import missing

pytestmark = pytest.mark.root

PROBE = ["sh", "-c", "readlink /proc/self/ns/*; hostname; head -3 /proc/self/mountinfo; id"]
HOSTNAME = "nslib-cli-target"


def nslib_cmd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "nslib"
    exe = str(script) if script.exists() else shutil.which("nslib")
    assert exe, "the nslib console script is not installed (pip install -e .)"
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, cwd="/")
    assert "Traceback" not in r.stderr, r.stderr
    return r


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        missing(f"needs {tool} (util-linux)")


@contextlib.contextmanager
def unshared(*flags: str) -> Iterator[int]:
    need("unshare")
    ours = os.readlink("/proc/thread-self/ns/uts")
    rename = f'[ "$(readlink /proc/self/ns/uts)" != "{ours}" ] && hostname {HOSTNAME}'
    proc = subprocess.Popen(
        ["unshare", *flags, "--kill-child", "sh", "-c",
         f"{rename}; echo ok; exec >/dev/null; exec sleep 600"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        with proc.stdout:
            assert proc.stdout.readline() == b"ok\n"
        (child,) = (
            Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            .read_text(errors="surrogateescape")
            .split()
        )
        yield int(child)
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def target() -> Iterator[int]:
    before = socket.gethostname()
    with unshared("-fmuinpC", "--mount-proc") as pid:
        yield pid
    assert socket.gethostname() == before


def nsenter(*args: str) -> subprocess.CompletedProcess[str]:
    need("nsenter")
    return subprocess.run(["nsenter", *args], capture_output=True, text=True, timeout=30)


def test_exec_target_all_is_nsenter_a(target: int) -> None:
    ours = nslib_cmd("exec", "--target", str(target), "--all", "--", *PROBE)
    theirs = nsenter("-a", "-t", str(target), *PROBE)
    assert (ours.returncode, ours.stderr) == (0, "")
    assert ours.stdout == theirs.stdout and HOSTNAME in ours.stdout


def test_exec_some_kinds_and_files(target: int) -> None:
    ours = nslib_cmd("exec", "-t", str(target), "--uts", "--net", "--", *PROBE)
    theirs = nsenter("-t", str(target), "-u", "-n", *PROBE)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout
    by_file = nslib_cmd("exec", f"--uts=/proc/{target}/ns/uts", "--", "hostname")
    assert (by_file.returncode, by_file.stdout) == (0, f"{HOSTNAME}\n")


def test_exec_exit_statuses(target: int) -> None:
    t = str(target)
    assert nslib_cmd("exec", "-t", t, "--all", "--", "sh", "-c", "exit 7").returncode == 7
    killed = nslib_cmd("exec", "-t", t, "--all", "--", "sh", "-c", "kill -TERM $$")
    assert killed.returncode == 128 + 15
    missing_cmd = nslib_cmd("exec", "-t", t, "--all", "--", "nslib-no-such-command")
    assert missing_cmd.returncode == 127 and "command not found" in missing_cmd.stderr
    # One's own user namespace cannot be re-entered: the kind is named.
    own_user = nslib_cmd("exec", "-t", t, "--user", "--", "true")
    assert own_user.returncode == 125 and "user namespace" in own_user.stderr
    gone = nslib_cmd("exec", "-t", str(2**22 + 1), "--all", "--", "true")
    assert gone.returncode == 125 and "no process" in gone.stderr
    usage = nslib_cmd("exec", "--all", "--uts=/proc/1/ns/uts", "--", "true")
    assert usage.returncode == 2


def test_ls_kind_all_json_covers_lsns(target: int) -> None:
    need("lsns")

    def lsns() -> set[tuple[object, object]]:
        raw = json.loads(subprocess.run(["lsns", "-J"], capture_output=True, text=True).stdout)
        flat: list[dict[str, object]] = []

        def walk(items: list[dict[str, object]]) -> None:
            for item in items:
                flat.append(item)
                walk(item.get("children", []))  # type: ignore[arg-type]

        walk(raw["namespaces"])
        return {(n["type"], n["ns"]) for n in flat}

    # Other programs start and stop processes meanwhile: what lsns saw both
    # before and after our scan was there during it.
    before = lsns()
    ours = nslib_cmd("ls", "--kind", "all", "--json")
    stable = before & lsns()
    assert ours.returncode == 0, ours.stderr
    listed = {(e["type"], e["ns"]) for e in json.loads(ours.stdout)["namespaces"]}
    assert stable <= listed
    uts = int(os.readlink(f"/proc/{target}/ns/uts")[5:-1])
    assert ("uts", uts) in listed


def test_ls_kind_one_and_table_escapes(target: int) -> None:
    only = json.loads(nslib_cmd("ls", "--kind", "uts", "--json").stdout)["namespaces"]
    assert {e["type"] for e in only} == {"uts"}
    # A command line with an escape sequence is shown escaped, never raw.
    proc = subprocess.Popen(
        ["unshare", "-u", "--kill-child", "sh", "-c", "sleep 600; :", "\x1b[2J"],
        start_new_session=True,  # sh forks sleep: the group is killed, not just unshare
    )
    try:
        table = nslib_cmd("ls", "--kind", "uts")
        assert table.returncode == 0
        assert "\x1b" not in table.stdout
        assert table.stdout.splitlines()[0].split()[:3] == ["NS", "TYPE", "NPROCS"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    default = json.loads(nslib_cmd("ls", "--json", "--no-docker").stdout)
    assert "run_dir" in default  # plain `nslib ls` is still the network inventory
