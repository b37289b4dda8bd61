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


# -- the hooks: named.create warns, nslib ls says so ------------------------------------

CREATE = """
import json, os, sys, warnings
from nslib import named
run_dir, name, mode = sys.argv[1:4]
before = set(os.listdir("/proc/self/fd"))
caught, raised = [], None
with warnings.catch_warnings(record=mode == "record") as log:
    if mode == "error":
        warnings.simplefilter("error", RuntimeWarning)
    else:
        warnings.simplefilter("always")
    try:
        named.create(name, run_dir=run_dir).close()
    except RuntimeWarning as e:
        raised = str(e)
    caught = [(w.category.__name__, str(w.message)) for w in log or []]
named.delete(name, run_dir=run_dir)
leaked = sorted(set(os.listdir("/proc/self/fd")) - before)
print(json.dumps({"caught": caught, "raised": raised, "leaked": leaked}))
"""


def run_create(run_dir: str, name: str, mode: str, *, private: bool) -> dict[str, object]:
    if shutil.which("unshare") is None:
        missing("needs unshare (util-linux)")
    prefix = ["unshare", "-m", "--propagation", "private"] if private else []
    r = subprocess.run(
        [*prefix, sys.executable, "-c", CREATE, run_dir, name, mode],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout.splitlines()[-1])
    return out


def test_create_warns_in_a_private_mount_namespace(run_dir: str, unique: str) -> None:
    out = run_create(run_dir, unique, "record", private=True)
    [(category, message)] = out["caught"]  # type: ignore[misc]
    assert category == "RuntimeWarning"
    assert run_dir in message and "neither to nor from the host" in message
    assert out["leaked"] == []
    # Warnings made errors: create raises it and leaks no handle (the name is deleted after).
    out = run_create(run_dir, unique, "error", private=True)
    assert "rshared" in str(out["raised"]) and out["leaked"] == []


def test_create_is_silent_in_the_hosts_mount_namespace(run_dir: str, unique: str) -> None:
    out = run_create(run_dir, unique, "record", private=False)
    assert out == {"caught": [], "raised": None, "leaked": []}


CACHE = """
import ctypes, json, os, sys, threading
from nslib import _propagation as prop
run_dir = sys.argv[1]
calls = []
real = prop.run_dir_propagation
prop.run_dir_propagation = lambda d: calls.append(d) or real(d)
out = {"host": [prop.run_dir_propagation_cached(run_dir).ok for _ in range(3)]}
out["host_calls"] = len(calls)
def other_ns():
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.unshare(0x00020000) == 0, ctypes.get_errno()  # CLONE_NEWNS, this thread only
    assert libc.mount(b"none", b"/", None, (1 << 18) | (1 << 14), None) == 0  # MS_PRIVATE|MS_REC
    out["private"] = [prop.run_dir_propagation_cached(run_dir).ok for _ in range(2)]
    out["private_calls"] = len(calls)
t = threading.Thread(target=other_ns)
t.start(); t.join()
out["host_again"] = prop.run_dir_propagation_cached(run_dir).ok
out["calls"] = len(calls)
print(json.dumps(out))
"""


def test_cached_answer_follows_the_mount_namespace(run_dir: str) -> None:
    # One check per (mount namespace, run dir, its mount's peer groups): a
    # thread that moved to a private mount namespace gets a fresh answer.
    r = subprocess.run(
        [sys.executable, "-c", CACHE, run_dir], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["host"] == [True] * 3 and out["host_calls"] == 1
    assert out["private"] == [False] * 2 and out["private_calls"] == 2
    assert out["host_again"] is True and out["calls"] == 2


def test_cached_answer_follows_a_remount(tmp_path: Path) -> None:
    # Binding the directory onto itself changes its mount's peer groups: checked again.
    from nslib import _propagation as prop

    d = tmp_path / "rd"
    d.mkdir()
    calls: list[str] = []
    real = prop.run_dir_propagation

    def counting(run_dir: str = "/run/netns") -> prop.Propagation:
        calls.append(run_dir)
        return real(run_dir)

    prop.run_dir_propagation = counting  # type: ignore[assignment]
    mounted = False
    try:
        assert prop.run_dir_propagation_cached(str(d)).ok
        assert prop.run_dir_propagation_cached(str(d)).ok and len(calls) == 1
        subprocess.run(["mount", "--bind", str(d), str(d)], check=True)
        mounted = True
        subprocess.run(["mount", "--make-private", str(d)], check=True)
        assert prop.run_dir_propagation_cached(str(d)).ok  # same namespace: still fine
        assert len(calls) == 2
    finally:
        prop.run_dir_propagation = real  # type: ignore[assignment]
        if mounted:
            subprocess.run(["umount", str(d)], check=True)


def test_nslib_ls_says_so(run_dir: str) -> None:
    if shutil.which("unshare") is None:
        missing("needs unshare (util-linux)")
    cli = [sys.executable, "-m", "nslib.cli", "--run-dir", run_dir, "ls", "--no-docker"]
    for args in ([], ["--json"]):
        r = subprocess.run(
            ["unshare", "-m", "--propagation", "private", *cli, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        [line] = [x for x in r.stderr.splitlines() if "propagates" in x]
        assert line.startswith("nslib: warning: run directory ") and run_dir in line
        if args:
            json.loads(r.stdout)  # stdout stays pure JSON
    r = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "propagates" not in r.stderr, r.stderr


def test_nslib_add_warns_in_one_escaped_line(run_dir: str, unique: str) -> None:
    # The CLI prints a library warning as "nslib: warning: ...", not in
    # Python's "file:line: RuntimeWarning" form.
    if shutil.which("unshare") is None:
        missing("needs unshare (util-linux)")
    cli = f"{sys.executable} -m nslib.cli --run-dir {run_dir}"
    r = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"{cli} add {unique} && {cli} del {unique}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    [line] = r.stderr.splitlines()
    assert line.startswith("nslib: warning: run directory ") and "propagates" in line
    assert "RuntimeWarning" not in r.stderr and ".py:" not in r.stderr
