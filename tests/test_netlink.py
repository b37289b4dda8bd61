"""nslib.netlink: IPRoute bound to a namespace, link moves, and the thin helpers.

Every link lives in anonymous namespaces the tests create; nothing touches
the host's own namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator

import pytest
from helpers import thread_ns
from hypothesis import given
from hypothesis import strategies as st

import nslib
from nslib import netlink as nl

pytestmark = pytest.mark.root

BUSYBOX = shutil.which("busybox")


@pytest.fixture
def pair() -> Iterator[tuple[nslib.NsHandle, nslib.NsHandle]]:
    with nslib.NsHandle.new() as a, nslib.NsHandle.new() as b:
        yield a, b


@pytest.fixture
def forks() -> Iterator[list[int]]:
    """Records every fork of this process while the test runs."""
    seen: list[int] = []
    _fork_log.append(seen)
    try:
        yield seen
    finally:
        _fork_log.remove(seen)


_fork_log: list[list[int]] = []
os.register_at_fork(before=lambda: [log.append(os.getpid()) for log in _fork_log])


def ping(ns: nslib.NsHandle, ip: str) -> subprocess.CompletedProcess[str]:
    """busybox ping from inside *ns* (a child inherits its thread's namespace)."""
    assert BUSYBOX, "busybox is needed for ping"

    def go() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BUSYBOX, "ping", "-c1", "-W2", ip], capture_output=True, text=True, timeout=10
        )

    return nslib.run_in(ns, go)


# -- iproute() ------------------------------------------------------------------


def test_iproute_dumps_the_namespaces_links(pair, home_ns, fd_baseline, forks) -> None:
    a, b = pair
    nl.add_veth("nlt-a", "nlt-b", ns=a, peer_ns=b)
    with nl.iproute(a) as ipr:
        names_a = {m.get("ifname") for m in ipr.link("dump")}
    with nl.iproute(b) as ipr:
        names_b = {m.get("ifname") for m in ipr.link("dump")}
    with nl.iproute() as ipr:  # the calling thread's (the host's here)
        names_home = {m.get("ifname") for m in ipr.link("dump")}
    assert names_a == {"lo", "nlt-a"}
    assert names_b == {"lo", "nlt-b"}
    assert "nlt-a" not in names_home and "nlt-b" not in names_home
    assert forks == [], "iproute() must not fork"
    assert thread_ns() == home_ns


def test_iproute_accepts_every_reference_kind(pair, fd_baseline) -> None:
    a, _ = pair
    nl.add_veth("nlt-k", "nlt-k2", ns=a)
    path = f"/proc/self/fd/{a.fileno()}"
    for ref in (a, a.fileno(), path, nslib.NetNamespace.path(path)):
        with nl.iproute(ref) as ipr:
            assert {m.get("ifname") for m in ipr.link("dump")} == {"lo", "nlt-k", "nlt-k2"}
    mine = nl.list_links(nslib.NetNamespace.pid(os.getpid()))
    assert mine == nl.list_links(None)


def test_iproute_missing_namespace_is_typed(tmp_path, fd_baseline) -> None:
    with pytest.raises(nslib.NamespaceNotFound):
        nl.iproute(str(tmp_path / "nope"))
    (tmp_path / "plain").write_text("")
    with pytest.raises(nslib.NotANamespace):
        nl.iproute(str(tmp_path / "plain"))


def test_iproute_is_confined_to_its_thread(netns) -> None:
    with nl.iproute(netns) as ipr:
        box: list[BaseException] = []

        def other() -> None:
            try:
                list(ipr.link("dump"))
            except BaseException as e:
                box.append(e)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(box) == 1 and isinstance(box[0], RuntimeError)
        assert [m.get("ifname") for m in ipr.link("dump")] == ["lo"]  # still fine here


def test_iproute_close_releases_the_socket(netns, fd_baseline) -> None:
    for _ in range(20):
        ipr = nl.iproute(netns)
        list(ipr.link("dump"))
        ipr.close()


# -- helpers --------------------------------------------------------------------


def test_veth_addresses_and_ping_between_namespaces(pair, home_ns) -> None:
    a, b = pair
    nl.add_veth("nlt-p1", "nlt-p2", ns=a, peer_ns=b, mtu=1400)
    nl.add_address("nlt-p1", "10.250.1.1/30", ns=a)
    nl.add_address("nlt-p2", ipaddress.ip_interface("10.250.1.2/30"), ns=b)
    nl.set_link_up("nlt-p1", ns=a)
    nl.set_link_up("nlt-p2", ns=b)
    nl.set_link_up("lo", ns=a)
    info = nl.get_link("nlt-p1", ns=a)
    assert (info.mtu, info.up, info.kind) == (1400, True, "veth")
    assert ipaddress.ip_interface("10.250.1.1/30") in info.addresses
    assert nl.get_link("nlt-p2", ns=b).mtu == 1400
    res = ping(a, "10.250.1.2")
    assert res.returncode == 0, res.stdout + res.stderr
    nl.set_link_down("nlt-p2", ns=b)
    assert not nl.get_link("nlt-p2", ns=b).up
    assert thread_ns() == home_ns


def test_add_veth_clash_leaves_nothing(pair) -> None:
    a, b = pair
    nl.add_veth("nlt-c1", "nlt-c2", ns=a, peer_ns=b)
    with pytest.raises(nslib.LinkExists) as ei:
        nl.add_veth("nlt-c3", "nlt-c2", ns=a, peer_ns=b)  # the peer name is taken in b
    assert isinstance(ei.value, FileExistsError) and "nlt-c3" in str(ei.value)
    assert nl.list_links(a) == ["lo", "nlt-c1"]
    assert nl.list_links(b) == ["lo", "nlt-c2"]
    with pytest.raises(ValueError, match="invalid interface name"):
        nl.add_veth("x" * 16, "ok", ns=a)
    with pytest.raises(ValueError, match="invalid interface name"):
        nl.add_veth("a/b", "ok", ns=a)


def test_address_route_neighbour_round_trip(pair) -> None:
    a, b = pair
    nl.add_veth("nlt-r1", "nlt-r2", ns=a, peer_ns=b)
    nl.set_link_up("nlt-r1", ns=a)
    nl.add_address("nlt-r1", "10.250.2.1/30", ns=a)
    with pytest.raises(FileExistsError):
        nl.add_address("nlt-r1", "10.250.2.1/30", ns=a)
    nl.add_address("nlt-r1", "10.250.2.1/30", ns=a, exist_ok=True)

    nl.add_route("10.251.0.0/24", ns=a, gateway="10.250.2.2")
    nl.add_route("10.252.0.0/24", ns=a, dev="nlt-r1")
    nl.add_route("10.251.0.0/24", ns=a, gateway="10.250.2.2", exist_ok=True)
    nl.add_neighbour("10.250.2.2", "02:00:00:00:02:02", dev="nlt-r1", ns=a)
    nl.add_neighbour("10.250.2.2", "02:00:00:00:02:02", dev="nlt-r1", ns=a)  # idempotent
    with nl.iproute(a) as ipr:
        routes = {(r.get("dst"), r["dst_len"], r.get("gateway")) for r in ipr.route("dump")}
        neigh = {(n.get("dst"), n.get("lladdr"), n["state"]) for n in ipr.neigh("dump")}
    assert ("10.251.0.0", 24, "10.250.2.2") in routes
    assert ("10.252.0.0", 24, None) in routes
    assert ("10.250.2.2", "02:00:00:00:02:02", 0x80) in neigh  # NUD_PERMANENT

    nl.delete_route("10.251.0.0/24", ns=a, gateway="10.250.2.2")
    with pytest.raises(FileNotFoundError, match=r"10\.251\.0\.0/24"):
        nl.delete_route("10.251.0.0/24", ns=a, gateway="10.250.2.2")
    nl.delete_route("10.251.0.0/24", ns=a, gateway="10.250.2.2", missing_ok=True)
    nl.delete_neighbour("10.250.2.2", dev="nlt-r1", ns=a)
    with pytest.raises(FileNotFoundError):
        nl.delete_neighbour("10.250.2.2", dev="nlt-r1", ns=a)
    nl.delete_neighbour("10.250.2.2", dev="nlt-r1", ns=a, missing_ok=True)
    nl.delete_address("nlt-r1", "10.250.2.1/30", ns=a)
    nl.delete_address("nlt-r1", "10.250.2.1/30", ns=a, missing_ok=True)
    assert nl.get_link("nlt-r1", ns=a).addresses == ()
    with pytest.raises(ValueError, match="gateway or a dev"):
        nl.add_route("10.253.0.0/24", ns=a)

    nl.delete_link("nlt-r1", ns=a)
    assert nl.list_links(a) == ["lo"] and nl.list_links(b) == ["lo"]  # the peer went too
    with pytest.raises(nslib.LinkNotFound):
        nl.delete_link("nlt-r1", ns=a)
    nl.delete_link("nlt-r1", ns=a, missing_ok=True)


def test_missing_link_is_a_lookup_error(netns) -> None:
    for call in (
        lambda: nl.get_link("nlt-none", ns=netns),
        lambda: nl.get_link(9999, ns=netns),
        lambda: nl.set_link_up("nlt-none", ns=netns),
        lambda: nl.add_address("nlt-none", "10.250.3.1/30", ns=netns),
        lambda: nl.add_route("10.250.4.0/24", ns=netns, dev="nlt-none"),
        lambda: nl.add_neighbour("10.250.3.2", "02:00:00:00:00:01", dev="nlt-none", ns=netns),
    ):
        with pytest.raises(nslib.LinkNotFound) as ei:
            call()
        assert isinstance(ei.value, LookupError) and isinstance(ei.value, nslib.NslibError)


# -- move_link ------------------------------------------------------------------


def _configured(ns: nslib.NsHandle, name: str = "nlt-m1") -> nl.LinkInfo:
    nl.add_veth(name, name + "p", ns=ns)
    nl.set_mtu(name, 1400, ns=ns)
    nl.add_address(name, "10.250.5.1/30", ns=ns)
    nl.add_address(name, "10.250.6.1/24", ns=ns)
    nl.add_address(name, "fd00:250:5::1/64", ns=ns)
    nl.set_link_up(name, ns=ns)
    return nl.get_link(name, ns=ns)


def test_move_link_keeps_config(pair, home_ns, forks) -> None:
    a, b = pair
    before = _configured(a)
    after = nl.move_link("nlt-m1", b, src=a)
    assert "nlt-m1" not in nl.list_links(a)
    assert after == nl.get_link("nlt-m1", ns=b)
    assert after.mtu == 1400 and after.up
    assert set(after.addresses) == set(before.addresses)
    assert {str(x) for x in after.addresses} == {
        "10.250.5.1/30",
        "10.250.6.1/24",
        "fd00:250:5::1/64",
    }
    assert forks == [] and thread_ns() == home_ns


def test_move_link_by_index_with_rename(pair) -> None:
    a, b = pair
    before = _configured(a)
    after = nl.move_link(before.index, b, src=a, new_name="nlt-renamed")
    assert after.name == "nlt-renamed" and nl.list_links(b) == ["lo", "nlt-renamed"]
    assert set(after.addresses) == set(before.addresses) and after.up and after.mtu == 1400


def test_move_link_without_keep_config_drops_it(pair) -> None:
    a, b = pair
    _configured(a)
    after = nl.move_link("nlt-m1", b, src=a, keep_config=False)
    assert after.addresses == () and not after.up
    assert after.mtu == 1400  # the kernel keeps the MTU itself


def test_move_link_missing_link(pair) -> None:
    a, b = pair
    with pytest.raises(nslib.LinkNotFound, match="nlt-ghost") as ei:
        nl.move_link("nlt-ghost", b, src=a)
    assert isinstance(ei.value, LookupError)
    with pytest.raises(nslib.LinkNotFound, match="index 4242"):
        nl.move_link(4242, b, src=a)
    assert nl.list_links(b) == ["lo"]


def test_move_link_missing_namespace_moves_nothing(pair, tmp_path) -> None:
    a, _ = pair
    before = _configured(a)
    with pytest.raises(nslib.NamespaceNotFound, match="nlt-m1") as ei:
        nl.move_link("nlt-m1", str(tmp_path / "gone"), src=a)
    assert "target namespace" in str(ei.value)
    assert nl.get_link("nlt-m1", ns=a) == before


def test_move_link_name_clash_moves_nothing(pair) -> None:
    a, b = pair
    before = _configured(a)
    nl.add_veth("nlt-m1", "nlt-other", ns=b)  # same name in the target
    with pytest.raises(nslib.LinkExists, match="nlt-m1") as ei:
        nl.move_link("nlt-m1", b, src=a)
    assert ei.value.errno == errno.EEXIST
    assert nl.get_link("nlt-m1", ns=a) == before
    assert sorted(nl.list_links(b)) == ["lo", "nlt-m1", "nlt-other"]
    with pytest.raises(nslib.LinkExists, match="lo"):
        nl.move_link("nlt-m1", b, src=a, new_name="lo")
    assert nl.get_link("nlt-m1", ns=a) == before


def test_move_link_refused_by_kernel_stays_put(pair) -> None:
    a, b = pair
    # lo is namespace-local: the kernel refuses to move it.
    with pytest.raises(OSError) as ei:
        nl.move_link("lo", b, src=a, new_name="nlt-lo")
    assert ei.value.errno == errno.EINVAL and "'lo'" in str(ei.value)
    assert nl.list_links(a) == ["lo"] and nl.list_links(b) == ["lo"]


def test_move_link_restore_failure_moves_it_back(pair) -> None:
    a, b = pair
    before = _configured(a)

    def no_ipv6() -> None:
        for scope in ("all", "default"):
            with open(f"/proc/sys/net/ipv6/conf/{scope}/disable_ipv6", "w") as f:
                f.write("1")

    nslib.run_in(b, no_ipv6)  # b refuses IPv6 addresses: the restore must fail
    with pytest.raises(OSError) as ei:
        nl.move_link("nlt-m1", b, src=a)
    assert "fd00:250:5::1/64" in str(ei.value)
    assert any("moved back" in n for n in getattr(ei.value, "__notes__", []))
    assert nl.list_links(b) == ["lo"]
    after = nl.get_link("nlt-m1", ns=a)
    assert set(after.addresses) == set(before.addresses) and after.up and after.mtu == 1400


def test_move_link_within_one_namespace_is_a_noop(netns) -> None:
    before = _configured(netns)
    assert nl.move_link("nlt-m1", netns, src=netns) == before


@given(
    prefixes=st.lists(
        st.tuples(st.integers(0, 255), st.integers(1, 254), st.integers(16, 30)),
        min_size=1,
        max_size=4,
        unique_by=lambda t: t[0],
    ),
    up=st.booleans(),
    mtu=st.integers(1280, 9000),
)
def test_move_link_keeps_any_config(prefixes, up, mtu) -> None:
    with nslib.NsHandle.new() as a, nslib.NsHandle.new() as b:
        nl.add_veth("nlt-h", "nlt-hp", ns=a, mtu=mtu)
        for third, host, plen in prefixes:
            iface = ipaddress.ip_interface(f"10.{third}.{host}.{host}/{plen}")
            nl.add_address("nlt-h", iface, ns=a, exist_ok=True)
        if up:
            nl.set_link_up("nlt-h", ns=a)
        before = nl.get_link("nlt-h", ns=a)
        after = nl.move_link("nlt-h", b, src=a)
        assert set(after.addresses) == set(before.addresses)
        assert (after.up, after.mtu) == (up, mtu)
