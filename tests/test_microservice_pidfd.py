"""``Microservice.open_namespace`` through a pidfd (``PIDFD_GET_NET_NAMESPACE``, 6.11+).

The "container" is a process of our own in a network namespace of its own
(``unshare -n``), moved into a cgroup named like a container ID, so the
cgroup check, the pidfd and the fallback through ``/proc`` all run for real
without a daemon.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import missing

from nslib.errors import UnavailableMicroserviceError
from nslib.microservice import Microservice
from nslib.microservice import model as tr

pytestmark = pytest.mark.root


def _cgroup_root() -> Path:
    for root in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (root / "cgroup.procs").is_file():
            return root
    missing("no writable cgroup v2 hierarchy")
    raise AssertionError  # not reached


class Proc:
    """A ``sleep`` in its own network namespace, in a cgroup named *cid*."""

    def __init__(self, cid: str) -> None:
        self.cid = cid
        self.cgroup = _cgroup_root() / cid
        self.cgroup.mkdir()
        self.popen = subprocess.Popen(["unshare", "-n", "--", "sleep", "600"])
        # unshare execs sleep in the same process: the PID stays.
        self.pid = self.popen.pid
        try:
            (self.cgroup / "cgroup.procs").write_text(str(self.pid))
            home = os.stat("/proc/self/ns/net").st_ino
            deadline = time.monotonic() + 10
            while os.stat(f"/proc/{self.pid}/ns/net").st_ino == home:
                assert time.monotonic() < deadline, "unshare -n did not make its namespace"
                time.sleep(0.01)
        except BaseException:
            self.close()
            raise

    def ms(self, cid: str | None = None) -> Microservice:
        return Microservice(
            label="pidfd-test",
            container_id=cid or self.cid,
            name="pidfd-test",
            pid=self.pid,
            created_ns=1,
            started_at_ns=1,
        )

    def netns(self) -> tuple[int, int]:
        st = os.stat(f"/proc/{self.pid}/ns/net")
        return (st.st_dev, st.st_ino)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        deadline = time.monotonic() + 5
        while True:
            try:
                self.cgroup.rmdir()
                return
            except OSError:  # EBUSY until the exit is accounted
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


@pytest.fixture
def proc() -> Iterator[Proc]:
    p = Proc(uuid.uuid4().hex[:24])
    try:
        yield p
    finally:
        p.close()


def test_the_ioctl_number_is_the_network_namespace(proc: Proc) -> None:
    pidfd = os.pidfd_open(proc.pid)
    try:
        fd = fcntl.ioctl(pidfd, tr.PIDFD_GET_NET_NAMESPACE)
        try:
            st = os.fstat(fd)
            assert (st.st_dev, st.st_ino) == proc.netns()
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        finally:
            os.close(fd)
        # _IO(0xFF, 10) is the UTS namespace, not the network one.
        fd = fcntl.ioctl(pidfd, 0xFF0A)
        try:
            assert os.fstat(fd).st_ino == os.stat(f"/proc/{proc.pid}/ns/uts").st_ino
        finally:
            os.close(fd)
    finally:
        os.close(pidfd)


def test_open_namespace_goes_through_the_pidfd(proc: Proc, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_proc(*args: object) -> int:
        raise AssertionError("the /proc path was used on a kernel with the pidfd ioctl")

    monkeypatch.setattr(tr, "_netns_by_proc", no_proc)
    with proc.ms().open_namespace() as h:
        assert h.ns_id == proc.netns()


def test_the_proc_fallback_gives_the_same_namespace(
    proc: Proc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tr, "_pidfd_ns_works", False)  # as on a kernel before 6.11
    with proc.ms().open_namespace() as h:
        assert h.ns_id == proc.netns()


def test_another_cgroup_is_refused(proc: Proc) -> None:
    other = uuid.uuid4().hex[:24]
    with pytest.raises(UnavailableMicroserviceError, match="not in the container's cgroup"):
        proc.ms(other).open_namespace()


@pytest.mark.parametrize("path", ["pidfd", "proc"])
def test_a_dead_process_is_a_typed_error(
    proc: Proc, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    if path == "proc":
        monkeypatch.setattr(tr, "_pidfd_ns_works", False)
    ms = proc.ms()
    os.kill(proc.pid, signal.SIGKILL)
    # A zombie first (not reaped: /proc/<pid> still exists), then gone.
    deadline = time.monotonic() + 5
    while Path(f"/proc/{proc.pid}/stat").read_bytes().rpartition(b")")[2].split()[0] != b"Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(UnavailableMicroserviceError, match=r"exited|cgroup"):
        ms.open_namespace()
    proc.popen.wait()
    with pytest.raises(UnavailableMicroserviceError, match="exited"):
        ms.open_namespace()
