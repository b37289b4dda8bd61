"""nslib.spawn: a program in several namespaces at once, against util-linux nsenter."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import missing, thread_ns, unmount_tree

import nslib
from nslib.errors import (
    InvalidReference,
    NamespaceJoinError,
    NamespaceNotFound,
    NotANamespace,
    SpawnError,
)
from nslib.kinds import NsKind, Pidfd, Target
from nslib.spawn import NsPopen, popen, run

pytestmark = pytest.mark.root

PROBE = [
    "sh",
    "-c",
    "readlink /proc/self/ns/*; hostname; head /proc/self/mountinfo; id; pwd",
]
HOSTNAME = "nslib-target"
LINKS = "/proc/self/ns/net /proc/self/ns/ipc /proc/self/ns/cgroup"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        missing(f"needs {tool} (util-linux)")
        raise AssertionError("unreachable")
    return path


@contextlib.contextmanager
def unshared(*flags: str, setup: str = ":") -> Iterator[int]:
    """A process in new namespaces (``unshare FLAGS``); yields the PID inside them.

    The namespace process is ``unshare``'s child (``-f``); it is killed with
    ``unshare`` (``--kill-child``) and both are reaped.
    """
    need("unshare")
    # Only ever rename a UTS namespace of its own, never the host.
    ours = os.readlink("/proc/thread-self/ns/uts")
    rename = f'[ "$(readlink /proc/self/ns/uts)" != "{ours}" ] && hostname {HOSTNAME}'
    body = f"{rename}; {setup}; echo ok; exec >/dev/null; exec sleep 600"
    proc = subprocess.Popen(
        ["unshare", *flags, "--kill-child", "sh", "-c", body], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        with proc.stdout:
            assert proc.stdout.readline() == b"ok\n", "the target did not start"
        children = (
            Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            .read_text(errors="surrogateescape")
            .split()
        )
        yield int(children[0]) if children else proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(autouse=True, scope="module")
def _host_name_untouched() -> Iterator[None]:
    """Targets rename their own UTS namespace; the host's name must never change."""
    before = socket.gethostname()
    yield
    assert socket.gethostname() == before, "a test renamed the host"


@pytest.fixture
def target() -> Iterator[int]:
    """A process in new mount, UTS, IPC, net, PID and cgroup namespaces."""
    with unshared("-fmuinpC", "--mount-proc") as pid:
        yield pid


@pytest.fixture
def user_target() -> Iterator[int]:
    """The same, owned by a new user namespace in which root is mapped (``-r``)."""
    with unshared("-U", "-r", "-fmuinpC", "--mount-proc") as pid:
        yield pid


def nsenter(pid: int, *opts: str, argv: list[str] = PROBE) -> subprocess.CompletedProcess[str]:
    need("nsenter")
    return subprocess.run(
        ["nsenter", *opts, "-t", str(pid), *argv], capture_output=True, text=True, timeout=30
    )


def links(text: str) -> dict[str, str]:
    return {line.split(":")[0]: line for line in text.splitlines() if ":[" in line}


def own_links() -> dict[str, str]:
    d = "/proc/thread-self/ns"
    return {name: os.readlink(f"{d}/{name}") for name in os.listdir(d)}


def state(pid: int) -> str:
    """The one-letter state of process *pid* (``Z``: a zombie)."""
    return (
        Path(f"/proc/{pid}/stat").read_text(errors="surrogateescape").rsplit(")", 1)[1].split()[0]
    )


def no_zombies() -> list[str]:
    """Children of this process that exited and were never reaped."""
    found = []
    for tid in os.listdir("/proc/self/task"):
        try:
            children = (
                Path(f"/proc/self/task/{tid}/children").read_text(errors="surrogateescape").split()
            )
        except FileNotFoundError:
            continue  # a thread that just ended
        for pid in children:
            with contextlib.suppress(OSError):
                if state(int(pid)) == "Z":
                    found.append(pid)
    return found


# -- equal to nsenter -a ---------------------------------------------------------


@pytest.mark.parametrize("which", ["target", "user_target"])
def test_all_kinds_match_nsenter(
    which: str, request: pytest.FixtureRequest, fd_baseline: object, home_ns: object
) -> None:
    pid = request.getfixturevalue(which)
    ours = run(Target(pid), PROBE, capture_output=True, text=True, timeout=30)
    theirs = nsenter(pid, "-a")
    assert theirs.returncode == 0, theirs.stderr
    assert (ours.returncode, ours.stderr) == (0, "")
    assert ours.stdout == theirs.stdout
    # ... and it really ran elsewhere: every namespace unshare made differs from ours.
    inside, mine = links(ours.stdout), own_links()
    for name in ("mnt", "uts", "ipc", "net", "pid", "cgroup"):
        assert inside[name] != mine[name], name
    assert (inside["user"] != mine["user"]) == (which == "user_target")
    assert HOSTNAME in ours.stdout.splitlines()
    assert "uid=0(root) gid=0(root)" in ours.stdout


def test_some_kinds_match_nsenter(target: int) -> None:
    ours = run(Target(target, kinds=["uts", NsKind.NET]), PROBE, capture_output=True, text=True)
    theirs = nsenter(target, "-u", "-n")
    assert theirs.returncode == 0, theirs.stderr
    assert ours.stdout == theirs.stdout
    inside, mine = links(ours.stdout), own_links()
    assert inside["mnt"] == mine["mnt"] and inside["uts"] != mine["uts"]


def test_root_and_cwd_of_the_target_match_nsenter(tmp_path: object) -> None:
    with unshared("-fmuinpC", "--mount-proc", setup="cd /usr/share") as pid:
        probe = ["sh", "-c", "pwd; ls / | head -3"]
        ours = run(Target(pid), probe, root=True, cwd=True, capture_output=True, text=True)
        theirs = nsenter(pid, "-a", "-r", "-w", argv=probe)
        assert theirs.returncode == 0, theirs.stderr
        assert ours.stdout == theirs.stdout
        assert ours.stdout.startswith("/usr/share\n")
        # -W: a directory named inside.
        inside = run(Target(pid), ["pwd"], cwd="/etc", capture_output=True, text=True)
        assert inside.stdout == "/etc\n"


def test_time_namespace_is_joined(fd_baseline: object) -> None:
    # A time namespace can only be joined by a child that does not share the
    # caller's memory: this takes the fork path of the C helper.
    with unshared("-fT", "--boottime", "86400", "--monotonic", "86400") as pid:
        probe = ["sh", "-c", "readlink /proc/self/ns/time; cut -d. -f1 /proc/uptime"]
        ours = run(Target(pid), probe, capture_output=True, text=True)
        theirs = nsenter(pid, "-a", argv=probe)
        assert theirs.returncode == 0, theirs.stderr
        ours_link, ours_up = ours.stdout.split()
        their_link, their_up = theirs.stdout.split()
        assert ours_link == their_link != os.readlink("/proc/thread-self/ns/time")
        assert abs(int(ours_up) - int(their_up)) <= 2
        assert int(ours_up) >= 86400


# -- the process object --------------------------------------------------------------


def test_pid_is_the_program_inside_the_pid_namespace(target: int, fd_baseline: object) -> None:
    with popen(Target(target), ["sleep", "30"]) as proc:
        assert isinstance(proc, NsPopen) and isinstance(proc, subprocess.Popen)
        deadline = time.monotonic() + 10
        while not os.readlink(f"/proc/{proc.pid}/exe").endswith("sleep"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        status = Path(f"/proc/{proc.pid}/status").read_text(errors="surrogateescape").splitlines()
        nspid = [ln for ln in status if ln.startswith("NSpid:")]
        assert len(nspid[0].split()) == 3  # one PID here, one in the target's namespace
        assert os.readlink(f"/proc/{proc.pid}/ns/pid") == os.readlink(f"/proc/{target}/ns/pid")
        # Our own child: signals and wait() reach the program itself.
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == -signal.SIGTERM
    assert no_zombies() == []


def test_stdio_env_pass_fds_and_close_fds(target: int, fd_baseline: object) -> None:
    r, w = os.pipe()
    stray_r, stray_w = os.pipe()
    os.set_inheritable(stray_w, True)  # close_fds must still close it
    try:
        script = (
            f'echo "$X" >/dev/fd/{w}; read line; echo "got $line"; echo err >&2; '
            f"[ -e /proc/self/fd/{stray_w} ] && echo leaked"
        )
        result = run(
            {NsKind.UTS: f"/proc/{target}/ns/uts"},
            ["sh", "-c", script],
            input="hello\n",
            capture_output=True,
            text=True,
            env={"X": "from-env", "PATH": os.environ["PATH"]},
            pass_fds=[w],
        )
        os.close(w)
        w = -1
        assert result.stdout == "got hello\n"
        assert result.stderr == "err\n"
        assert os.read(r, 100) == b"from-env\n"
    finally:
        for fd in (r, w, stray_r, stray_w):
            if fd >= 0:
                os.close(fd)


def test_signal_dispositions_are_reset_like_subprocess(target: int) -> None:
    probe = ["sh", "-c", "grep -E '^Sig(Ign|Cgt|Blk)' /proc/self/status"]
    old = signal.signal(signal.SIGUSR1, lambda *a: None)
    try:
        ours = run(Target(target, kinds=["uts"]), probe, capture_output=True, text=True)
        plain = subprocess.run(probe, capture_output=True, text=True)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert ours.stdout == plain.stdout


def test_mapping_of_handles_paths_and_fds(target: int, fd_baseline: object) -> None:
    with nslib.NsHandle.new() as net, Pidfd.open(target) as pidfd:
        uts_fd = os.open(f"/proc/{target}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
        try:
            result = run(
                {
                    NsKind.NET: net,
                    "uts": uts_fd,
                    NsKind.IPC: pidfd,
                    NsKind.CGROUP: f"/proc/{target}/ns/cgroup",
                },
                ["sh", "-c", f"readlink {LINKS}; hostname"],
                capture_output=True,
                text=True,
            )
        finally:
            os.close(uts_fd)
        net_link, ipc_link, cg_link, host = result.stdout.split()
        assert net_link == f"net:[{net.ns_id[1]}]"
        assert ipc_link == os.readlink(f"/proc/{target}/ns/ipc")
        assert cg_link == os.readlink(f"/proc/{target}/ns/cgroup")
        assert host == HOSTNAME


def test_calling_thread_never_moves_and_is_the_base(target: int, home_ns: object) -> None:
    # Kinds not named come from the calling *thread*: inside entered(), its net.
    with nslib.NsHandle.new() as net, nslib.entered(net):
        result = run(
            Target(target, kinds=["uts"]),
            ["readlink", "/proc/self/ns/net"],
            capture_output=True,
            text=True,
        )
        assert result.stdout.strip() == f"net:[{net.ns_id[1]}]"
        assert thread_ns() == net.ns_id


def test_spawns_from_many_threads_at_once(target: int, home_ns: object) -> None:
    errors: list[BaseException] = []
    before = {t: os.readlink(f"/proc/self/task/{t}/ns/mnt") for t in os.listdir("/proc/self/task")}

    def work() -> None:
        try:
            for _ in range(5):
                out = run(Target(target), ["hostname"], capture_output=True, text=True, check=True)
                assert out.stdout == f"{HOSTNAME}\n"
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for t, link in before.items():
        with contextlib.suppress(FileNotFoundError):
            assert os.readlink(f"/proc/self/task/{t}/ns/mnt") == link
    assert no_zombies() == []


# -- bad input: typed errors, nothing left behind ---------------------------------


def test_handle_of_another_kind_is_refused(target: int, fd_baseline: object) -> None:
    with nslib.NsHandle.new() as net:
        with pytest.raises(NotANamespace, match="a net namespace, not a uts namespace") as info:
            popen({NsKind.UTS: net}, ["true"])
        assert info.value.nstype == NsKind.NET.flag
    with pytest.raises(NotANamespace, match="not a mnt namespace"):
        popen({NsKind.MNT: f"/proc/{target}/ns/uts"}, ["true"])
    with pytest.raises(NotANamespace, match="network namespace reference"):
        popen({NsKind.UTS: nslib.NetNamespace.pid(target)}, ["true"])
    with pytest.raises(NotANamespace, match="not a namespace"):
        popen({NsKind.NET: "/etc/hostname"}, ["true"])
    with pytest.raises(InvalidReference, match="not a kind"):
        popen({"bogus": "/proc/self/ns/net"}, ["true"])  # type: ignore[dict-item]
    with pytest.raises(InvalidReference, match="twice"):
        popen({"net": "/proc/self/ns/net", NsKind.NET: "/proc/self/ns/net"}, ["true"])
    with pytest.raises(InvalidReference, match="need a Target"):
        popen({NsKind.NET: "/proc/self/ns/net"}, ["true"], root=True)


def test_missing_program_is_a_file_not_found_error(target: int, fd_baseline: object) -> None:
    for ns in (Target(target), {NsKind.UTS: f"/proc/{target}/ns/uts"}):
        with pytest.raises(FileNotFoundError) as info:
            popen(ns, ["/nonexistent/program"])
        assert info.value.filename == "/nonexistent/program"
    with pytest.raises(FileNotFoundError):
        popen(Target(target), ["nslib-no-such-program-anywhere"])
    assert no_zombies() == []


def test_bad_cwd_is_reported_with_its_path(target: int, fd_baseline: object) -> None:
    with pytest.raises(FileNotFoundError) as info:
        popen(Target(target), ["true"], cwd="/nonexistent-dir")
    assert info.value.filename == "/nonexistent-dir"
    assert no_zombies() == []


def test_failed_join_names_the_kind(target: int, fd_baseline: object) -> None:
    # Asking explicitly for one's own user namespace: the kernel says EINVAL.
    with pytest.raises(NamespaceJoinError) as info:
        popen(Target(target, kinds=["user", "uts"]), ["true"])
    assert info.value.kind is NsKind.USER
    assert info.value.errno == 22
    assert isinstance(info.value, SpawnError) and isinstance(info.value, nslib.NslibError)
    assert "user namespace" in str(info.value)
    assert no_zombies() == []


def test_failed_join_without_privilege(target: int, fd_baseline: object) -> None:
    # A thread of ours without CAP_SYS_ADMIN cannot join; the kind is named.
    # (capset on one thread only: a throwaway one.)
    import ctypes

    box: list[BaseException] = []

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [
                ("eff", ctypes.c_uint32),
                ("perm", ctypes.c_uint32),
                ("inh", ctypes.c_uint32),
            ]

        hdr = Header(0x20080522, 0)
        data = (Data * 2)()
        assert libc.capget(ctypes.byref(hdr), data) == 0
        data[0].eff &= ~(1 << 21)  # CAP_SYS_ADMIN
        assert libc.capset(ctypes.byref(hdr), data) == 0
        try:
            popen(Target(target, kinds=["net"]), ["true"])
        except BaseException as e:
            box.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert len(box) == 1 and isinstance(box[0], NamespaceJoinError), box
    assert box[0].kind is NsKind.NET and box[0].errno == 1  # EPERM


def test_target_gone_or_never_there(fd_baseline: object) -> None:
    with pytest.raises(NamespaceNotFound, match="no process"):
        popen(Target(2**22 + 1), ["true"])
    # A zombie: the pidfd opens, its namespaces are gone.
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while state(child.pid) != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        with pytest.raises(NamespaceNotFound, match="has exited"):
            popen(Target(child.pid), ["true"])
    finally:
        child.wait()


def test_target_exiting_midway(fd_baseline: object) -> None:
    # The target exits between pidfd_open and its namespace files: whatever
    # the moment, a typed error and no fd left open, or a clean spawn.
    outcomes = set()
    for delay in (0.0, 0.0005, 0.001, 0.002):
        victim = subprocess.Popen(["sleep", "30"])
        timer = threading.Timer(delay, victim.kill)
        timer.start()
        try:
            proc = popen(Target(victim.pid, kinds=["net", "uts", "ipc", "mnt"]), ["true"])
        except NamespaceNotFound:
            outcomes.add("gone")
        else:
            proc.wait()
            outcomes.add("ran")
        timer.join()
        victim.wait()
    assert outcomes <= {"gone", "ran"}
    victim = subprocess.Popen(["sleep", "30"])
    victim.kill()
    victim.wait()
    with pytest.raises(NamespaceNotFound):
        popen(Target(victim.pid), ["true"])  # reaped: the PID names nothing (or someone else)


def test_pidfd_of_a_reaped_process(fd_baseline: object) -> None:
    victim = subprocess.Popen(["sleep", "30"])
    with Pidfd.open(victim.pid) as pidfd:
        victim.kill()
        victim.wait()
        assert pidfd.exited()
        with pytest.raises(NamespaceNotFound, match="has exited"):
            pidfd.send_signal(0)
        with pytest.raises(NamespaceNotFound):
            popen({NsKind.NET: pidfd}, ["true"])


def test_preexec_fn_and_ids_refused(target: int, fd_baseline: object) -> None:
    with pytest.raises(TypeError, match="preexec_fn"):
        popen(Target(target), ["true"], preexec_fn=lambda: None)
    with pytest.raises(TypeError, match="user, group"):
        popen(Target(target), ["true"], user=0)


def test_pidfd_join_falls_back_to_the_files(target: int, fd_baseline: object) -> None:
    # A pidfd whose process is gone: setns(pidfd) fails and the child joins
    # through the namespace files instead, with the same result.
    from nslib import _syscalls as sys_

    kinds = [NsKind.UTS, NsKind.NET]
    fds = [os.open(f"/proc/{target}/ns/{k.proc_name}", os.O_RDONLY | os.O_CLOEXEC) for k in kinds]
    r, w = os.pipe()
    try:
        stale = subprocess.Popen(["sleep", "30"])
        stale_fd = os.pidfd_open(stale.pid)
        stale.kill()
        stale.wait()
        try:
            pid, step, _kind, err = sys_.spawn(
                [b"sh", b"-c", b"hostname; readlink /proc/self/ns/net"],
                None,
                [b"/bin/sh"],
                [(fd, k.flag) for fd, k in zip(fds, kinds, strict=True)],
                pidfd=stale_fd,
                pidfd_types=NsKind.UTS.flag | NsKind.NET.flag,
                stdio=(-1, w, -1),
            )
        finally:
            os.close(stale_fd)
        assert (step, err) == (0, 0) and pid > 0
        os.close(w)
        w = -1
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        out = os.read(r, 4096).decode()
        assert out == f"{HOSTNAME}\n{os.readlink(f'/proc/{target}/ns/net')}\n"
    finally:
        for fd in [*fds, r, w]:
            if fd >= 0:
                os.close(fd)


def test_nslib_popen_and_run_take_a_target_or_a_mapping(target: int, fd_baseline: object) -> None:
    out = nslib.run(Target(target), ["hostname"], capture_output=True, text=True, check=True)
    assert out.stdout == f"{HOSTNAME}\n"
    with nslib.popen({"uts": f"/proc/{target}/ns/uts"}, ["hostname"], stdout=subprocess.PIPE) as p:
        assert isinstance(p, NsPopen)
        stdout, _ = p.communicate()
    assert stdout == f"{HOSTNAME}\n".encode()
    # A single network reference keeps its ip netns exec meaning.
    with nslib.NsHandle.new() as net:
        plain = nslib.run(net, ["readlink", "/proc/self/ns/net"], capture_output=True, text=True)
        assert plain.stdout.strip() == f"net:[{net.ns_id[1]}]"


def test_a_net_entry_follows_the_one_reference_rule(
    run_dir: str, unique: str, tmp_path: Path, fd_baseline: object
) -> None:
    # A bare word is a named namespace here too, as in entered() and popen(ref):
    # the mapping's NET entry goes through the same resolver.  The current
    # directory holds another namespace under the same name, which a bare
    # word read as a relative path would join instead.
    from nslib import named

    decoy_dir = str(tmp_path / "decoy")
    with named.create(unique, run_dir=run_dir) as h:
        want = f"net:[{os.fstat(h.fileno()).st_ino}]"
    named.create(unique, run_dir=decoy_dir).close()
    cwd = os.getcwd()
    try:
        os.chdir(decoy_dir)
        try:
            r = run(
                {NsKind.NET: unique},
                ["readlink", "/proc/self/ns/net"],
                run_dir=run_dir,
                capture_output=True,
                text=True,
            )
        finally:
            os.chdir(cwd)
        assert r.stdout.strip() == want
        with pytest.raises(nslib.NamespaceNotFound, match="no named namespace"):
            popen({NsKind.NET: f"{unique}-nope"}, ["true"], run_dir=run_dir)
        with pytest.raises(NotANamespace, match="network namespace reference"):
            popen({NsKind.UTS: unique}, ["true"])
    finally:
        named.delete(unique, run_dir=run_dir)
        named.delete(unique, run_dir=decoy_dir)
        unmount_tree(decoy_dir)  # the run directory's own self-bind mount
