"""Helpers shared by the test modules (fixtures live in ``conftest.py``).

Test modules import from here, never from ``conftest`` or from each other;
``tests/`` is on ``sys.path`` under pytest (rootdir conftest), so this is a
plain ``from helpers import ...``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

import nslib
from nslib import NsPlugin
from nslib._procfs import read_mountinfo
from nslib.plugin import Config

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
"""True under CI: a missing requirement fails the test instead of skipping it."""

PREFIX = f"nslt{os.getpid() % 100000}"
"""Every namespace, link and container the suite makes starts with this."""


def missing(reason: str) -> None:
    """Skip for *reason* locally; fail under ``CI=true``, where the test must run."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}: this test must run in CI", pytrace=False)
    pytest.skip(reason)


def disarm_timer() -> None:
    """Turn the SIGALRM interrupt timer off, however often it still fires.

    A timer that already fired has a handler pending: it raises at the next
    check, possibly in here; loop until the timer is off and quiet.
    """
    while True:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
            time.sleep(0)
            return
        except KeyboardInterrupt:
            continue


# -- accounting -------------------------------------------------------------


def open_fds() -> set[int]:
    """The process's open fds (the listing's own fd excluded)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            os.fstat(fd)
        except OSError:
            continue  # the directory fd listdir used, already closed
        fds.add(fd)
    return fds


def describe_fd(fd: int) -> str:
    """What fd *fd* of this process points at, for a failure message."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def thread_ns() -> tuple[int, int]:
    """``(st_dev, st_ino)`` of the calling thread's namespace."""
    st = os.stat("/proc/thread-self/ns/net")
    return (st.st_dev, st.st_ino)


def wait_for_exe(pid: int, suffix: str, timeout: float = 10.0) -> None:
    """Wait until process *pid* has exec'd a binary whose path ends with *suffix*.

    Gives up silently after *timeout*: the caller checks what it needs.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/exe").endswith(suffix):
                return
        time.sleep(0.01)


# -- mounts -----------------------------------------------------------------


def mounts_under(path: str) -> list[str]:
    """Mount points at or below *path* in the calling thread's mount namespace.

    mountinfo is read as bytes: other software may leave mounts on paths that
    are not UTF-8, and they must not break the suite.
    """
    top = os.fsencode(path).rstrip(b"/")
    return [
        os.fsdecode(m.mount_point)
        for m in read_mountinfo()
        if m.mount_point == top or m.mount_point.startswith(top + b"/")
    ]


def unmount_tree(path: str) -> None:
    """Detach every mount at or below *path*, deepest first.

    Repeated until nothing is left: a mount covered by another one mounted
    over its parent (a tmpfs over a run directory) is reachable only once the
    cover is gone.
    """
    for _ in range(8):
        found = mounts_under(path)
        if not found:
            return
        for mnt in sorted(set(found), key=len, reverse=True):
            subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)


def host_netns_names() -> set[str]:
    """The names in the host's ``/run/netns``."""
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


# -- plugin and docker ------------------------------------------------------


def plugin_in(ns: nslib.NsHandle, config: Config | None = None, tracker: object = None) -> NsPlugin:
    """A plugin initialized on a thread inside *ns*: its default namespace is *ns*."""

    def make() -> NsPlugin:
        p = NsPlugin(config, tracker)  # type: ignore[arg-type]
        p.init()
        return p

    return nslib.run_in(ns, make)


@contextlib.contextmanager
def docker_client_of(daemon: Any) -> Iterator[Any]:
    """A client of *daemon* (a ``PrivateDockerd``).

    Afterwards every test container is removed and the client is closed.
    """
    from dockerd import remove_test_containers

    c = daemon.client()
    try:
        yield c
    finally:
        remove_test_containers(c)
        c.close()
