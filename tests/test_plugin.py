"""NsPlugin: the vpp-agent's API (every ReferenceType, disabled, microservices, switching)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import plugin_in, thread_ns

import nslib
from nslib import NetNamespace, NsPlugin, ReferenceType
from nslib.plugin import Config

pytestmark = pytest.mark.root


@pytest.fixture
def sleeper(netns: nslib.NsHandle) -> Iterator[subprocess.Popen[bytes]]:
    """A process living inside the test namespace."""

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(["sleep", "60"])

    proc = nslib.run_in(netns, spawn)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def same(h: nslib.NsHandle, other: nslib.NsHandle) -> bool:
    with h:
        return h.same_namespace(other)


# -- the default namespace ----------------------------------------------------------


def test_default_is_the_initializing_threads_namespace(plugin, netns, home_ns) -> None:
    assert same(plugin.get_namespace_handle(None), netns)
    assert same(plugin.get_namespace_handle(NetNamespace(ReferenceType.FD, "")), netns)
    assert same(plugin.default_namespace(), netns)
    # The main thread (another namespace) did not become the default.
    with nslib.NsHandle.current() as here:
        assert not same(plugin.get_namespace_handle(None), here)


def test_handles_are_new_and_owned_by_the_caller(plugin, fd_baseline) -> None:
    a = plugin.get_namespace_handle(None)
    b = plugin.get_namespace_handle(None)
    assert a.fileno() != b.fileno() and a.same_namespace(b)
    a.close()
    assert not b.closed  # independent
    b.close()


# -- every reference type -------------------------------------------------------------


def test_pid_reference(plugin, netns, sleeper) -> None:
    assert same(plugin.get_namespace_handle(NetNamespace.pid(sleeper.pid)), netns)
    with nslib.NsHandle.from_pid(os.getpid()) as mine:
        assert same(plugin.get_namespace_handle(NetNamespace.pid(os.getpid())), mine)


def test_pid_reference_to_a_dead_process(plugin) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: the PID is free
    with pytest.raises(nslib.NamespaceNotFound, match=str(proc.pid)):
        plugin.get_namespace_handle(NetNamespace.pid(proc.pid))


def test_fd_reference_is_a_path(plugin, netns, sleeper, tmp_path) -> None:
    ref = NetNamespace.path(f"/proc/{sleeper.pid}/ns/net")
    assert same(plugin.get_namespace_handle(ref), netns)
    with pytest.raises(nslib.NamespaceNotFound):
        plugin.get_namespace_handle(NetNamespace.path(str(tmp_path / "missing")))
    (tmp_path / "plain").write_text("")
    with pytest.raises(nslib.NotANamespace):
        plugin.get_namespace_handle(NetNamespace.path(str(tmp_path / "plain")))


def test_nsid_creates_a_missing_named_namespace(plugin, run_dir, unique, fd_baseline) -> None:
    assert not nslib.named.exists(unique, run_dir=run_dir)
    with plugin.get_namespace_handle(NetNamespace.named(unique)) as made:
        assert nslib.named.exists(unique, run_dir=run_dir)
        # The second lookup opens the same namespace; it creates nothing.
        with plugin.get_namespace_handle(NetNamespace.named(unique)) as again:
            assert again.same_namespace(made)
        with nslib.NsHandle.from_name(unique, run_dir=run_dir) as direct:
            assert direct.same_namespace(made)
    nslib.named.delete(unique, run_dir=run_dir)


def test_nsid_create_missing_off(netns, run_dir, unique) -> None:
    with plugin_in(netns, Config(run_dir=run_dir, create_missing=False)) as p:
        with pytest.raises(nslib.NamespaceNotFound, match=unique):
            p.get_namespace_handle(NetNamespace.named(unique))
        assert not nslib.named.exists(unique, run_dir=run_dir)
        # The per-call override works both ways.
        p.get_namespace_handle(NetNamespace.named(unique), create_missing=True).close()
        assert nslib.named.exists(unique, run_dir=run_dir)
    with plugin_in(netns, Config(run_dir=run_dir)) as p:
        other = unique[:-1] + ("x" if unique[-1] != "x" else "y")
        with pytest.raises(nslib.NamespaceNotFound):
            p.get_namespace_handle(NetNamespace.named(other), create_missing=False)
        assert not nslib.named.exists(other, run_dir=run_dir)
    nslib.named.delete(unique, run_dir=run_dir)


def test_nsid_concurrent_first_use_creates_once(plugin, run_dir, unique) -> None:
    ref = NetNamespace.named(unique)
    barrier = threading.Barrier(8)

    def get() -> tuple[int, int]:
        barrier.wait()
        with plugin.get_namespace_handle(ref) as h:
            return h.ns_id

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: get(), range(8)))
    assert len(ids) == 1
    assert nslib.named.list(run_dir=run_dir).count(unique) == 1
    nslib.named.delete(unique, run_dir=run_dir)


def test_undefined_reference(plugin) -> None:
    with pytest.raises(nslib.InvalidReference):
        plugin.get_namespace_handle(NetNamespace(ReferenceType.UNDEFINED))


def test_microservice_without_tracker(plugin) -> None:
    with pytest.raises(nslib.UnavailableMicroserviceError, match="no microservice tracker"):
        plugin.get_namespace_handle(NetNamespace.microservice("web"))
    with pytest.raises(nslib.UnavailableMicroserviceError):
        plugin.switch_to_namespace(NetNamespace.microservice("web"))


@pytest.mark.docker
def test_microservice_through_the_tracker(docker_client, netns, unique) -> None:
    from dockerd import run_container

    tracker = nslib.MicroserviceTracker(docker_client)
    tracker.start()
    c = run_container(docker_client, label=unique)
    p = plugin_in(netns, Config(microservice_timeout=10), tracker)
    try:
        tracker.wait_for(unique, timeout=10)
        pid = c.attrs["State"]["Pid"]
        with nslib.NsHandle.from_pid(pid) as theirs:
            assert same(p.get_namespace_handle(NetNamespace.microservice(unique)), theirs)
        with pytest.raises(nslib.UnavailableMicroserviceError, match="no running container"):
            p.get_namespace_handle(NetNamespace.microservice(unique + "-none"))
    finally:
        p.close()
        c.remove(force=True)
        tracker.stop()


# -- switching ------------------------------------------------------------------------


def test_switch_to_namespace_and_revert(plugin, netns, home_ns, fd_baseline) -> None:
    revert = plugin.switch_to_namespace(None)
    try:
        with nslib.NsHandle.current() as inside:
            assert inside.same_namespace(netns)
    finally:
        revert()
    assert thread_ns() == home_ns
    revert()  # idempotent


def test_switch_on_other_threads(plugin, run_dir, unique) -> None:
    ref = NetNamespace.named(unique)
    with plugin.get_namespace_handle(ref) as target:
        want = target.ns_id

    def worker() -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        home = thread_ns()
        with plugin.switch_to_namespace(ref):
            inside = thread_ns()
        return home, inside, thread_ns()

    with ThreadPoolExecutor(4) as pool:
        for home, inside, back in pool.map(lambda _: worker(), range(16)):
            assert inside == want and back == home
    nslib.named.delete(unique, run_dir=run_dir)


def test_switch_failure_leaves_thread_home(plugin, home_ns, tmp_path) -> None:
    with pytest.raises(nslib.NamespaceNotFound):
        plugin.switch_to_namespace(NetNamespace.path(str(tmp_path / "gone")))
    assert thread_ns() == home_ns and nslib.switch_depth() == 0


# -- lifecycle and the disabled plugin -------------------------------------------------------


def test_disabled_plugin_refuses_every_call(netns, run_dir, unique) -> None:
    p = NsPlugin(Config(disabled=True, run_dir=run_dir))
    p.init()  # as in the vpp-agent: initializing a disabled plugin does nothing
    calls = [
        lambda: p.get_namespace_handle(None),
        lambda: p.default_namespace(),
        lambda: p.switch_to_namespace(None),
    ]
    for ref in (
        NetNamespace(ReferenceType.FD, ""),
        NetNamespace.pid(os.getpid()),
        NetNamespace.path("/proc/self/ns/net"),
        NetNamespace.named(unique),
        NetNamespace.microservice("web"),
        NetNamespace(ReferenceType.UNDEFINED),
    ):
        calls.append(lambda ref=ref: p.get_namespace_handle(ref))
        calls.append(lambda ref=ref: p.switch_to_namespace(ref))
    for call in calls:
        with pytest.raises(nslib.PluginDisabledError, match="disabled"):
            call()
    assert not nslib.named.exists(unique, run_dir=run_dir)  # nothing created either
    assert nslib.switch_depth() == 0
    p.close()


def test_calls_before_init_and_after_close() -> None:
    p = NsPlugin()
    with pytest.raises(RuntimeError, match=r"before init\(\)"):
        p.get_namespace_handle(None)
    with pytest.raises(RuntimeError, match=r"before init\(\)"):
        p.switch_to_namespace(None)
    p.init()
    with pytest.raises(RuntimeError, match="already"):
        p.init()
    p.close()
    p.close()  # idempotent
    with pytest.raises(RuntimeError, match=r"after close\(\)"):
        p.get_namespace_handle(None)


def test_context_manager(fd_baseline) -> None:
    with NsPlugin() as p:
        assert p.initialized
        with nslib.NsHandle.current() as here:
            assert same(p.get_namespace_handle(None), here)
    assert not p.initialized


def test_nsid_name_taken_by_a_dangling_symlink_times_out(plugin, run_dir, unique) -> None:
    """open() follows the link (ENOENT) but O_EXCL does not (EEXIST): no endless loop."""
    nslib.named.create(unique + "x", run_dir=run_dir).close()  # makes run_dir a netns dir
    nslib.named.delete(unique + "x", run_dir=run_dir)
    os.symlink("/nonexistent", os.path.join(run_dir, unique))
    outcome: list[BaseException | None] = []

    def lookup() -> None:
        try:
            plugin.get_namespace_handle(NetNamespace.named(unique), timeout=0.3).close()
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    # A thread, so that the old endless loop fails the test instead of hanging it.
    t = threading.Thread(target=lookup, daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(5)
    assert not t.is_alive(), "get_namespace_handle() spins past its timeout"
    assert time.monotonic() - t0 < 2
    [err] = outcome
    assert isinstance(err, nslib.NotANamespace), err
    assert unique in str(err) and "not a namespace" in str(err)
    assert os.path.islink(os.path.join(run_dir, unique))  # left alone


def test_default_namespace_handles_say_what_they_are(plugin) -> None:
    """Not "the calling thread's namespace": errors must name the right one."""
    with plugin.default_namespace() as h:
        assert h.what == "the plugin's default namespace"
    with plugin.get_namespace_handle(None) as h:
        assert h.what == "the plugin's default namespace"
    with plugin.get_namespace_handle(NetNamespace(ReferenceType.FD, "")) as h:
        assert "default namespace" in repr(h)


def test_a_string_is_a_reference_by_the_one_rule(netns, run_dir, unique, fd_baseline) -> None:
    """get_namespace_handle("blue") used to raise AttributeError (it read
    ns.type first); a string now means what it means everywhere."""
    made = nslib.named.create(unique, run_dir=run_dir)
    try:
        with plugin_in(netns, Config(run_dir=run_dir, create_missing=False)) as p:
            for text in (unique, f"name:{unique}", f"{run_dir}/{unique}"):
                with p.get_namespace_handle(text) as h:
                    assert h.same_namespace(made), text
            with pytest.raises(nslib.NamespaceNotFound):
                p.get_namespace_handle(f"{unique}x")
            with pytest.raises(nslib.InvalidReference, match="'pid:abc'"):
                p.get_namespace_handle("pid:abc")
            with pytest.raises(nslib.InvalidReference):
                p.get_namespace_handle(42)  # type: ignore[arg-type]
    finally:
        made.close()
        nslib.named.delete(unique, run_dir=run_dir)
