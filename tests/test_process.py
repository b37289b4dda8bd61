"""nslib.popen / nslib.run / execvp: children inside a namespace, the parent never moves."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import PREFIX, open_fds, thread_ns

import nslib
from nslib import named
from nslib.process import popen, run

pytestmark = pytest.mark.root

READ_NS = ["readlink", "/proc/self/ns/net"]
#: Run as root with every capability dropped.
UNPRIVILEGED = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]


def ns_link(h: nslib.NsHandle) -> str:
    return f"net:[{h.ns_id[1]}]"


def task_count() -> int:
    return len(os.listdir("/proc/self/task"))


def settled_task_count(target: int) -> int:
    """The thread count once helper threads (which exit just after handing over) are gone."""
    deadline = time.monotonic() + 5
    while task_count() > target and time.monotonic() < deadline:
        time.sleep(0.01)
    return task_count()


@pytest.fixture
def named_ns(unique: str, run_dir: str) -> Iterator[tuple[str, str, nslib.NsHandle]]:
    """A named namespace in a private run dir: (name, run_dir, handle)."""
    h = named.create(unique, run_dir=run_dir)
    try:
        yield unique, run_dir, h
    finally:
        h.close()
        named.delete(unique, run_dir=run_dir)


@pytest.fixture
def sleeper(netns: nslib.NsHandle) -> Iterator[subprocess.Popen[bytes]]:
    """A process living in *netns* (started with etc=False)."""
    proc = popen(netns, ["sleep", "60"], etc=False)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


# -- the child is in the namespace, the parent is not ---------------------------------


@pytest.mark.parametrize("etc", [True, False])
def test_child_runs_in_the_namespace(
    netns: nslib.NsHandle, etc: bool, home_ns: tuple[int, int], fd_baseline: set[int]
) -> None:
    r = run(netns, READ_NS, etc=etc, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == ns_link(netns)
    assert thread_ns() == home_ns


def test_every_reference_kind(
    named_ns: tuple[str, str, nslib.NsHandle],
    netns: nslib.NsHandle,
    sleeper: subprocess.Popen[bytes],
    home_ns: tuple[int, int],
) -> None:
    name, run_dir, h = named_ns
    cases: list[tuple[object, nslib.NsHandle]] = [
        (h, h),
        (nslib.NetNamespace.named(name), h),
        (name, h),
        (f"name:{name}", h),
        (f"pid:{sleeper.pid}", netns),
        (nslib.NetNamespace.pid(sleeper.pid), netns),
        (f"path:{run_dir}/{name}", h),
        (f"{run_dir}/{name}", h),  # a string with '/' is a path
        (Path(run_dir) / name, h),
        (netns.fileno(), netns),
    ]
    for ref, expected in cases:
        r = run(ref, READ_NS, run_dir=run_dir, capture_output=True, text=True, check=True)  # type: ignore[arg-type]
        assert r.stdout.strip() == ns_link(expected), ref
    assert thread_ns() == home_ns


def test_popen_returns_a_live_popen(netns: nslib.NsHandle, fd_baseline: set[int]) -> None:
    with popen(netns, ["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        assert isinstance(proc, subprocess.Popen)
        out, _ = proc.communicate(b"hello", timeout=10)
    assert out == b"hello"
    assert proc.returncode == 0


# -- ip netns exec semantics ------------------------------------------------------------


def test_sys_shows_the_namespace_interfaces(netns: nslib.NsHandle, unique: str) -> None:
    a, b = unique[:13] + "va", unique[:13] + "vb"
    # A veth pair inside the namespace; it dies with it.
    run(netns, ["ip", "link", "add", a, "type", "veth", "peer", "name", b], etc=False, check=True)
    r = run(netns, ["ls", "/sys/class/net"], capture_output=True, text=True, check=True)
    assert sorted(r.stdout.split()) == sorted(["lo", a, b])
    # etc=False shares the host's mounts: its /sys is the host's view.
    r = run(netns, ["ls", "/sys/class/net"], etc=False, capture_output=True, text=True)
    assert a not in r.stdout.split()
    # The parent's /sys is untouched.
    assert a not in os.listdir("/sys/class/net")
    assert "lo" in os.listdir("/sys/class/net")


def etc_sys_mounts() -> list[str]:
    """Our mount table's entries at or under /etc and /sys (others' tests churn the rest)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_bytes().splitlines():  # bytes: hosts are hostile
        point = line.split()[4]
        if point in (b"/etc", b"/sys") or point.startswith((b"/etc/", b"/sys/")):
            found.append(os.fsdecode(line))
    return found


def test_etc_netns_files_are_bound(
    named_ns: tuple[str, str, nslib.NsHandle], etc_netns_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name, run_dir, _ = named_ns
    ours = f"nameserver 192.0.2.53\n# {name}\n"
    (etc_netns_dir / "resolv.conf").write_text(ours)
    (etc_netns_dir / f"{PREFIX}-absent.conf").write_text("x\n")  # no /etc/<that>: a warning
    host_before = Path("/etc/resolv.conf").read_bytes()
    mounts_before = etc_sys_mounts()
    with caplog.at_level(logging.WARNING, logger="nslib.process"):
        r = run(name, ["cat", "/etc/resolv.conf"], run_dir=run_dir, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ours
    assert any(f"{PREFIX}-absent.conf" in rec.getMessage() for rec in caplog.records)
    # The host's /etc and mount table never changed.
    assert Path("/etc/resolv.conf").read_bytes() == host_before
    assert etc_sys_mounts() == mounts_before
    # etc=False: no binds.
    r = run(name, ["cat", "/etc/resolv.conf"], etc=False, run_dir=run_dir, capture_output=True)
    assert r.stdout == host_before
    # Only a *named* reference gets /etc/netns: a path to the same namespace does not.
    r = run(f"path:{run_dir}/{name}", ["cat", "/etc/resolv.conf"], capture_output=True)
    assert r.stdout == host_before


def test_etc_symlink_binds_over_the_target_privately(
    named_ns: tuple[str, str, nslib.NsHandle], etc_netns_dir: Path, unique: str, tmp_path: Path
) -> None:
    # /etc/<x> is a symlink (as systemd-resolved's resolv.conf): the bind lands
    # on its target inside the child's mount namespace only.
    name, run_dir, _ = named_ns
    target = tmp_path / "target.conf"
    target.write_text("host\n")
    link = Path("/etc") / f"{unique}.conf"
    link.symlink_to(target)
    try:
        (etc_netns_dir / link.name).write_text("namespace\n")
        r = run(name, ["cat", str(link)], run_dir=run_dir, capture_output=True, text=True)
        assert r.stdout == "namespace\n"
        assert link.is_symlink()
        assert target.read_text() == "host\n"
    finally:
        link.unlink()


# -- threads, exit codes, timeouts, errors --------------------------------------------


def test_concurrent_popen_from_many_threads(
    netns: nslib.NsHandle, fd_baseline: set[int], home_ns: tuple[int, int]
) -> None:
    others = [nslib.NsHandle.new() for _ in range(3)]
    targets = [netns, *others]
    errors: list[BaseException] = []
    tasks_before = task_count()

    def worker(i: int) -> None:
        try:
            mine = thread_ns()
            for j in range(5):
                h = targets[(i + j) % len(targets)]
                r = run(h, READ_NS, etc=bool(j % 2), capture_output=True, text=True)
                assert r.stdout.strip() == ns_link(h)
                assert thread_ns() == mine
        except BaseException as e:
            errors.append(e)

    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for h in others:
            h.close()
    assert not errors, errors
    assert thread_ns() == home_ns
    # Every helper thread is gone.
    assert settled_task_count(tasks_before) <= tasks_before


def test_exit_codes_input_and_check(netns: nslib.NsHandle) -> None:
    assert run(netns, ["sh", "-c", "exit 3"]).returncode == 3
    with pytest.raises(subprocess.CalledProcessError) as ei:
        run(netns, ["sh", "-c", "echo out; echo err >&2; exit 5"], capture_output=True, check=True)
    assert ei.value.returncode == 5
    assert ei.value.stdout == b"out\n"
    assert ei.value.stderr == b"err\n"
    r = run(netns, ["cat"], input="piped", capture_output=True, text=True)
    assert r.stdout == "piped"
    with pytest.raises(ValueError):
        run(netns, ["true"], input=b"x", stdin=subprocess.DEVNULL)
    with pytest.raises(ValueError):
        run(netns, ["true"], capture_output=True, stdout=subprocess.DEVNULL)


def children() -> set[int]:
    """Every child process of this process (children are per creating thread)."""
    found: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            found |= {int(p) for p in Path(f"/proc/self/task/{tid}/children").read_bytes().split()}
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_timeout_kills_the_child(netns: nslib.NsHandle, fd_baseline: set[int]) -> None:
    before = children()
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run(netns, ["sleep", "30"], timeout=0.3)
    assert time.monotonic() - t0 < 10
    # The child was killed and reaped: no new child (not even a zombie) is left.
    # Only our `sleep 30` counts: other fixtures may start children meanwhile.
    assert {p for p in children() - before if _cmdline(p) == b"sleep\x0030\x00"} == set()


def test_errors_leave_nothing_behind(
    unique: str, run_dir: str, netns: nslib.NsHandle, fd_baseline: set[int]
) -> None:
    tasks_before = task_count()
    with pytest.raises(nslib.NamespaceNotFound):
        run(unique, ["true"], run_dir=run_dir)
    with pytest.raises(nslib.NamespaceNotFound):  # an unknown prefix is part of a name
        run("bogus:thing", ["true"])
    with pytest.raises(nslib.InvalidName):
        run("..", ["true"])
    with pytest.raises(nslib.NamespaceNotFound):
        run("pid:999999999", ["true"])
    with pytest.raises(nslib.InvalidReference):
        run(3.5, ["true"])  # type: ignore[arg-type]
    for etc in (True, False):
        with pytest.raises(FileNotFoundError):
            run(netns, [f"/nonexistent/{unique}"], etc=etc)
    closed = nslib.NsHandle.new()
    closed.close()
    with pytest.raises(nslib.ClosedHandleError):
        run(closed, ["true"])
    with pytest.raises(nslib.NotANamespace):
        run(Path("/etc/hostname"), ["true"])
    assert settled_task_count(tasks_before) <= tasks_before


def test_ms_reference_without_docker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")
    t0 = time.monotonic()
    with pytest.raises(nslib.DockerUnavailableError, match="not reachable"):
        run("ms:nothing-here", ["true"])
    assert time.monotonic() - t0 < 5  # fails fast, never hangs


def test_without_privileges_is_a_permission_error(
    named_ns: tuple[str, str, nslib.NsHandle],
) -> None:
    # Root with every capability dropped: joining and mounting are refused.
    name, run_dir, _ = named_ns
    code = (
        "import sys, nslib.process\n"
        "try:\n"
        "    nslib.process.run(sys.argv[1], ['true'])\n"
        "except PermissionError as e:\n"
        "    print('denied:', e)\n"
    )
    for etc in ("True", "False"):
        script = code.replace("['true']", f"['true'], etc={etc}")
        r = subprocess.run(
            [*UNPRIVILEGED, sys.executable, "-c", script, f"{run_dir}/{name}"],
            capture_output=True,
            text=True,
        )
        assert r.stdout.startswith("denied:"), (r.stdout, r.stderr)


# -- microservices (real docker) ------------------------------------------------------


@pytest.mark.docker
def test_ms_reference_resolves_through_docker(
    dockerd: object, docker_client: Any, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    from dockerd import run_container

    c = run_container(docker_client, label=unique)
    try:
        c.reload()
        pid = c.attrs["State"]["Pid"]
        with nslib.NsHandle.from_pid(pid) as h:
            expected = ns_link(h)
        # With a tracker the caller owns...
        from nslib.microservice import MicroserviceTracker

        with MicroserviceTracker(docker_client) as tracker:
            tracker.wait_for(unique, timeout=20)
            r = run(f"ms:{unique}", READ_NS, tracker=tracker, capture_output=True, text=True)
            assert r.stdout.strip() == expected
        # ...and with a call-scoped one found through DOCKER_HOST.
        monkeypatch.setenv("DOCKER_HOST", dockerd.base_url)  # type: ignore[attr-defined]
        r = run(f"ms:{unique}", READ_NS, capture_output=True, text=True)
        assert r.stdout.strip() == expected
        with pytest.raises(nslib.UnavailableMicroserviceError):
            run(f"ms:{unique}-absent", ["true"])
    finally:
        c.remove(force=True)


# -- execvp ---------------------------------------------------------------------------


def test_execvp_replaces_the_process(netns: nslib.NsHandle) -> None:
    code = textwrap.dedent(
        """
        import os, sys, threading, nslib
        from nslib.process import execvp
        threading.Thread(target=lambda: __import__("time").sleep(60), daemon=True).start()
        h = nslib.NsHandle.from_path(sys.argv[1])
        print("before", os.getpid(), flush=True)
        try:
            execvp(h, ["/nonexistent-program"])
        except FileNotFoundError as e:
            print("still here", e.filename, flush=True)
        script = "echo after $$; readlink /proc/self/ns/net; ls /sys/class/net; exit 7"
        execvp(h, ["sh", "-c", script])
        """
    )
    path = f"/proc/{os.getpid()}/fd/{netns.fileno()}"
    r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True)
    assert r.returncode == 7, r.stderr
    lines = r.stdout.split("\n")
    pid = lines[0].split()[1]
    assert lines[1] == "still here /nonexistent-program"
    assert lines[2] == f"after {pid}"  # same process
    assert lines[3] == ns_link(netns)
    assert lines[4] == "lo"


def test_fd_count_is_stable_over_many_spawns(netns: nslib.NsHandle) -> None:
    run(netns, ["true"])  # warm-up
    before = open_fds()
    for i in range(20):
        run(netns, ["true"], etc=bool(i % 2))
    assert open_fds() == before
