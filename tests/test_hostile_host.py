"""A hostile or careless host: odd names, odd run directories, odd mounts.

Whatever is thrown at the named-namespace API and the CLI gives a typed
error or a clean result: never a traceback, a leaked fd or mount, or a
change to the host.  Tests that could damage the mount table if the code
under test were wrong run inside a private mount namespace
(``unshare -m --propagation private``), so even a regression stays there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import PREFIX, open_fds
from hostile import HostileState, hostile_host_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nslib
from nslib import named
from nslib._procfs import read_mountinfo
from nslib.names import validate_run_dir

pytestmark = pytest.mark.root

CLI = [sys.executable, "-m", "nslib.cli"]


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileState]:
    with hostile_host_state() as state:
        yield state


# Other test runs and daemons mount and unmount on this host all the time:
# compare only the places these tests could damage.
_WATCHED = (b"/proc", b"/sys", b"/dev", b"/run", b"/var/run", b"/")


def _watched(point: bytes, extra: tuple[bytes, ...] = ()) -> bool:
    return point in _WATCHED or any(point == w or point.startswith(w + b"/") for w in extra)


def mount_table(*extra: bytes) -> list[tuple[bytes, bytes, bytes, tuple[bytes, ...]]]:
    return [
        (m.mount_point, m.fstype, m.root, m.optional)
        for m in read_mountinfo()
        if _watched(m.mount_point, (b"/proc", b"/sys", b"/dev", *extra))
    ]


def in_private_mount_ns(script: str, *args: str) -> dict[str, object]:
    """Run python *script* in a private mount namespace; return what it printed (JSON)."""
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", script, *args],
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    result: dict[str, object] = json.loads(r.stdout.splitlines()[-1])
    return result


# What a snippet uses: the mount table, and the CLI run as a user would.
_PRELUDE = textwrap.dedent(
    """
    import json, os, subprocess, sys, tempfile
    from nslib._procfs import read_mountinfo
    CLI = [sys.executable, "-m", "nslib.cli"]
    WATCH = [b"/proc", b"/sys", b"/dev", b"/run", b"/var/run", b"/"]
    def table(*extra):
        keep = lambda p: p in WATCH or any(p.startswith(w + b"/") for w in (*WATCH[:3], *extra))
        return sorted((m.mount_point.hex(), m.fstype.hex(), m.root.hex(), m.optional)
                      for m in read_mountinfo() if keep(m.mount_point))
    def cli(*args):
        r = subprocess.run([*CLI, *args], capture_output=True, text=True)
        return r.returncode, r.stderr
    """
)


def test_delete_does_not_follow_a_symlink_to_a_mount() -> None:
    # Before: `del evil` unmounted the tmpfs the symlink points at and exited 0.
    script = _PRELUDE + textwrap.dedent(
        """
        base = tempfile.mkdtemp()
        rd, target = os.path.join(base, "rd"), os.path.join(base, "tmpfs")
        os.mkdir(rd); os.mkdir(target)
        subprocess.run(["mount", "-t", "tmpfs", "victim", target], check=True)
        os.symlink(target, os.path.join(rd, "evil"))
        before = table(os.fsencode(base))
        status, err = cli("--run-dir", rd, "del", "evil")
        print(json.dumps({"status": status, "err": err, "same": table(os.fsencode(base)) == before,
                          "link": os.path.islink(os.path.join(rd, "evil"))}))
        """
    )
    out = in_private_mount_ns(script)
    assert out["same"], "the tmpfs behind the symlink was unmounted"
    assert out["status"] == 1 and "Traceback" not in str(out["err"])
    assert "symbolic link" in str(out["err"])
    assert out["link"]


def test_delete_refuses_the_run_directory_itself() -> None:
    # Before: `--run-dir /var/run del netns` unmounted the whole run directory.
    script = _PRELUDE + textwrap.dedent(
        """
        os.makedirs("/run/netns", exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "rundir", "/run/netns"], check=True)
        before = table()
        status, err = cli("--run-dir", "/var/run", "del", "netns")
        print(json.dumps({"status": status, "err": err, "same": table() == before}))
        """
    )
    out = in_private_mount_ns(script)
    assert out["same"], "the run directory's own mount was removed"
    assert out["status"] == 1 and "Traceback" not in str(out["err"])


@pytest.mark.parametrize(
    "args",
    [
        ["--run-dir", "/", "del", "proc"],
        ["--run-dir", "", "add", "x"],
        ["--run-dir", "/proc", "add", "x"],
        ["--run-dir", "/sys/fs", "add", "x"],
        ["--run-dir", "/dev/shm", "add", "x"],
        ["--run-dir", "/tmp/../proc/self", "ls"],
    ],
)
def test_senseless_run_dirs_are_refused_before_anything_is_mounted(args: list[str]) -> None:
    # Before: `--run-dir / del proc` took /proc away; `--run-dir ''` left a
    # shared self-bind in the current directory; `--run-dir /proc add x`
    # made /proc shared before it failed.
    script = _PRELUDE + textwrap.dedent(
        """
        cwd = tempfile.mkdtemp()
        os.chdir(cwd)
        before = table(os.fsencode(cwd))
        status, err = cli(*sys.argv[1:])
        after = table(os.fsencode(cwd))
        print(json.dumps({"status": status, "err": err, "same": after == before,
                          "cwd": os.listdir(cwd)}))
        """
    )
    out = in_private_mount_ns(script, *args)
    assert out["same"], "a mount or its propagation changed"
    assert out["status"] == 2, out["err"]
    assert "Traceback" not in str(out["err"]) and "refusing" in str(out["err"])
    assert out["cwd"] == []


@pytest.mark.parametrize(
    "bad", ["", "/", "/proc", "/proc/1", "/sys", "/dev", "/dev/shm", "/a/../sys"]
)
def test_every_run_dir_function_refuses(bad: str) -> None:
    # In a private mount namespace: a regression here would reshare or cover
    # the host's /, /proc or /dev (it did, on the code before this check).
    script = _PRELUDE + textwrap.dedent(
        """
        import nslib
        from nslib import named
        bad = sys.argv[1]
        calls = {
            "create": lambda: named.create("x", run_dir=bad),
            "delete": lambda: named.delete("x", run_dir=bad),
            "exists": lambda: named.exists("x", run_dir=bad),
            "list": lambda: named.list(run_dir=bad),
            "stale": lambda: named.stale(run_dir=bad),
            "repair": lambda: named.repair("x", run_dir=bad),
            "pids": lambda: named.pids("x", run_dir=bad),
            "status": lambda: named.run_dir_status(bad),
        }
        before = table()
        wrong = []
        for what, call in calls.items():
            try:
                call()
                wrong.append(what + ": no error")
            except nslib.InvalidReference:
                pass
            except Exception as e:
                wrong.append(f"{what}: {type(e).__name__}")
        print(json.dumps({"wrong": wrong, "same": table() == before}))
        """
    )
    out = in_private_mount_ns(script, bad)
    assert out["wrong"] == []
    assert out["same"]


def test_delete_refuses_another_kind_of_namespace(run_dir: str) -> None:
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "mnt")
    Path(path).touch()
    subprocess.run(["mount", "--bind", "/proc/self/ns/uts", path], check=True)
    try:
        with pytest.raises(nslib.NotANamespace):
            named.delete("mnt", run_dir=run_dir)
        assert any(m.mount_point == os.fsencode(path) for m in read_mountinfo())
    finally:
        subprocess.run(["umount", "-l", path], check=False)


def test_ebusy_says_which_mount_namespace_pins_the_name(run_dir: str, unique: str) -> None:
    # A placeholder that is itself a mount point of something else (here a
    # bind of a plain file under the namespace mount): removing the name
    # cannot unlink it, and the error must say who pins it.
    with named.create(unique, run_dir=run_dir):
        pass
    path = os.path.join(run_dir, unique)
    named.delete(unique, run_dir=run_dir)
    Path(path).touch()
    other = Path(run_dir).parent / "other-file"
    other.touch()
    subprocess.run(["mount", "--bind", str(other), path], check=True)
    with nslib.NsHandle.current() as here:
        named.attach(unique + "b", here, run_dir=run_dir)
    subprocess.run(["mount", "--bind", os.path.join(run_dir, unique + "b"), path], check=True)
    try:
        with pytest.raises(OSError) as e:
            named.delete(unique, run_dir=run_dir)
        assert e.value.errno == 16  # EBUSY
        mnt = os.stat("/proc/thread-self/ns/mnt").st_ino
        assert f"mnt:[{mnt}]" in str(e.value)
    finally:
        subprocess.run(["umount", "-l", path], check=False)
        named.delete(unique + "b", run_dir=run_dir)


def test_add_of_a_stale_name_says_how_to_repair_it(run_dir: str, unique: str) -> None:
    with named.create(unique, run_dir=run_dir):
        pass
    path = os.path.join(run_dir, unique)
    subprocess.run(["umount", path], check=True)  # a mount lost behind our back
    with pytest.raises(nslib.NamespaceExists, match="repair"):
        named.create(unique, run_dir=run_dir).close()
    r = subprocess.run([*CLI, "--run-dir", run_dir, "add", unique], capture_output=True, text=True)
    assert r.returncode == 1 and f"nslib repair {unique}" in r.stderr
    r = subprocess.run([*CLI, "--run-dir", run_dir, "repair", unique], capture_output=True)
    assert r.returncode == 0
    named.create(unique, run_dir=run_dir).close()
    named.delete(unique, run_dir=run_dir)


def test_a_create_in_progress_is_never_stale(run_dir: str, unique: str) -> None:
    # The placeholder is locked before it has a name (O_TMPFILE + linkat), so
    # no observer can see it unlocked and call it stale.
    named.create(f"{unique}x", run_dir=run_dir).close()  # the run directory exists
    path = os.path.join(run_dir, unique)
    work = named._Work()
    named._reserve(unique, path, run_dir, work)
    try:
        assert os.path.exists(path)
        assert unique not in named.stale(run_dir=run_dir)
        with pytest.raises(nslib.NamespaceExists, match="being created"):
            named.create(unique, run_dir=run_dir)
        with pytest.raises(nslib.NamespaceExists):
            named.repair(unique, run_dir=run_dir)
    finally:
        named._abandon(work, unique, None)
        work.close()
        named.delete(f"{unique}x", run_dir=run_dir)
    assert not os.path.exists(path)


def test_ls_escapes_untrusted_text(hostile: HostileState) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    r = subprocess.run(
        [*CLI, "--run-dir", hostile.run_dir, "ls", "--no-docker"], capture_output=True, env=env
    )
    assert r.returncode == 0, r.stderr
    assert b"\x1b" not in r.stdout and b"\x07" not in r.stdout
    assert not any(line.startswith(b"FORGED") for line in r.stdout.splitlines())
    assert b"ns-\\x1b[2J\\nFORGED ROW\\x07-\\xfe" in r.stdout
    r = subprocess.run(
        [*CLI, "--run-dir", hostile.run_dir, "ls", "--no-docker", "--json"],
        capture_output=True,
        env=env,
    )
    assert r.returncode == 0
    data = json.loads(r.stdout)
    names = [n for ns in data["namespaces"] for n in ns["names"]]
    assert names == [hostile.name]  # exact, surrogateescape for the byte 0xfe
    assert os.fsencode(names[0]).endswith(b"\xfe")


def test_mountinfo_parser_keeps_hostile_paths(hostile: HostileState) -> None:
    points = [m for m in read_mountinfo() if m.mount_point == hostile.mount_point]
    assert len(points) == 1 and points[0].fstype == b"tmpfs"


def _confined_run_dir(base: str, part: str) -> str | None:
    path = os.path.normpath(os.path.join(base, part))
    return path if path.startswith(base + "/") else None


_names = st.one_of(
    st.text(max_size=20),
    st.binary(max_size=20).map(os.fsdecode),
    st.sampled_from([".", "..", "a/b", "\0", "x" * 300, "-", "\x1b[2J", "a\nb"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=_names, part=st.text(max_size=12))
def test_hostile_names_and_run_dirs_give_typed_errors_or_clean_results(
    name: str, part: str
) -> None:
    base = tempfile.mkdtemp(prefix=f"{PREFIX}-hyp-")
    run_dir = _confined_run_dir(base, part) or base + "/netns"
    raw_base = os.fsencode(base)
    before = mount_table(raw_base)
    fds = open_fds()
    try:
        for call in (
            lambda: named.create(name, run_dir=run_dir).close(),
            lambda: named.exists(name, run_dir=run_dir),
            lambda: named.stale(run_dir=run_dir),
            lambda: named.delete(name, run_dir=run_dir),
        ):
            try:
                call()
            except nslib.NslibError:
                pass
            except (OSError, ValueError) as e:  # e.g. ENAMETOOLONG from the kernel
                assert isinstance(e, OSError), f"untyped {type(e).__name__}: {e}"
        r = (
            subprocess.run(
                [*CLI, "--run-dir", run_dir, "del", name], capture_output=True, timeout=60
            )
            if "\0" not in name and "\0" not in run_dir
            else None
        )
        if r is not None:
            assert r.returncode in (0, 1, 2) and b"Traceback" not in r.stderr
    finally:
        # The run directory's self-bind is set-up, not a leak: remove it here.
        for m in sorted(read_mountinfo(), key=lambda m: -len(m.mount_point)):
            if m.mount_point.startswith(os.fsencode(base) + b"/"):
                subprocess.run([b"umount", b"-l", m.mount_point], check=False)
        subprocess.run(["rm", "-rf", base], check=False)
    assert mount_table(raw_base) == before
    assert open_fds() == fds


def test_validate_run_dir_keeps_sane_ones() -> None:
    assert validate_run_dir(None) == "/run/netns"
    assert validate_run_dir("/tmp/x") == "/tmp/x"
    assert validate_run_dir("/procfoo") == "/procfoo"
