"""Shared fixtures and the rules for privileged tests.

Tests marked ``root`` need CAP_SYS_ADMIN; tests marked ``docker`` need a
docker daemon (the suite starts a private one, see ``tests/dockerd.py``).
Outside CI a missing requirement skips the test; under ``CI=true`` it fails,
so a CI run can never pass by skipping what it was meant to check.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    IN_CI,
    PREFIX,
    describe_fd,
    docker_client_of,
    host_netns_names,
    missing,
    open_fds,
    plugin_in,
    thread_ns,
    unmount_tree,
)
from hostile import hostile_host_state
from hypothesis import HealthCheck, settings

import nslib
from nslib import NsPlugin
from nslib.plugin import Config
from nslib.process import ETC_NETNS_DIR

settings.register_profile(
    "default", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "expensive", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "default"))


#: A test (set-up, call and teardown) that runs longer than this is stuck.
#: The watchdog then dumps every thread's stack and interrupts the session,
#: so that a hang fails in minutes, showing where, not at CI's time limit.
TEST_WATCHDOG_S = float(os.environ.get("NSLIB_TEST_WATCHDOG", "600"))


_WATCHDOG_REPORTS: list[str] = []


def _stacks() -> str:
    with tempfile.TemporaryFile() as f:  # faulthandler needs a real fd
        faulthandler.dump_traceback(f, all_threads=True)
        f.seek(0)
        return f.read().decode(errors="backslashreplace")


def _bark(config: pytest.Config, nodeid: str, done: threading.Event) -> None:
    # Test output is captured: the report is printed in the terminal summary.
    _WATCHDOG_REPORTS.append(f"{nodeid} still running after {TEST_WATCHDOG_S:g} s\n{_stacks()}")
    # SIGINT, not _thread.interrupt_main(): it also breaks a blocking syscall.
    # Repeat, in case something swallows one; give up on teardown after 60 s.
    for _ in range(6):
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        if done.wait(10):
            return
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.suspend_global_capture(in_=True)
    reports = "\n".join(_WATCHDOG_REPORTS)
    sys.stderr.write(f"\nWATCHDOG: {reports}\nthe session does not stop\n")
    sys.stderr.flush()
    os._exit(3)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for report in _WATCHDOG_REPORTS:
        terminalreporter.section("WATCHDOG", sep="!", red=True)
        terminalreporter.write_line(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    done = threading.Event()
    timer = threading.Timer(TEST_WATCHDOG_S, _bark, (item.config, item.nodeid, done))
    timer.name = "test-watchdog"
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        done.set()
        timer.cancel()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") and os.geteuid() != 0:
        missing("needs root (CAP_SYS_ADMIN)")
    if item.get_closest_marker("docker") and shutil.which("dockerd") is None:
        missing("needs dockerd (scripts/host-setup.sh installs it)")


# -- accounting -------------------------------------------------------------


@pytest.fixture
def fd_baseline() -> Iterator[set[int]]:
    """Fails the test if it leaves more fds open than it found.

    Each thread's home namespace fd is cached by the C core for the thread's
    life, so the calling thread is warmed up before the baseline is taken.
    """
    with nslib.NsHandle.current() as here, nslib.entered(here):
        pass
    gc.collect()
    before = open_fds()
    yield before
    # A thread's cached home fd is closed by a pthread destructor just after
    # Thread.join() returns, so give threads that just ended a moment.
    deadline = time.monotonic() + 2.0
    while True:
        gc.collect()
        leaked = open_fds() - before
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"leaked fds: {sorted(leaked)} -> " + ", ".join(
        describe_fd(fd) for fd in sorted(leaked)
    )


@pytest.fixture
def home_ns() -> Iterator[tuple[int, int]]:
    """The main thread's namespace, checked to be unchanged after the test."""
    before = thread_ns()
    yield before
    assert thread_ns() == before, "the test left the calling thread in another namespace"


# -- names and namespaces the tests own -------------------------------------


@pytest.fixture
def unique() -> str:
    """A short unique name with the suite's prefix (fits IFNAMSIZ)."""
    return f"{PREFIX}{uuid.uuid4().hex[:6]}"[:15]


@pytest.fixture
def run_dir() -> Iterator[str]:
    """A private run directory for named namespaces, torn down afterwards.

    Tests never touch the host's /run/netns.
    """
    base = tempfile.mkdtemp(prefix=f"{PREFIX}-run-")
    path = os.path.join(base, "netns")
    try:
        yield path
    finally:
        unmount_tree(base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def netns() -> Iterator[nslib.NsHandle]:
    """A fresh anonymous namespace (closed afterwards)."""
    with nslib.NsHandle.new() as h:
        yield h


@pytest.fixture
def etc_netns_dir(unique: str) -> Iterator[Path]:
    """/etc/netns/<unique>/ (removed afterwards, even on failure).

    *unique* is the test's own ``unique`` name, so a namespace named with it
    gets these files.
    """
    d = Path(ETC_NETNS_DIR) / unique
    d.mkdir(parents=True)
    try:
        yield d
    finally:
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
        with contextlib.suppress(OSError):
            Path(ETC_NETNS_DIR).rmdir()  # only if we left it empty


@pytest.fixture
def plugin(netns: nslib.NsHandle, run_dir: str) -> Iterator[NsPlugin]:
    """A plugin whose default namespace is ``netns``, with the private ``run_dir``."""
    p = plugin_in(netns, Config(run_dir=run_dir))
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(autouse=True, scope="session")
def _host_untouched() -> Iterator[None]:
    """The suite must leave the host's named namespaces as it found them."""
    before = host_netns_names()
    yield
    ours = {n for n in host_netns_names() - before if n.startswith(PREFIX)}
    for name in ours:  # clean up, then complain
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    assert not ours, f"the suite left named namespaces behind: {sorted(ours)}"


@pytest.fixture(autouse=True, scope="session")
def _hostile_host() -> Iterator[None]:
    """The whole run meets a non-UTF-8, escape-laden mount and namespace name.

    Other software leaves such state on real hosts; every reader of
    mountinfo and every table must cope with it (see ``tests/hostile.py``).
    """
    if os.geteuid() != 0:  # cannot mount; the root tests fail or skip anyway
        yield
        return
    with hostile_host_state():
        yield


@pytest.fixture(autouse=True)
def _no_stray_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    for t in set(threading.enumerate()) - before:
        if t.name.startswith("nslib-"):
            t.join(timeout=5)
            assert not t.is_alive(), f"nslib thread left running: {t.name}"


# -- docker -------------------------------------------------------------------


@pytest.fixture(scope="session")
def dockerd() -> Iterator[object]:
    """A private docker daemon for the whole session (see tests/dockerd.py).

    Tests may restart it; the host's daemon and containers are never touched.
    """
    if shutil.which("dockerd") is None:
        missing("needs dockerd (scripts/host-setup.sh installs it)")
    from dockerd import PrivateDockerd

    with PrivateDockerd() as d:  # start() on entry, stop() on exit
        yield d


@pytest.fixture(scope="module")
def podman(dockerd: Any) -> Iterator[Any]:
    """A private podman service per test module, with the test image from the private dockerd."""
    if shutil.which("podman") is None:
        missing("needs podman (scripts/host-setup.sh installs it)")
    from podmand import PrivatePodman

    with PrivatePodman() as p:
        p.load_image_from_docker(dockerd.base_url)
        yield p


@pytest.fixture(scope="module")
def ctrd(dockerd: Any) -> Iterator[Any]:
    """A private containerd per test module, with the test image in ``default`` and ``k8s.io``."""
    if shutil.which("ctr") is None or shutil.which("containerd") is None:
        missing("needs containerd and ctr (docker.io installs them)")
    from containerd_harness import PrivateContainerd

    with PrivateContainerd() as c:
        c.import_image_from_docker(dockerd.base_url, ["default", "k8s.io"])
        yield c


@pytest.fixture
def docker_client(dockerd: Any) -> Iterator[Any]:
    """A client of the session's private dockerd; test containers removed afterwards."""
    with docker_client_of(dockerd) as c:
        yield c
