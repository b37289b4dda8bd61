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


# -- Session ------------------------------------------------------------------------


def test_session_every_link_method(pair, home_ns, fd_baseline, forks) -> None:
    a, b = pair
    with nl.Session(a) as sa, nl.Session(b) as sb:
        assert sa.ns_id == a.ns_id and sb.ns_id == b.ns_id
        assert f"net:[{a.ns_id[1]}]" in sa.what and "open" in repr(sa)
        sa.add_veth("nlt-s1", "nlt-s2", peer_ns=sb, mtu=1400)
        assert sa.list_links() == ["lo", "nlt-s1"] and sb.list_links() == ["lo", "nlt-s2"]
        index = sa.find_link("nlt-s1")
        assert index is not None and sa.link_index("nlt-s1") == index
        assert sa.link_index(index) == index  # an index costs no request
        assert sa.find_link("nlt-none") is None
        info = sa.get_link("nlt-s1")
        assert (info.index, info.name, info.mtu, info.up, info.kind) == (
            index,
            "nlt-s1",
            1400,
            False,
            "veth",
        )
        assert sa.get_link(index) == info
        sa.set_mtu(index, 1300)
        sa.set_link_up("nlt-s1")
        assert (sa.get_link("nlt-s1").mtu, sa.get_link("nlt-s1").up) == (1300, True)
        sa.set_link_down(index)
        assert not sa.get_link(index, addresses=False).up
        sa.delete_link("nlt-s1")
        assert sb.list_links() == ["lo"]  # the peer went with it
        sa.delete_link("nlt-s1", missing_ok=True)
        with pytest.raises(nslib.LinkNotFound):
            sa.delete_link("nlt-s1")
        # The bare IPRoute is there for what the session does not cover.
        assert {m.get("ifname") for m in sa.iproute.link("dump")} == {"lo"}
        with sa.handle() as h:
            assert h.same_namespace(a)
    assert forks == [] and thread_ns() == home_ns


def test_session_veth_peer_kinds(pair, fd_baseline) -> None:
    a, b = pair
    with nl.Session(a) as sa:
        sa.add_veth("nlt-v1", "nlt-v1p")  # peer_ns=None: this session's namespace
        sa.add_veth("nlt-v2", "nlt-v2p", peer_ns=b)  # a handle
        sa.add_veth("nlt-v3", "nlt-v3p", peer_ns=b.fileno())  # an fd
        sa.add_veth("nlt-v4", "nlt-v4p", peer_ns=f"/proc/self/fd/{b.fileno()}")  # a path
        assert sorted(sa.list_links()) == ["lo", "nlt-v1", "nlt-v1p", "nlt-v2", "nlt-v3", "nlt-v4"]
    assert nl.list_links(b) == ["lo", "nlt-v2p", "nlt-v3p", "nlt-v4p"]


def test_session_addresses_routes_neighbours(pair, fd_baseline) -> None:
    a, b = pair
    with nl.Session(a) as s:
        s.add_veth("nlt-q1", "nlt-q2", peer_ns=b)
        s.set_link_up("nlt-q1")
        s.add_address("nlt-q1", "10.250.30.1/24")
        s.add_address("nlt-q1", ipaddress.ip_interface("fd00:250:30::1/64"))
        with pytest.raises(FileExistsError):
            s.add_address("nlt-q1", "10.250.30.1/24")
        s.add_address("nlt-q1", "10.250.30.1/24", exist_ok=True)
        assert {str(x) for x in s.get_link("nlt-q1").addresses} == {
            "10.250.30.1/24",
            "fd00:250:30::1/64",
        }
        # replace= converges on the declared route; a plain add refuses a second one.
        s.add_route("10.251.30.0/24", gateway="10.250.30.2")
        with pytest.raises(FileExistsError):
            s.add_route("10.251.30.0/24", gateway="10.250.30.3")
        s.add_route("10.251.30.0/24", gateway="10.250.30.2", exist_ok=True)
        s.add_route("10.251.30.0/24", gateway="10.250.30.3", replace=True)
        s.add_route("default", gateway="10.250.30.254", dev="nlt-q1")
        routes = {(r.get("dst"), r["dst_len"], r.get("gateway")) for r in s.iproute.route("dump")}
        assert ("10.251.30.0", 24, "10.250.30.3") in routes
        assert ("10.251.30.0", 24, "10.250.30.2") not in routes
        assert (None, 0, "10.250.30.254") in routes
        s.delete_route("10.251.30.0/24", gateway="10.250.30.3")
        with pytest.raises(FileNotFoundError, match=r"10\.251\.30\.0/24"):
            s.delete_route("10.251.30.0/24", gateway="10.250.30.3")
        s.delete_route("10.251.30.0/24", gateway="10.250.30.3", missing_ok=True)
        s.add_neighbour("10.250.30.2", "02:00:00:00:30:02", dev="nlt-q1")
        s.add_neighbour("10.250.30.2", "02:00:00:00:30:03", dev="nlt-q1")  # replaces
        neigh = {(n.get("dst"), n.get("lladdr")) for n in s.iproute.neigh("dump")}
        assert ("10.250.30.2", "02:00:00:00:30:03") in neigh
        s.delete_neighbour("10.250.30.2", dev="nlt-q1")
        with pytest.raises(FileNotFoundError):
            s.delete_neighbour("10.250.30.2", dev="nlt-q1")
        s.delete_neighbour("10.250.30.2", dev="nlt-q1", missing_ok=True)
        s.delete_address("nlt-q1", "10.250.30.1/24")
        with pytest.raises(OSError) as ei:
            s.delete_address("nlt-q1", "10.250.30.1/24")
        assert ei.value.errno == errno.EADDRNOTAVAIL
        s.delete_address("nlt-q1", "10.250.30.1/24", missing_ok=True)
        s.delete_address("nlt-gone", "10.250.30.1/24", missing_ok=True)


def test_session_move_link_to_a_session_or_a_reference(pair, fd_baseline) -> None:
    a, b = pair
    before = _configured(a, "nlt-sm")
    with nl.Session(a) as sa, nl.Session(b) as sb:
        after = sa.move_link("nlt-sm", sb, new_name="nlt-sm2")
        assert after == sb.get_link("nlt-sm2")
        assert set(after.addresses) == set(before.addresses) and after.up and after.mtu == 1400
        back = sb.move_link("nlt-sm2", a, new_name="nlt-sm")  # a reference, not a session
        assert set(back.addresses) == set(before.addresses)
        assert sorted(sa.list_links()) == ["lo", "nlt-sm", "nlt-smp"]
        with pytest.raises(nslib.NamespaceNotFound, match="target namespace"):
            sa.move_link("nlt-sm", "/nonexistent/nslib-netns")


def test_session_keeps_its_own_namespace_handle(fd_baseline) -> None:
    h = nslib.NsHandle.new()
    s = nl.Session(h)
    h.close()  # the session's namespace lives on through the session
    try:
        s.add_veth("nlt-own", "nlt-ownp")
        assert sorted(s.list_links()) == ["lo", "nlt-own", "nlt-ownp"]
    finally:
        s.close()


def test_session_of_the_calling_thread_and_by_reference(netns, fd_baseline) -> None:
    with nl.session() as here:
        assert here.ns_id == thread_ns()
        assert "calling thread" in here.what
    path = f"/proc/self/fd/{netns.fileno()}"
    for ref in (netns, netns.fileno(), path, nslib.NetNamespace.path(path)):
        with nl.Session(ref) as s:
            assert s.ns_id == netns.ns_id and s.list_links() == ["lo"]


def test_session_bad_input_is_typed(netns, tmp_path, fd_baseline) -> None:
    with pytest.raises(nslib.NamespaceNotFound):
        nl.Session(str(tmp_path / "nope"))
    (tmp_path / "plain").write_text("")
    with pytest.raises(nslib.NotANamespace):
        nl.Session(str(tmp_path / "plain"))
    with pytest.raises(nslib.InvalidReference):
        nl.Session(3.5)  # type: ignore[arg-type]
    closed = nslib.NsHandle.new()
    closed.close()
    with pytest.raises(nslib.ClosedHandleError):
        nl.Session(closed)
    with nl.Session(netns) as s:
        for bad_link in (True, 1.0, None):
            with pytest.raises(TypeError):
                s.get_link(bad_link)  # type: ignore[arg-type]
        for bad_name in ("", "x" * 16, "a/b", "a b", "a:b", "."):
            with pytest.raises(ValueError, match="invalid interface name"):
                s.find_link(bad_name)
            with pytest.raises(ValueError, match="invalid interface name"):
                s.add_veth(bad_name, "nlt-ok")
        with pytest.raises(TypeError):
            s.set_mtu("lo", "1500")  # type: ignore[arg-type]
        s.add_veth("nlt-mtu", "nlt-mtup")
        with pytest.raises(OSError) as ei:
            s.set_mtu("nlt-mtu", 10)  # below a veth's minimum of 68
        assert ei.value.errno == errno.EINVAL and "nlt-mtu" in str(ei.value)
        s.delete_link("nlt-mtu")
        with pytest.raises(ValueError):
            s.add_address("lo", "10.0.0.300/24")
        with pytest.raises(TypeError):
            s.add_address("lo", 42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="gateway or a dev"):
            s.add_route("10.0.0.0/24")
        with pytest.raises(TypeError):
            s.add_route(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            s.add_neighbour("not-an-ip", "02:00:00:00:00:01", dev="lo")
        with pytest.raises(nslib.InvalidReference):
            s.add_veth("nlt-x", "nlt-y", peer_ns=object())  # type: ignore[arg-type]
        with pytest.raises(nslib.LinkNotFound) as lnf:
            s.get_link("nlt-none")
        assert isinstance(lnf.value, LookupError) and s.what in str(lnf.value)
        with pytest.raises(nslib.LinkExists) as le:
            s.add_veth("lo", "nlt-lo2")
        assert le.value.errno == errno.EEXIST
        assert s.list_links() == ["lo"]  # nothing half made


def test_session_close_twice_and_use_after_close(netns, fd_baseline) -> None:
    s = nl.Session(netns)
    s.close()
    s.close()
    assert s.closed and "closed" in repr(s)
    calls = [
        lambda: s.get_link("lo"),
        lambda: s.find_link("lo"),
        lambda: s.link_index("lo"),
        lambda: s.link_index(1),
        lambda: s.list_links(),
        lambda: s.set_link_up("lo"),
        lambda: s.set_link_down("lo"),
        lambda: s.set_mtu("lo", 1500),
        lambda: s.delete_link("lo", missing_ok=True),
        lambda: s.add_veth("nlt-a", "nlt-b"),
        lambda: s.add_address("lo", "10.0.0.1/8"),
        lambda: s.delete_address("lo", "10.0.0.1/8", missing_ok=True),
        lambda: s.add_route("10.0.0.0/8", dev=1),
        lambda: s.delete_route("10.0.0.0/8", dev=1, missing_ok=True),
        lambda: s.add_neighbour("10.0.0.2", "02:00:00:00:00:02", dev=1),
        lambda: s.delete_neighbour("10.0.0.2", dev=1, missing_ok=True),
        lambda: s.move_link("lo", netns),
        lambda: s.ns_id,
        lambda: s.handle(),
        lambda: s.iproute,
    ]
    for call in calls:
        with pytest.raises(nslib.ClosedHandleError, match="session is closed"):
            call()
    with nl.Session(netns) as again:
        pass
    again.close()  # after __exit__: still fine


def test_session_belongs_to_its_thread(netns, fd_baseline) -> None:
    with nl.Session(netns) as s:
        box: list[BaseException] = []

        def other() -> None:
            try:
                s.list_links()
            except BaseException as e:
                box.append(e)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(box) == 1 and isinstance(box[0], RuntimeError)
        assert "another thread" in str(box[0])
        assert s.list_links() == ["lo"]  # still fine on its own thread


def test_sessions_release_every_fd(pair, fd_baseline) -> None:
    a, b = pair
    for i in range(30):
        with nl.Session(a) as sa, nl.Session(b) as sb:
            sa.add_veth(f"nlt-fd{i}", f"nlt-fd{i}p", peer_ns=sb)
            sa.delete_link(f"nlt-fd{i}")
    for _ in range(10):
        s = nl.Session(a)
        s.close()
        s.close()
    with pytest.raises(nslib.LinkExists), nl.Session(a) as sa:
        sa.add_veth("lo", "nlt-x")  # an error on the way out closes too


def test_nslib_never_reaches_into_netlink_privates() -> None:
    """Other modules use the public netlink API only."""
    import re
    from pathlib import Path

    root = Path(nslib.__file__).parent
    pattern = re.compile(r"\b(?:nl|netlink)\._")
    offenders = [
        f"{p.relative_to(root)}:{n}"
        for p in root.rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_a_bare_word_is_a_named_namespace(unique, fd_baseline) -> None:
    """As for ``ip netns`` and pyroute2: ``"blue"`` is the named namespace blue."""
    with pytest.raises(nslib.NamespaceNotFound, match=unique):
        nl.Session(unique)
    h = nslib.named.create(unique)  # /run/netns: a unique name, deleted below
    try:
        for ref in (unique, f"name:{unique}", f"/run/netns/{unique}"):
            with nl.Session(ref) as s:
                assert s.ns_id == h.ns_id and unique in s.what
        nl.add_veth("nlt-bw0", "nlt-bw1", ns=unique)
        assert nl.list_links(unique) == nl.list_links(h)
        assert "nlt-bw0" in nl.list_links(unique)
    finally:
        h.close()
        nslib.named.delete(unique)
