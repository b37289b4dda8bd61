"""Configurator.add_cni: CNI attachments declared for namespaces that may not exist yet.

The plugins (the Debian reference ``bridge`` + ``host-local``) run in the
configurator's default namespace, a test namespace: the bridge is made
there, never on the host.  The result cache and host-local's store are
temporary directories.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import missing, plugin_in

import nslib
from nslib import NetNamespace, NsPlugin, named
from nslib.cni import CNIConfigError, CNIError, NetworkConfigList, Runtime
from nslib.cni.errors import CNIArgumentError
from nslib.cni.item import CNIItem, default_container_id
from nslib.configurator import ConfigItem, Configurator, ItemStatus

pytestmark = pytest.mark.root

APPLIED, PENDING, FAILED, REMOVED = (
    ItemStatus.APPLIED,
    ItemStatus.PENDING,
    ItemStatus.FAILED,
    ItemStatus.REMOVED,
)
PLUGIN_DIR = "/usr/lib/cni"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


class World:
    """A test's CNI directories and network (bridge in the default namespace)."""

    def __init__(self, base: Path, unique: str) -> None:
        self.base = base
        rnd = random.Random(unique)
        self.subnet = f"10.{rnd.randint(200, 230)}.{rnd.randint(0, 255)}.0/24"
        self.bridge = f"{unique[:11]}br"
        self.plugins = base / "plugins"
        self.plugins.mkdir()
        self.runtime = Runtime([str(self.plugins), PLUGIN_DIR], str(base / "cache"))

    def netlist(self, *more: dict[str, Any], name: str = "nsltcfg") -> NetworkConfigList:
        bridge = {
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            "ipam": {
                "type": "host-local",
                "subnet": self.subnet,
                "dataDir": str(self.base / "ipam"),
            },
        }
        return NetworkConfigList.from_dict(
            {"cniVersion": "1.0.0", "name": name, "plugins": [bridge, *more]}
        )

    def reserved(self, name: str = "nsltcfg") -> set[str]:
        d = self.base / "ipam" / name
        return {f for f in os.listdir(d) if f[0].isdigit()} if d.exists() else set()

    def fake(self, name: str, body: str) -> str:
        p = self.plugins / name
        p.write_text("#!/bin/sh\n" + body)
        p.chmod(0o755)
        return name


@pytest.fixture
def world(unique: str) -> Iterator[World]:
    for n in ("bridge", "host-local"):
        if not os.access(os.path.join(PLUGIN_DIR, n), os.X_OK):
            missing(f"needs the CNI reference plugins in {PLUGIN_DIR}")
    base = Path(tempfile.mkdtemp(prefix=f"{unique}-cfgcni-"))
    try:
        yield World(base, unique)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def home(netns: nslib.NsHandle) -> nslib.NsHandle:
    """The plugin's default namespace: where the CNI plugins run."""
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


def eventually(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def links(ns: nslib.NsHandle) -> list[str]:
    import socket

    return sorted(n for _, n in nslib.run_in(ns, socket.if_nameindex))


def ping(src: nslib.NsHandle, ip: str) -> bool:
    argv = [BUSYBOX, "ping", "-c", "1", "-W", "2", ip]
    return nslib.run(src, argv, etc=False, capture_output=True, check=False).returncode == 0


def ip_of(item: CNIItem) -> str:
    assert item.result is not None
    return item.result.ips[0].address.split("/")[0]


# -- named namespaces (no docker) ------------------------------------------------------


def test_named_namespace_lifecycle(conf, world, home, run_dir, unique, changes) -> None:
    name = f"{unique}c"
    ref = NetNamespace.named(name)
    nl = world.netlist()
    item = conf.add_cni(nl, ns=ref, ifname="net0", runtime=world.runtime)
    assert item.status is PENDING and name in (item.waiting_for or "")
    assert item.container_id == default_container_id(ref) == default_container_id(f"name:{name}")
    assert world.reserved() == set()

    with named.create(name, run_dir=run_dir) as ns:
        item.wait(APPLIED, timeout=10)
        ip = ip_of(item)
        assert "net0" in links(ns) and world.bridge in links(home)
        assert world.reserved() == {ip}
        assert ping(home, ip)
        [att] = world.runtime.attachments()
        assert (att.network, att.container_id, att.ifname) == ("nsltcfg", item.container_id, "net0")
        # A forced resync finds it in place (CHECK passes): nothing is added twice.
        g = item.generation
        conf.resync()
        item.wait(APPLIED, timeout=10, generation=g + 1)
        assert world.reserved() == {ip} and links(ns).count("net0") == 1
    named.delete(name, run_dir=run_dir)

    # The namespace is gone: DEL gives the address back at once.
    item.wait(PENDING, timeout=10)
    assert item.result is None
    assert world.reserved() == set() and world.runtime.attachments() == []

    with named.create(name, run_dir=run_dir) as ns:
        item.wait(APPLIED, timeout=10)
        assert "net0" in links(ns) and len(world.reserved()) == 1
        assert ping(home, ip_of(item))
        conf.remove(item)
        item.wait(REMOVED, timeout=10)
        assert item.error is None
        assert links(ns) == ["lo"]
    named.delete(name, run_dir=run_dir)
    assert world.reserved() == set() and world.runtime.attachments() == []
    assert [s for d, s in changes if "nsltcfg" in d] == [
        PENDING,
        APPLIED,
        APPLIED,
        PENDING,
        APPLIED,
        REMOVED,
    ]


def test_removed_while_its_namespace_is_gone(conf, world, run_dir, unique) -> None:
    # remove() after the namespace vanished but before a pass noticed: released, not leaked.
    name = f"{unique}g"
    with named.create(name, run_dir=run_dir):
        item = conf.add_cni(world.netlist(), ns=NetNamespace.named(name), runtime=world.runtime)
        item.wait(APPLIED, timeout=10)
        assert len(world.reserved()) == 1
        named.delete(name, run_dir=run_dir)
        conf.remove(item)
    item.wait(REMOVED, timeout=10)
    assert item.error is None
    assert world.reserved() == set() and world.runtime.attachments() == []


def test_adopts_an_attachment_made_before(conf, world, home, run_dir, unique) -> None:
    # The same container ID's attachment is in the cache already (an earlier
    # process made it): CHECK passes, so it is kept, not added again.
    name = f"{unique}d"
    nl = world.netlist()
    ref = NetNamespace.named(name)
    with named.create(name, run_dir=run_dir) as ns:
        first = nslib.run_in(home, world.runtime.add, nl, default_container_id(ref), ns)
        item = conf.add_cni(nl, ns=ref, runtime=world.runtime)
        item.wait(APPLIED, timeout=10)
        assert item.result is not None and ip_of(item) == first.ips[0].address.split("/")[0]
        assert world.reserved() == {ip_of(item)} and links(ns).count("eth0") == 1
        conf.remove(item)
        item.wait(REMOVED, timeout=10)
    named.delete(name, run_dir=run_dir)
    assert world.reserved() == set()


def test_a_failing_chain_is_failed_and_leaves_nothing(conf, world, run_dir, unique) -> None:
    bad = world.fake(
        "nslt-fail",
        'cat >/dev/null; [ "$CNI_COMMAND" = ADD ] || exit 0\n'
        'echo \'{"cniVersion":"1.0.0","code":117,"msg":"no luck"}\'; exit 1\n',
    )
    name = f"{unique}f"
    with named.create(name, run_dir=run_dir) as ns:
        item = conf.add_cni(
            world.netlist({"type": bad}), ns=NetNamespace.named(name), runtime=world.runtime
        )
        item.wait(FAILED, timeout=10)
        assert isinstance(item.error, CNIError) and item.error.code == 117
        assert item.error.cleaned_up
        assert world.reserved() == set() and links(ns) == ["lo"]
        assert world.runtime.attachments() == []
        conf.remove(item)
        item.wait(REMOVED, timeout=10)
    named.delete(name, run_dir=run_dir)


def test_bad_declarations_raise_at_once(conf, world, tmp_path) -> None:
    nl = world.netlist()
    with pytest.raises(CNIArgumentError, match="namespace of its own"):
        conf.add_cni(nl, ns=None, runtime=world.runtime)
    with pytest.raises(CNIArgumentError, match="interface name"):
        conf.add_cni(nl, ns=NetNamespace.named("x"), ifname="a/b", runtime=world.runtime)
    with pytest.raises(CNIArgumentError, match="container ID"):
        conf.add_cni(nl, ns=NetNamespace.named("x"), container_id="-x", runtime=world.runtime)
    bad = tmp_path / "bad.conflist"
    bad.write_text('{"cniVersion": "1.0.0", "plugins": []}')
    with pytest.raises(CNIConfigError) as ei:
        conf.add_cni(bad, ns=NetNamespace.named("x"))
    assert ei.value.path == str(bad)
    assert conf.items() == []


# -- microservices (real docker) ---------------------------------------------------------


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


def in_container(dockerd: Any, cid: str) -> subprocess.CompletedProcess[str]:
    return dockerd.docker_cli("exec", cid, "ip", "-4", "addr", "show", "eth0", check=False)


@pytest.mark.docker
def test_microservice_declared_before_it_exists(
    dockerd, docker_client, ms_conf, world, home, unique
) -> None:
    import dockerd as harness

    item = ms_conf.add_cni(
        world.netlist(), ns=NetNamespace.microservice(unique), runtime=world.runtime
    )
    assert item.status is PENDING and unique in (item.waiting_for or "")
    c = harness.run_container(docker_client, label=unique)  # --network none
    try:
        item.wait(APPLIED, timeout=15)
        ip = ip_of(item)
        assert f"inet {ip}/24" in in_container(dockerd, c.id).stdout
        assert world.reserved() == {ip}
        assert ping(home, ip)

        c.stop(timeout=1)
        item.wait(PENDING, timeout=15)
        # DEL ran on STOPPED: the reservation and the cache entry are gone now.
        assert world.reserved() == set() and world.runtime.attachments() == []
        # The host end dies with the container's namespace (asynchronously).
        assert eventually(lambda: links(home) == sorted(["lo", world.bridge]), 10)

        c.start()
        item.wait(APPLIED, timeout=15, generation=2)
        ip2 = ip_of(item)
        assert f"inet {ip2}/24" in in_container(dockerd, c.id).stdout
        assert world.reserved() == {ip2}
        assert ping(home, ip2)

        ms_conf.remove(item)
        item.wait(REMOVED, timeout=15)
        assert item.error is None
        assert "eth0" not in dockerd.docker_cli("exec", c.id, "ip", "link").stdout
        assert world.reserved() == set() and world.runtime.attachments() == []
    finally:
        c.remove(force=True)


@pytest.mark.docker
def test_microservice_restart_under_restart_always(
    dockerd, docker_client, ms_conf, world, home, unique
) -> None:
    import dockerd as harness

    item = ms_conf.add_cni(
        world.netlist(), ns=NetNamespace.microservice(unique), runtime=world.runtime
    )
    c = harness.run_container(docker_client, label=unique, restart="always")
    try:
        item.wait(APPLIED, timeout=15)
        c.restart(timeout=1)
        item.wait(APPLIED, timeout=20, generation=2)
        ip = ip_of(item)
        assert f"inet {ip}/24" in in_container(dockerd, c.id).stdout
        # One attachment, one reservation: the first was released, not leaked.
        assert world.reserved() == {ip} and len(world.runtime.attachments()) == 1
        assert ping(home, ip)
    finally:
        c.remove(force=True)
    item.wait(PENDING, timeout=15)
    assert world.reserved() == set()
