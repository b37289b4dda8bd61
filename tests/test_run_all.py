"""``run_all`` and ``nslib exec --all`` against ``ip -all netns exec``.

``ip -all`` only knows the host's ``/run/netns``, so the side-by-side tests
make names there with the suite's prefix (and remove them); both tools see
whatever else is in that directory too, so only the suite's blocks are
compared.  Semantics that need no ``ip`` use a private run directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from helpers import PREFIX

from nslib import named
from nslib._run_all import exit_status, run_all

pytestmark = pytest.mark.root

# Prints the namespace's own identity, so a block run in the wrong namespace shows.
PROBE = ["sh", "-c", "stat -L -c %i /proc/self/ns/net; exit 3"]


@pytest.fixture
def host_names() -> Iterator[list[str]]:
    tag = uuid.uuid4().hex[:4]
    names = [f"{PREFIX}r{tag}{i}" for i in range(3)]
    try:
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True)
        yield names
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], check=False)


def blocks(text: str) -> dict[str, str]:
    """``ip -all netns exec`` output split into name -> that name's output."""
    out: dict[str, str] = {}
    assert text == "" or text.startswith("\nnetns: "), text[:80]
    for chunk in text.split("\nnetns: ")[1:]:
        name, _, body = chunk.partition("\n")
        out[name] = body
    return out


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nslib.cli", *args], capture_output=True, text=True, check=False
    )


def test_output_and_status_like_ip(host_names: list[str]) -> None:
    theirs = subprocess.run(["ip", "-all", "netns", "exec", *PROBE], capture_output=True, text=True)
    ours = cli("exec", "--all", "--", *PROBE)
    assert (ours.returncode, theirs.returncode) == (0, 0)  # a failing command is no failure
    a, b = blocks(theirs.stdout), blocks(ours.stdout)
    for n in host_names:
        ino = str(os.stat(f"/run/netns/{n}").st_ino)
        assert a[n] == b[n] == ino + "\n"
    # Same order: directory order.
    order = [n for n in b if n in host_names]
    assert order == [n for n in a if n in host_names]


def test_a_command_killed_by_a_signal_stops_the_round(host_names: list[str]) -> None:
    kill = ["sh", "-c", "kill -9 $$"]
    theirs = subprocess.run(["ip", "-all", "netns", "exec", *kill], capture_output=True, text=True)
    ours = cli("exec", "--all", "--", *kill)
    assert (ours.returncode, theirs.returncode) == (1, 1)
    assert len(blocks(ours.stdout)) == len(blocks(theirs.stdout)) == 1


def test_missing_program_goes_on(host_names: list[str]) -> None:
    prog = f"{PREFIX}-no-such-program"
    theirs = subprocess.run(["ip", "-all", "netns", "exec", prog], capture_output=True, text=True)
    ours = cli("exec", "--all", "--", prog)
    assert ours.returncode == 0
    line = f'exec of "{prog}" failed: No such file or directory'
    assert theirs.stderr.count(line) == len(blocks(theirs.stdout))
    assert ours.stderr.count(line) == len(blocks(ours.stdout))


def test_api_in_a_private_run_dir(run_dir: str) -> None:
    made = {}
    for n in ("b", "a", "c"):
        with named.create(n, run_dir=run_dir) as h:
            made[n] = h.ns_id[1]
    open(os.path.join(run_dir, "stale"), "w").close()  # not a namespace: skipped
    res = run_all(PROBE, run_dir=run_dir, capture_output=True, text=True)
    assert list(res) == [n for n in os.listdir(run_dir) if n != "stale"]
    for n, r in res.items():
        assert (r.returncode, r.stdout) == (3, f"{made[n]}\n")
    assert exit_status(res) == 0
    killed = run_all(["sh", "-c", "kill -9 $$"], run_dir=run_dir, capture_output=True)
    assert len(killed) == 1 and exit_status(killed) == 1
    assert run_all(["true"], run_dir=os.path.join(run_dir, "missing")) == {}
    with pytest.raises(ValueError):
        run_all([], run_dir=run_dir)


def test_header_escapes_names(run_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    named.create("evil\x1b[2J", run_dir=run_dir).close()
    run_all(["true"], run_dir=run_dir, etc=False)
    assert capsys.readouterr().out == "\nnetns: evil\\x1b[2J\n"
