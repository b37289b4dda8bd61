"""Configurator: pending items applied when their namespace appears, again after restarts.

Every link has both ends in namespaces the tests create: the plugin is
initialized inside a fresh anonymous namespace, which is therefore its
"default namespace" and the home of every veth peer.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import plugin_in

import nslib
from nslib import NetNamespace, NsPlugin
from nslib import netlink as nl
from nslib.configurator import ApplyContext, ConfigItem, Configurator, ItemStatus
from nslib.plugin import Config

pytestmark = pytest.mark.root

APPLIED, PENDING, FAILED, REMOVED = (
    ItemStatus.APPLIED,
    ItemStatus.PENDING,
    ItemStatus.FAILED,
    ItemStatus.REMOVED,
)
BUSYBOX = shutil.which("busybox")


@pytest.fixture
def home(netns: nslib.NsHandle) -> nslib.NsHandle:
    """The plugin's default namespace: a test namespace, never the host's."""
    return netns


@pytest.fixture
def changes() -> list[tuple[str, ItemStatus]]:
    return []


@pytest.fixture
def conf(plugin: NsPlugin, changes: list[tuple[str, ItemStatus]]) -> Iterator[Configurator]:
    def on_change(item: ConfigItem) -> None:
        changes.append((item.describe(), item.status))

    c = Configurator(plugin, on_change=on_change)
    try:
        yield c
    finally:
        c.close()


def routes(ns: nslib.NsHandle) -> set[tuple[str, int, str | None]]:
    with nl.iproute(ns) as ipr:
        return {(r.get("dst"), r["dst_len"], r.get("gateway")) for r in ipr.route("dump")}


def neighbours(ns: nslib.NsHandle) -> set[tuple[str, str]]:
    with nl.iproute(ns) as ipr:
        return {(n.get("dst"), n.get("lladdr")) for n in ipr.neigh("dump") if n["state"] == 0x80}


def ping(ns: nslib.NsHandle, ip: str) -> subprocess.CompletedProcess[str]:
    assert BUSYBOX, "busybox is needed for ping"

    def go() -> subprocess.CompletedProcess[str]:
        cmd = [BUSYBOX, "ping", "-c1", "-W2", ip]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10)

    return nslib.run_in(ns, go)


def eventually(pred: Callable[[], bool], timeout: float) -> bool:
    """Poll *pred* (for effects the kernel completes asynchronously)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def declare_blue(conf: Configurator, ref: NetNamespace, n: int) -> list[ConfigItem]:
    """A veth into *ref*, a route through it and an ARP entry on it."""
    return [
        conf.add_route("10.251.0.0/24", ns=ref, gateway=f"10.250.{n}.1"),  # before its veth
        conf.add_veth(
            "nlt-blue0",
            f"nlt-h{n}",
            ns=ref,
            addresses=[f"10.250.{n}.2/30"],
            peer_addresses=[f"10.250.{n}.1/30"],
        ),
        conf.add_arp(f"10.250.{n}.100", "02:00:00:00:00:aa", ns=ref, dev="nlt-blue0"),
    ]


# -- named namespaces that do not exist yet --------------------------------------------


def test_named_namespace_created_later(conf, run_dir, unique, home, fd_baseline) -> None:
    ref = NetNamespace.named(unique)
    items = declare_blue(conf, ref, 10)
    for it in items:
        assert it.status is PENDING, it
        assert unique in (it.waiting_for or "")
    assert not nslib.named.exists(unique, run_dir=run_dir)  # nothing created implicitly

    with nslib.named.create(unique, run_dir=run_dir) as blue:
        for it in items:
            it.wait(APPLIED, timeout=5)
        assert ("10.251.0.0", 24, "10.250.10.1") in routes(blue)
        assert ("10.250.10.100", "02:00:00:00:00:aa") in neighbours(blue)
        assert nl.get_link("nlt-h10", ns=home).up
        res = ping(blue, "10.250.10.1")
        assert res.returncode == 0, res.stdout + res.stderr
    conf.close()
    nslib.named.delete(unique, run_dir=run_dir)


def test_named_namespace_in_run_netns_checked_with_ip(home, unique) -> None:
    """``ip -n NAME`` only knows /run/netns: use a unique name there, and clean up."""
    ref = NetNamespace.named(unique)
    plugin = plugin_in(home)  # run_dir: /run/netns
    try:
        with Configurator(plugin) as conf:
            items = declare_blue(conf, ref, 11)
            assert {it.status for it in items} == {PENDING}
            try:
                nslib.named.create(unique).close()
                for it in items:
                    it.wait(APPLIED, timeout=5)
                ip = shutil.which("ip") or "ip"
                out = subprocess.run(
                    [ip, "-n", unique, "route"], check=True, capture_output=True, text=True
                ).stdout
                assert "10.251.0.0/24 via 10.250.11.1 dev nlt-blue0" in out
                out = subprocess.run(
                    [ip, "-n", unique, "neigh"], check=True, capture_output=True, text=True
                ).stdout
                assert "10.250.11.100 dev nlt-blue0 lladdr 02:00:00:00:00:aa PERMANENT" in out
            finally:
                conf.close()
                if nslib.named.exists(unique):
                    nslib.named.delete(unique)
    finally:
        plugin.close()


def test_named_namespace_deleted_and_recreated(conf, run_dir, unique) -> None:
    ref = NetNamespace.named(unique)
    items = declare_blue(conf, ref, 12)
    nslib.named.create(unique, run_dir=run_dir).close()
    for it in items:
        it.wait(APPLIED, timeout=5)
    gens = [it.generation for it in items]
    nslib.named.delete(unique, run_dir=run_dir)
    for it in items:
        it.wait(PENDING, timeout=5)
    # A new namespace under the same name: applied again, in the new one.
    with nslib.named.create(unique, run_dir=run_dir) as again:
        for it, g in zip(items, gens, strict=True):
            it.wait(APPLIED, timeout=5, generation=g + 1)
        assert ("10.251.0.0", 24, "10.250.12.1") in routes(again)
    nslib.named.delete(unique, run_dir=run_dir)


def test_placeholder_before_mount_stays_pending(conf, run_dir, unique) -> None:
    """A named namespace's file appears before its bind mount; wait for the mount."""
    nslib.named.create(unique + "x", run_dir=run_dir).close()  # makes run_dir a netns dir
    nslib.named.delete(unique + "x", run_dir=run_dir)
    placeholder = os.path.join(run_dir, unique)
    Path(placeholder).touch()
    route = conf.add_route("10.251.0.0/24", ns=NetNamespace.named(unique), dev="lo")
    time.sleep(0.3)  # several polls see the unmounted placeholder
    assert route.status is PENDING, route
    with nslib.NsHandle.new() as ns:
        nl.set_link_up("lo", ns=ns)
        fd = ns.fileno()
        subprocess.run(
            ["mount", "--bind", f"/proc/self/fd/{fd}", placeholder], check=True, pass_fds=[fd]
        )
        route.wait(APPLIED, timeout=5)
        assert ("10.251.0.0", 24, None) in routes(ns)
    nslib.named.delete(unique, run_dir=run_dir)


# -- resolution rules ---------------------------------------------------------------------


def test_resolvable_namespace_is_applied_at_once(conf, home) -> None:
    with nslib.NsHandle.new() as other:
        path = NetNamespace.path(f"/proc/self/fd/{other.fileno()}")
        veth = conf.add_veth(
            "nlt-a0",
            "nlt-a1",
            ns=path,
            addresses=["10.250.13.2/30"],
            peer_addresses=["10.250.13.1/30"],
        )
        assert veth.status is APPLIED and veth.generation == 1  # no waiting needed
        assert nl.get_link("nlt-a0", ns=other).addresses[0].compressed == "10.250.13.2/30"
        assert nl.get_link("nlt-a1", ns=home).up
        route = conf.add_route("default", ns=None, gateway="10.250.13.2", dev="nlt-a1")
        assert route.status is APPLIED  # ns=None: the plugin's default namespace
        assert {r for r in routes(home) if r[1] == 0} == {(None, 0, "10.250.13.2")}


def test_failure_is_reported_and_retried_on_next_trigger(conf, home, changes) -> None:
    with nslib.NsHandle.new() as other:
        ref = NetNamespace.path(f"/proc/self/fd/{other.fileno()}")
        arp = conf.add_arp("10.250.14.1", "02:00:00:00:00:bb", ns=ref, dev="nlt-late")
        assert arp.status is FAILED
        assert isinstance(arp.error, nslib.LinkNotFound) and "nlt-late" in str(arp.error)
        assert (arp.describe(), FAILED) in changes
        # The next trigger (here: a new item for the same namespace) retries it.
        conf.add_veth("nlt-late", "nlt-late-p", ns=ref)
        arp.wait(APPLIED, timeout=5)
        assert arp.error is None
        assert ("10.250.14.1", "02:00:00:00:00:bb") in neighbours(other)
        assert (arp.describe(), APPLIED) in changes


def test_failed_item_retried_with_backoff(conf, home) -> None:
    with nslib.NsHandle.new() as other:
        ref = NetNamespace.path(f"/proc/self/fd/{other.fileno()}")
        route = conf.add_route("10.251.1.0/24", ns=ref, dev="nlt-bk")
        assert route.status is FAILED
        nl.add_veth("nlt-bk", "nlt-bk-p", ns=other)  # behind the configurator's back
        nl.set_link_up("nlt-bk", ns=other)
        nl.set_link_up("nlt-bk-p", ns=other)
        route.wait(APPLIED, timeout=5)  # no trigger but the retry timer


def test_apply_is_idempotent(conf, run_dir, unique) -> None:
    ref = NetNamespace.named(unique)
    with nslib.named.create(unique, run_dir=run_dir) as blue:
        nl.set_link_up("lo", ns=blue)
        nl.add_route("10.251.2.0/24", ns=blue, dev="lo")  # already there
        first = conf.add_route("10.251.2.0/24", ns=ref, dev="lo")
        twin = conf.add_route("10.251.2.0/24", ns=ref, dev="lo")
        arp = conf.add_arp("10.250.15.1", "02:00:00:00:00:cc", ns=ref, dev="lo")
        assert [first.status, twin.status, arp.status] == [APPLIED] * 3
        before = (routes(blue), neighbours(blue))
        gens = [it.generation for it in (first, twin, arp)]
        conf.resync()  # re-apply everything
        for it, g in zip((first, twin, arp), gens, strict=True):
            it.wait(APPLIED, timeout=5, generation=g + 1)
            assert it.error is None
        assert (routes(blue), neighbours(blue)) == before
    nslib.named.delete(unique, run_dir=run_dir)


def test_remove_undoes(conf, run_dir, unique, home) -> None:
    ref = NetNamespace.named(unique)
    items = declare_blue(conf, ref, 16)
    with nslib.named.create(unique, run_dir=run_dir) as blue:
        for it in items:
            it.wait(APPLIED, timeout=5)
        route, veth, arp = items
        conf.remove(arp)
        arp.wait(REMOVED, timeout=5)
        assert ("10.250.16.100", "02:00:00:00:00:aa") not in neighbours(blue)
        conf.remove(route)
        route.wait(REMOVED, timeout=5)
        assert not any(r[0] == "10.251.0.0" for r in routes(blue))
        conf.remove(veth)
        veth.wait(REMOVED, timeout=5)
        assert nl.list_links(blue) == ["lo"] and nl.list_links(home) == ["lo"]
        assert conf.items() == []
        conf.remove(veth)  # twice: a no-op
        assert all(it.error is None for it in items)
    nslib.named.delete(unique, run_dir=run_dir)


def test_removing_a_veth_fails_what_depended_on_it(conf, run_dir, unique) -> None:
    ref = NetNamespace.named(unique)
    route, veth, arp = declare_blue(conf, ref, 17)
    with nslib.named.create(unique, run_dir=run_dir):
        veth.wait(APPLIED, timeout=5)
        route.wait(APPLIED, timeout=5)
        conf.remove(veth)
        route.wait(FAILED, timeout=5)  # the kernel dropped it with the device: say so
        arp.wait(FAILED, timeout=5)
        assert isinstance(arp.error, nslib.LinkNotFound)
    nslib.named.delete(unique, run_dir=run_dir)


def test_move_item_and_its_undo(conf, run_dir, unique, home) -> None:
    nl.add_veth("nlt-mv", "nlt-mvp", ns=home)
    nl.add_address("nlt-mv", "10.250.18.1/30", ns=home)
    ref = NetNamespace.named(unique)
    move = conf.add_move("nlt-mv", ref, new_name="nlt-in", addresses=["10.250.19.1/24"])
    assert move.status is PENDING
    with nslib.named.create(unique, run_dir=run_dir) as blue:
        move.wait(APPLIED, timeout=5)
        info = nl.get_link("nlt-in", ns=blue)
        assert {str(a) for a in info.addresses} == {"10.250.18.1/30", "10.250.19.1/24"}
        assert info.up and "nlt-mv" not in nl.list_links(home)
        conf.remove(move)
        move.wait(REMOVED, timeout=5)
        assert move.error is None
        back = nl.get_link("nlt-mv", ns=home)  # its old name, in its old namespace
        assert {str(a) for a in back.addresses} == {"10.250.18.1/30", "10.250.19.1/24"}
        assert "nlt-in" not in nl.list_links(blue)
    nslib.named.delete(unique, run_dir=run_dir)


def test_different_namespaces_do_not_block_each_other(plugin) -> None:
    gate = threading.Event()

    def on_change(item: ConfigItem) -> None:
        if "nlt-slow" in item.describe():
            gate.wait(10)  # holds the worker of the slow namespace

    with (
        Configurator(plugin, on_change=on_change, apply_timeout=0.3) as conf,
        nslib.NsHandle.new() as slow,
        nslib.NsHandle.new() as fast,
    ):
        slow_ref = NetNamespace.path(f"/proc/self/fd/{slow.fileno()}")
        fast_ref = NetNamespace.path(f"/proc/self/fd/{fast.fileno()}")
        conf.add_veth("nlt-slow", "nlt-slowp", ns=slow_ref)  # its worker now blocks
        blocked = conf.add_veth("nlt-slow2", "nlt-slow2p", ns=slow_ref)  # waits 0.3 s, in vain
        t0 = time.monotonic()
        quick = conf.add_veth("nlt-fast", "nlt-fastp", ns=fast_ref)
        assert quick.status is APPLIED and time.monotonic() - t0 < 2
        assert blocked.status is PENDING  # not even tried: its worker is busy
        gate.set()
        blocked.wait(APPLIED, timeout=5)


def test_concurrent_declarations(conf, run_dir, unique) -> None:
    ref = NetNamespace.named(unique)
    with nslib.named.create(unique, run_dir=run_dir) as blue:
        nl.set_link_up("lo", ns=blue)

        def declare(i: int) -> ConfigItem:
            return conf.add_route(f"10.252.{i}.0/24", ns=ref, dev="lo")

        threads_items: list[ConfigItem] = []
        lock = threading.Lock()

        def run(i: int) -> None:
            it = declare(i)
            with lock:
                threads_items.append(it)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(threads_items) == 16
        for it in threads_items:
            it.wait(APPLIED, timeout=5)
        have = routes(blue)
        assert all((f"10.252.{i}.0", 24, None) in have for i in range(16))
    nslib.named.delete(unique, run_dir=run_dir)


# -- API edges ---------------------------------------------------------------------------


def test_bad_declarations_raise_at_once(conf) -> None:
    ref = NetNamespace.named("nlt-whatever")
    with pytest.raises(ValueError, match="invalid interface name"):
        conf.add_veth("x" * 16, "p", ns=ref)
    with pytest.raises(ValueError):
        conf.add_veth("a", "b", ns=ref, addresses=["10.0.0.300/24"])
    with pytest.raises(TypeError):
        conf.add_veth("a", "b", ns=ref, addresses="10.0.0.1/24")
    with pytest.raises(ValueError, match="gateway or a dev"):
        conf.add_route("10.0.0.0/24", ns=ref)
    with pytest.raises(ValueError, match="MAC"):
        conf.add_arp("10.0.0.1", "zz", ns=ref, dev="eth0")
    with pytest.raises(nslib.InvalidReference):
        conf.add_route("10.0.0.0/24", ns=NetNamespace(nslib.ReferenceType.UNDEFINED), dev="lo")
    assert conf.items() == []


def test_wait_timeout_says_why(conf) -> None:
    item = conf.add_route("10.0.0.0/24", ns=NetNamespace.named("nlt-never"), dev="lo")
    with pytest.raises(TimeoutError, match="nlt-never"):
        item.wait(APPLIED, timeout=0.1)


def test_disabled_or_uninitialized_plugin() -> None:
    with pytest.raises(nslib.PluginDisabledError):
        Configurator(NsPlugin(Config(disabled=True)))
    with pytest.raises(RuntimeError, match="init"):
        Configurator(NsPlugin())


def test_close_keeps_configuration_and_threads_end(plugin, home) -> None:
    conf = Configurator(plugin)
    with nslib.NsHandle.new() as other:
        ref = NetNamespace.path(f"/proc/self/fd/{other.fileno()}")
        conf.add_veth("nlt-keep", "nlt-keepp", ns=ref).wait(APPLIED, timeout=5)
        waiting = conf.add_route("10.0.0.0/24", ns=NetNamespace.named("nlt-never"), dev="lo")
        conf.close()
        conf.close()
        with pytest.raises(RuntimeError, match="configurator closed"):
            waiting.wait(APPLIED, timeout=5)
        assert not [t for t in threading.enumerate() if t.name.startswith("nslib-cfg")]
        assert "nlt-keep" in nl.list_links(other)
        with pytest.raises(RuntimeError, match="closed"):
            conf.add_route("10.0.0.0/24", ns=ref, dev="lo")


# -- microservices (real docker) -----------------------------------------------------------


@pytest.fixture
def tracker(dockerd) -> Iterator[nslib.MicroserviceTracker]:
    client = dockerd.client()
    t = nslib.MicroserviceTracker(client)
    t.start()
    try:
        assert t.wait_in_sync(30), t.health()
        yield t
    finally:
        t.stop()
        client.close()


@pytest.fixture
def ms_conf(home, tracker) -> Iterator[Configurator]:
    p = plugin_in(home, tracker=tracker)
    try:
        with Configurator(p) as c:
            yield c
    finally:
        p.close()


def _harness():  # tests/dockerd.py, imported lazily like the conftest fixture does
    import dockerd as harness

    return harness


def in_container(dockerd, cid: str) -> str:
    return dockerd.docker_cli("exec", cid, "ip", "-4", "addr", "show", "eth1").stdout


@pytest.mark.docker
def test_veth_declared_before_the_container_exists(
    dockerd, docker_client, ms_conf, home, unique
) -> None:
    ms = NetNamespace.microservice(unique)
    veth = ms_conf.add_veth(
        "eth1", "nlt-w0", ns=ms, addresses=["10.250.20.2/30"], peer_addresses=["10.250.20.1/30"]
    )
    assert veth.status is PENDING and unique in (veth.waiting_for or "")
    c = _harness().run_container(docker_client, label=unique)  # --network none
    try:
        t0 = time.monotonic()
        veth.wait(APPLIED, timeout=5)
        assert time.monotonic() - t0 < 1.0, "the pending veth took more than a second"
        assert "inet 10.250.20.2/30" in in_container(dockerd, c.id)
        res = ping(home, "10.250.20.2")
        assert res.returncode == 0, res.stdout + res.stderr
        c.stop(timeout=1)
        veth.wait(PENDING, timeout=10)
        # The pair dies with the namespace; the kernel frees it asynchronously.
        assert eventually(lambda: "nlt-w0" not in nl.list_links(home), timeout=10)
    finally:
        c.remove(force=True)


@pytest.mark.docker
def test_restart_and_crash_are_reconfigured(dockerd, docker_client, ms_conf, home, unique) -> None:
    ms = NetNamespace.microservice(unique)
    veth = ms_conf.add_veth(
        "eth1", "nlt-r0", ns=ms, addresses=["10.250.21.2/30"], peer_addresses=["10.250.21.1/30"]
    )
    route = ms_conf.add_route("10.251.3.0/24", ns=ms, gateway="10.250.21.1")
    c = _harness().run_container(docker_client, label=unique, restart="always")
    try:
        veth.wait(APPLIED, timeout=10)
        route.wait(APPLIED, timeout=10)

        def check_back(generation: int) -> None:
            veth.wait(APPLIED, timeout=15, generation=generation)
            route.wait(APPLIED, timeout=15, generation=generation)
            assert "inet 10.250.21.2/30" in in_container(dockerd, c.id)
            out = dockerd.docker_cli("exec", c.id, "ip", "route").stdout
            assert "10.251.3.0/24 via 10.250.21.1" in out
            res = ping(home, "10.250.21.2")
            assert res.returncode == 0, res.stdout + res.stderr

        # docker restart: a new namespace.
        c.restart(timeout=1)
        check_back(2)
        # SIGKILL of the container's process under --restart=always.
        c.reload()
        pid = c.attrs["State"]["Pid"]
        os.kill(pid, signal.SIGKILL)
        check_back(3)
        c.reload()
        assert c.attrs["State"]["Pid"] != pid
    finally:
        c.remove(force=True)


@pytest.mark.docker
def test_label_taken_over_by_a_newer_container(
    dockerd, docker_client, ms_conf, home, unique
) -> None:
    ms = NetNamespace.microservice(unique)
    veth = ms_conf.add_veth("eth1", "nlt-t0", ns=ms, addresses=["10.250.22.2/30"])
    first = _harness().run_container(docker_client, label=unique)
    second = None
    try:
        veth.wait(APPLIED, timeout=10)
        g = veth.generation
        second = _harness().run_container(docker_client, label=unique)  # newer: it wins
        veth.wait(APPLIED, timeout=10, generation=g + 1)
        assert "inet 10.250.22.2/30" in in_container(dockerd, second.id)
        # The old pair was ours: it was moved over, not left behind.
        gone = dockerd.docker_cli("exec", first.id, "ip", "link", "show", "eth1", check=False)
        assert gone.returncode != 0
        assert nl.list_links(home).count("nlt-t0") == 1
    finally:
        for c in (first, second):
            if c is not None:
                c.remove(force=True)


def test_a_failing_retry_reports_once(plugin: NsPlugin, caplog: pytest.LogCaptureFixture) -> None:
    """The same failure again (a new exception object) is no change: no new on_change or log."""
    seen: list[tuple[ItemStatus, str]] = []

    def on_change(item: ConfigItem) -> None:
        seen.append((item.status, str(item.error)))

    with (
        Configurator(plugin, on_change=on_change) as conf,
        nslib.NsHandle.new() as other,
        caplog.at_level("WARNING", logger="nslib.configurator"),
    ):
        ref = NetNamespace.path(f"/proc/self/fd/{other.fileno()}")
        route = conf.add_route("10.251.9.0/24", ns=ref, dev="nlt-nope")
        assert route.status is FAILED
        assert eventually(lambda: route._attempts >= 4, timeout=5)  # retried with backoff
        conf.close()
    assert [s for s, _ in seen] == [FAILED], seen
    assert len([r for r in caplog.records if "nlt-nope" in r.getMessage()]) == 1


def test_a_dead_worker_fails_its_items_and_is_replaced(
    plugin: NsPlugin, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected error inside a worker (here: EMFILE) must not
    leave its namespace without a worker: its items are FAILED with the error and
    the next declaration starts a fresh worker.  (Injected at the end of a pass,
    where the worker decides which netlink sessions to keep.)"""
    import errno

    from nslib.configurator import worker

    def emfile(self: object, s: object, items: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files (injected)")

    with Configurator(plugin, apply_timeout=3) as conf, nslib.NsHandle.new() as other:
        ref = NetNamespace.path(f"/proc/self/fd/{other.fileno()}")
        monkeypatch.setattr(worker._Worker, "_keep_sessions", emfile)
        with caplog.at_level("ERROR", logger="nslib.configurator"):
            veth = conf.add_veth("nlt-dw0", "nlt-dw0p", ns=ref)
            veth.wait(FAILED, timeout=5)
        assert isinstance(veth.error, OSError) and veth.error.errno == errno.EMFILE
        assert "died" in caplog.text
        monkeypatch.undo()
        t0 = time.monotonic()
        route = conf.add_route("10.251.10.0/24", ns=ref, dev="nlt-dw0")
        assert route.status is APPLIED, route  # a fresh worker, not apply_timeout in vain
        assert time.monotonic() - t0 < 2
        veth.wait(APPLIED, timeout=5)  # the fresh worker retried the failed item too
        assert veth.error is None


@pytest.mark.docker
def test_a_refused_shared_namespace_is_failed_not_pending(
    docker_client, ms_conf, home, unique
) -> None:
    """--network host: never configured (it is the host), and FAILED saying why."""
    ms = NetNamespace.microservice(unique)
    veth = ms_conf.add_veth("nlt-sh0", "nlt-sh0p", ns=ms)
    assert veth.status is PENDING
    c = _harness().run_container(docker_client, label=unique, network="host")
    try:
        veth.wait(FAILED, timeout=10)
        assert isinstance(veth.error, nslib.SharedNamespaceError), veth.error
        assert "network host" in str(veth.error)
        assert "nlt-sh0p" not in nl.list_links(home)
    finally:
        c.remove(force=True)
    veth.wait(PENDING, timeout=10)


# -- sessions, the extension point ----------------------------------------------------------


def test_existing_named_namespace_never_waits_for_a_poll(plugin, run_dir, unique) -> None:
    """Applied by the time add_*() returns, even with a poll that never ticks."""
    with (
        Configurator(plugin, poll_interval=3600) as conf,
        nslib.named.create(unique, run_dir=run_dir) as blue,
    ):
        veth = conf.add_veth(
            "nlt-np0", "nlt-np0p", ns=NetNamespace.named(unique), addresses=["10.250.40.2/30"]
        )
        assert veth.status is APPLIED, veth
        assert nl.get_link("nlt-np0", ns=blue).up
    nslib.named.delete(unique, run_dir=run_dir)


def test_a_pending_worker_is_woken_by_the_mount_itself(
    plugin, run_dir, unique, monkeypatch: pytest.MonkeyPatch, fd_baseline
) -> None:
    """The worker waiting for a named namespace applies on the mount, with no hand-off.

    The configurator's watcher thread is made blind (its check does nothing), so only
    the worker's own wait on the mount table can apply the item.  An unrelated mount
    while only the bare placeholder exists wakes the worker too, and must not apply it.
    """
    with Configurator(plugin, poll_interval=3600) as conf:
        monkeypatch.setattr(conf, "_check", lambda refs: None)
        veth = conf.add_veth("nlt-dw0", "nlt-dw0p", ns=NetNamespace.named(unique))
        assert veth.status is PENDING, veth
        nslib.named.create(unique + "o", run_dir=run_dir).close()  # makes run_dir
        placeholder = os.path.join(run_dir, unique)
        Path(placeholder).touch()
        nslib.named.delete(unique + "o", run_dir=run_dir)  # some other mount change
        with pytest.raises(TimeoutError):
            veth.wait(APPLIED, timeout=0.3)  # a placeholder is not a namespace
        os.unlink(placeholder)
        with nslib.named.create(unique, run_dir=run_dir) as blue:
            veth.wait(APPLIED, timeout=10)
            assert nl.get_link("nlt-dw0", ns=blue)
        deadline = time.monotonic() + 10  # applied: the worker's own wait is closed again
        while any(w.direct is not None for w in list(conf._workers.values())):
            assert time.monotonic() < deadline, "the worker still waits on the mount table"
            time.sleep(0.01)
    nslib.named.delete(unique, run_dir=run_dir)


def test_a_worker_waiting_on_the_mount_table_sees_removal_and_close(plugin, unique) -> None:
    """remove() and close() reach a worker that sleeps on the mount table, not on its condition."""

    def asleep(conf: Configurator, item: ConfigItem) -> None:
        worker = conf._workers[item.ns]
        deadline = time.monotonic() + 10
        while worker.direct is None:
            assert time.monotonic() < deadline, "the worker never waited on the mount table"
            time.sleep(0.01)
        time.sleep(0.2)  # past its last check: in poll() now

    with Configurator(plugin, poll_interval=3600) as conf:
        gone = conf.add_veth("nlt-dr0", "nlt-dr0p", ns=NetNamespace.named(unique))
        assert gone.status is PENDING, gone
        asleep(conf, gone)
        conf.remove(gone)
        gone.wait(REMOVED, timeout=10)
        kept = conf.add_veth("nlt-dr1", "nlt-dr1p", ns=NetNamespace.named(unique + "k"))
        assert kept.status is PENDING, kept
        asleep(conf, kept)
        worker = conf._workers[kept.ns]
    assert not worker.thread.is_alive()  # close() joined it (it waits 5 s at most)


def test_worker_keeps_its_sessions_between_passes(
    plugin, run_dir, unique, monkeypatch: pytest.MonkeyPatch, fd_baseline
) -> None:
    """A pass over a namespace that did not change opens no new netlink socket;
    closing the configurator closes every session (fd_baseline)."""
    from nslib.configurator import worker

    made: list[object] = []

    class Counting(nl.Session):
        def __init__(self, ns: object = None) -> None:
            super().__init__(ns)  # type: ignore[arg-type]
            made.append(ns)

    monkeypatch.setattr(worker.nl, "Session", Counting)
    ref = NetNamespace.named(unique)
    with Configurator(plugin) as conf, nslib.named.create(unique, run_dir=run_dir) as blue:
        veth = conf.add_veth("nlt-ks0", "nlt-ks0p", ns=ref, addresses=["10.250.41.2/30"])
        route = conf.add_route("10.251.41.0/24", ns=ref, dev="nlt-ks0")
        assert (veth.status, route.status) == (APPLIED, APPLIED)
        assert len(made) == 2  # the target's and the default namespace's, once each
        for g in (2, 3, 4):
            conf.resync()
            veth.wait(APPLIED, timeout=5, generation=g)
            route.wait(APPLIED, timeout=5, generation=g)
        assert len(made) == 2
        assert ("10.251.41.0", 24, None) in routes(blue)
    nslib.named.delete(unique, run_dir=run_dir)


class LoMtuItem(ConfigItem):
    """A kind of item defined outside nslib: the MTU of ``lo``, put back on undo."""

    kind = "lo-mtu"

    def __init__(self, ns: NetNamespace | None, mtu: int) -> None:
        super().__init__(ns)
        self.mtu = mtu
        self.undone = 0
        self.applied_in: tuple[int, int] | None = None

    def describe(self) -> str:
        return f"lo mtu {self.mtu} in {self.ns}"

    def apply(self, ctx: ApplyContext) -> None:
        self.applied_in = ctx.handle(self.ns).ns_id
        s = ctx.session(self.ns)
        if s.get_link("lo", addresses=False).mtu != self.mtu:
            s.set_mtu("lo", self.mtu)

    def undo(self, ctx: ApplyContext) -> None:
        ctx.session(self.ns).set_mtu("lo", 65536)
        self.undone += 1


def test_a_new_kind_of_item_through_add(conf, run_dir, unique, changes) -> None:
    ref = NetNamespace.named(unique)
    item = conf.add(LoMtuItem(ref, 9000))
    assert item.status is PENDING and unique in (item.waiting_for or "")
    with nslib.named.create(unique, run_dir=run_dir) as blue:
        item.wait(APPLIED, timeout=5)
        assert nl.get_link("lo", ns=blue).mtu == 9000 and item.applied_in == blue.ns_id
        assert (item.describe(), APPLIED) in changes and item in conf.items()
        conf.remove(item)
        item.wait(REMOVED, timeout=5)
        assert item.undone == 1 and nl.get_link("lo", ns=blue).mtu == 65536
    nslib.named.delete(unique, run_dir=run_dir)


def test_add_refuses_what_is_not_a_new_item(conf) -> None:
    with pytest.raises(TypeError, match="ConfigItem"):
        conf.add("route 10.0.0.0/8")  # type: ignore[type-var]
    with pytest.raises(TypeError):
        conf.add(LoMtuItem("name:x", 1500))  # type: ignore[arg-type]
    item = conf.add(LoMtuItem(NetNamespace.named("nlt-never"), 1500))
    with pytest.raises(ValueError, match="declared already"):
        conf.add(item)
    assert conf.items() == [item]
