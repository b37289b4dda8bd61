"""nslib.cni: configurations, results, and the runtime on the real reference plugins.

The plugin tests use the Debian ``containernetworking-plugins`` package
(``/usr/lib/cni``), a temporary cache and IPAM directory, named namespaces
in the test's private run dir, and bridges named with the suite's prefix.
Traffic only flows between the host and namespaces the test made.  Fake
"bad" plugins are tiny scripts written into a temporary plugin directory.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import missing, open_fds
from hypothesis import given
from hypothesis import strategies as st

import nslib
from nslib import NetNamespace, named
from nslib.cni import (
    CNIConfigError,
    CNIError,
    IncompatibleVersionError,
    NetworkConfigList,
    PluginNotFoundError,
    PluginOutputError,
    PluginTimeoutError,
    Result,
    Runtime,
    load_dir,
)
from nslib.cni.errors import CNIArgumentError
from nslib.errors import NamespaceNotFound, NslibError

PLUGIN_DIR = "/usr/lib/cni"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


# -- configurations (no root needed) ------------------------------------------


def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return path


def test_load_conflist_and_legacy_conf(tmp_path: Path) -> None:
    lst = _write(
        tmp_path / "10-a.conflist",
        {
            "cniVersion": "1.0.0",
            "name": "a",
            "plugins": [
                {"type": "bridge", "capabilities": {"portMappings": True, "ips": False}},
                {"type": "firewall"},
            ],
        },
    )
    nl = NetworkConfigList.load(lst)
    assert (nl.name, nl.cni_version, [p.type for p in nl.plugins]) == (
        "a",
        "1.0.0",
        ["bridge", "firewall"],
    )
    assert nl.plugins[0].capabilities == {"portMappings"}
    assert nl.raw == lst.read_bytes()  # the cache stores the file's own bytes, as libcni
    assert nl.source == str(lst)
    conf = _write(tmp_path / "20-b.conf", {"cniVersion": "0.3.1", "name": "b", "type": "ptp"})
    legacy = NetworkConfigList.load(conf)
    assert (legacy.name, legacy.cni_version, [p.type for p in legacy.plugins]) == (
        "b",
        "0.3.1",
        ["ptp"],
    )


def test_load_dir_lexical_first_name_wins(tmp_path: Path) -> None:
    _write(
        tmp_path / "20-x.conflist", {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "b"}]}
    )
    _write(tmp_path / "10-y.conf", {"cniVersion": "1.0.0", "name": "y", "type": "a"})
    _write(tmp_path / "30-x.json", {"cniVersion": "1.0.0", "name": "x", "type": "c"})
    _write(tmp_path / "README", "not a config")
    (tmp_path / "40-dir.conflist").mkdir()
    got = load_dir(tmp_path)
    assert [(n.name, n.plugins[0].type) for n in got] == [("y", "a"), ("x", "b")]


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"cniVersion": "1.0.0", "plugins": [{"type": "a"}]}, "name"),
        ({"cniVersion": "1.0.0", "name": "bad name", "plugins": [{"type": "a"}]}, "name"),
        ({"name": "n", "plugins": [{"type": "a"}]}, "cniVersion"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": []}, "plugins"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "a"}, {}]}, "plugins[1].type"),
        (
            {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../../bin/sh"}]},
            "plugins[0].type",
        ),
        (
            {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "a", "capabilities": []}]},
            "plugins[0].capabilities",
        ),
        (
            {"cniVersion": "1.0.0", "name": "n", "disableCheck": "yes", "plugins": [{"type": "a"}]},
            "disableCheck",
        ),
    ],
)
def test_invalid_config_names_file_and_field(
    tmp_path: Path, obj: dict[str, Any], field: str
) -> None:
    p = _write(tmp_path / "bad.conflist", obj)
    with pytest.raises(CNIConfigError) as ei:
        NetworkConfigList.load(p)
    assert ei.value.field == field and ei.value.path == str(p)
    assert str(p) in str(ei.value) and field in str(ei.value)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, NslibError)
    assert ei.value.code == 7


def test_unknown_cni_version_and_garbage_file(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "v.conflist", {"cniVersion": "9.9.9", "name": "n", "plugins": [{"type": "a"}]}
    )
    with pytest.raises(IncompatibleVersionError) as ei:
        NetworkConfigList.load(p)
    assert ei.value.code == 1 and ei.value.field == "cniVersion" and "9.9.9" in str(ei.value)
    g = _write(tmp_path / "g.conflist", "{not json")
    with pytest.raises(CNIConfigError, match="not valid JSON"):
        NetworkConfigList.load(g)
    with pytest.raises(CNIConfigError):
        load_dir(tmp_path)
    assert load_dir(tmp_path, skip_invalid=True) == []


# -- results ------------------------------------------------------------------

_R100 = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "br0", "mac": "aa:bb:cc:dd:ee:ff"},
        {"name": "eth0", "mac": "aa:bb:cc:dd:ee:00", "sandbox": "/run/netns/x", "mtu": 1400},
    ],
    "ips": [
        {"interface": 1, "address": "10.1.2.3/24", "gateway": "10.1.2.1"},
        {"interface": 1, "address": "fd00::3/64"},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}, {"dst": "::/0", "priority": 5}],
    "dns": {"nameservers": ["10.1.2.1"], "search": ["example"]},
}


def test_result_versions() -> None:
    r = Result.from_dict(_R100)
    assert r.to_dict() == _R100
    v04 = r.to_dict("0.4.0")
    assert [ip["version"] for ip in v04["ips"]] == ["4", "6"]
    assert Result.from_dict(v04).to_dict("1.0.0") == _R100
    v02 = r.to_dict("0.2.0")
    assert v02["ip4"] == {
        "ip": "10.1.2.3/24",
        "gateway": "10.1.2.1",
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}],
    }
    assert v02["ip6"] == {"ip": "fd00::3/64", "routes": [{"dst": "::/0", "priority": 5}]}
    up = Result.from_dict(v02).to_dict("1.0.0")
    assert [ip["address"] for ip in up["ips"]] == ["10.1.2.3/24", "fd00::3/64"]
    assert r.interfaces[1].extra == {"mtu": 1400}


@pytest.mark.parametrize(
    "bad",
    [
        {"cniVersion": "1.0.0", "ips": [{"address": "nonsense"}]},
        {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/8", "interface": 3}]},
        {"cniVersion": "0.4.0", "ips": [{"version": "6", "address": "10.0.0.1/8"}]},
        {"cniVersion": "1.0.0", "interfaces": "eth0"},
        {"cniVersion": "7.0.0"},
    ],
)
def test_malformed_result(bad: dict[str, Any]) -> None:
    with pytest.raises(CNIError):
        Result.from_dict(bad)


_octet = st.integers(0, 255)


@given(
    addrs=st.lists(st.tuples(_octet, _octet, st.integers(8, 32)), min_size=1, max_size=4),
    ver=st.sampled_from(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]),
)
def test_result_roundtrip_between_current_versions(
    addrs: list[tuple[int, int, int]], ver: str
) -> None:
    d = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/x"}],
        "ips": [{"interface": 0, "address": f"10.{a}.{b}.1/{n}"} for a, b, n in addrs],
        "dns": {},
    }
    r = Result.from_dict(d)
    assert Result.from_dict(r.to_dict(ver)).to_dict("1.0.0") == d


# -- the runtime on the real plugins ------------------------------------------


def _need_plugins(*names: str) -> None:
    for n in ("bridge", "host-local", *names):
        if not os.access(os.path.join(PLUGIN_DIR, n), os.X_OK):
            missing(
                f"needs the CNI reference plugins in {PLUGIN_DIR} (containernetworking-plugins)"
            )


@dataclass
class Env:
    """A test's private CNI world: directories, a bridge name, a subnet."""

    base: Path
    run_dir: str
    bridge: str
    subnet: str
    prefix: str

    @property
    def ipam_dir(self) -> Path:
        return self.base / "ipam"

    @property
    def cache_dir(self) -> Path:
        return self.base / "cache"

    @property
    def plugins(self) -> Path:
        return self.base / "plugins"

    def runtime(self, **kw: Any) -> Runtime:
        return Runtime(
            [str(self.plugins), PLUGIN_DIR], str(self.cache_dir), run_dir=self.run_dir, **kw
        )

    def bridge_conf(self) -> dict[str, Any]:
        return {
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            "ipam": {"type": "host-local", "subnet": self.subnet, "dataDir": str(self.ipam_dir)},
        }

    def netlist(
        self, *more: dict[str, Any], name: str = "nsltnet", version: str = "1.0.0"
    ) -> NetworkConfigList:
        return NetworkConfigList.from_dict(
            {"cniVersion": version, "name": name, "plugins": [self.bridge_conf(), *more]}
        )

    def reserved(self, name: str = "nsltnet") -> set[str]:
        d = self.ipam_dir / name
        if not d.exists():
            return set()
        return {f for f in os.listdir(d) if f[0].isdigit() or ":" in f}

    def fake(self, name: str, body: str) -> str:
        """A fake plugin: a shell script in the private plugin dir."""
        self.plugins.mkdir(exist_ok=True)
        p = self.plugins / name
        p.write_text("#!/bin/sh\n" + body)
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
        return name


def _iptables_cni_chains() -> set[str]:
    out = subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=False).stdout
    return {line.split()[1] for line in out.splitlines() if line.startswith("-N CNI-")}


def _drop_cni_chains(created: set[str]) -> None:
    # The firewall plugin leaves its (empty) chains and FORWARD jump behind
    # by design; remove the ones this test created.
    if "CNI-FORWARD" in created:
        subprocess.run(
            [
                "iptables",
                "-D",
                "FORWARD",
                "-m",
                "comment",
                "--comment",
                "CNI firewall plugin rules",
                "-j",
                "CNI-FORWARD",
            ],
            capture_output=True,
            check=False,
        )
    for chain in sorted(created, key=lambda c: c != "CNI-FORWARD"):
        subprocess.run(["iptables", "-F", chain], capture_output=True, check=False)
    for chain in sorted(created, key=lambda c: c != "CNI-FORWARD"):
        subprocess.run(["iptables", "-X", chain], capture_output=True, check=False)


@pytest.fixture
def env(run_dir: str, unique: str) -> Iterator[Env]:
    _need_plugins()
    base = Path(tempfile.mkdtemp(prefix=f"{unique}-cni-"))
    rnd = random.Random(unique)
    e = Env(
        base, run_dir, unique[:15], f"10.{rnd.randint(160, 199)}.{rnd.randint(0, 255)}.0/24", unique
    )
    chains = _iptables_cni_chains()
    try:
        yield e
    finally:
        subprocess.run(["ip", "link", "del", e.bridge], capture_output=True, check=False)
        _drop_cni_chains(_iptables_cni_chains() - chains)
        shutil.rmtree(base, ignore_errors=True)


def _links(ns: nslib.NsHandle) -> list[str]:
    return sorted(nslib.run_in(ns, lambda: [n for _, n in __import__("socket").if_nameindex()]))


def _host_links() -> set[str]:
    import socket

    return {n for _, n in socket.if_nameindex()}


def _ping(src: nslib.NsHandle | None, ip: str) -> bool:
    argv = [BUSYBOX, "ping", "-c", "1", "-W", "2", ip]
    if src is None:
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0
    return nslib.run(src, argv, etc=False, capture_output=True, check=False).returncode == 0


def _dead(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text(errors="surrogateescape")
    except FileNotFoundError:
        return True
    return text.rpartition(")")[2].split()[0] in ("Z", "X")


def _ip(r: Result) -> str:
    return r.ips[0].address.split("/")[0]


@pytest.mark.root
def test_bridge_host_local_two_namespaces(env: Env) -> None:
    rt = env.runtime()
    nl = env.netlist()
    before = _host_links()
    with (
        named.create(f"{env.prefix}a", run_dir=env.run_dir) as a,
        named.create(f"{env.prefix}b", run_dir=env.run_dir) as b,
    ):
        try:
            ra = rt.add(nl, "ca", NetNamespace.named(f"{env.prefix}a"))
            rb = rt.add(nl, "cb", f"name:{env.prefix}b", ifname="net1")
            assert "eth0" in _links(a) and "net1" in _links(b)
            sandbox = [i.sandbox for i in ra.interfaces if i.sandbox]
            assert sandbox == [os.path.join(env.run_dir, f"{env.prefix}a")]
            assert env.reserved() == {_ip(ra), _ip(rb)}
            assert _ping(None, _ip(ra)) and _ping(None, _ip(rb))
            rt.check(nl, "ca", f"name:{env.prefix}a")
            rt.check(nl, "cb", b, ifname="net1")  # a handle: the cached sandbox is rewritten
            host_veths = {i.name for i in ra.interfaces + rb.interfaces if not i.sandbox} - {
                env.bridge
            }
            assert host_veths <= _host_links()
        finally:
            rt.delete(nl, "ca", a)
            rt.delete(nl, "cb", b, ifname="net1")
        assert env.reserved() == set()
        assert _links(a) == ["lo"] and _links(b) == ["lo"]
        assert not host_veths & _host_links()
        assert rt.attachments() == []
        assert _host_links() - before == {env.bridge}
    named.delete(f"{env.prefix}a", run_dir=env.run_dir)
    named.delete(f"{env.prefix}b", run_dir=env.run_dir)


@pytest.mark.root
def test_firewall_chained_lets_namespaces_talk(env: Env) -> None:
    _need_plugins("firewall")
    if (
        Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .read_text(errors="surrogateescape")
        .strip()
        != "1"
    ):
        missing("needs br_netfilter (docker's FORWARD DROP applying to bridged traffic)")
    policy = subprocess.run(
        ["iptables", "-S", "FORWARD"], capture_output=True, text=True, check=True
    ).stdout
    if "-P FORWARD DROP" not in policy:
        missing("needs the FORWARD policy DROP that docker sets")
    rt = env.runtime()
    plain = env.netlist(name="nsltplain")
    fw = env.netlist({"type": "firewall", "backend": "iptables"}, name="nsltfw")
    with (
        named.create(f"{env.prefix}a", run_dir=env.run_dir) as a,
        named.create(f"{env.prefix}b", run_dir=env.run_dir) as b,
    ):
        # Without the firewall plugin, docker's FORWARD DROP blocks the bridge.
        ra = rt.add(plain, "ca", a)
        rb = rt.add(plain, "cb", b)
        try:
            assert not _ping(a, _ip(rb))
        finally:
            rt.delete(plain, "ca", a)
            rt.delete(plain, "cb", b)
        ra = rt.add(fw, "ca", a)
        rb = rt.add(fw, "cb", b)
        try:
            rules = subprocess.run(
                ["iptables", "-S"], capture_output=True, text=True, check=True
            ).stdout
            assert _ip(ra) in rules and _ip(rb) in rules
            assert _ping(a, _ip(rb)) and _ping(b, _ip(ra))
            rt.check(fw, "ca", a)
        finally:
            rt.delete(fw, "ca", a)
            rt.delete(fw, "cb", b)
        rules = subprocess.run(
            ["iptables", "-S"], capture_output=True, text=True, check=True
        ).stdout
        assert _ip(ra) not in rules and _ip(rb) not in rules
        assert env.reserved("nsltfw") == set()
    for n in ("a", "b"):
        named.delete(f"{env.prefix}{n}", run_dir=env.run_dir)


@pytest.mark.root
def test_del_after_namespace_deleted(env: Env) -> None:
    rt = env.runtime()
    nl = env.netlist()
    name = f"{env.prefix}a"
    named.create(name, run_dir=env.run_dir).close()
    r = rt.add(nl, "ca", NetNamespace.named(name))
    assert env.reserved() == {_ip(r)}
    named.delete(name, run_dir=env.run_dir)  # the veth dies with it
    rt.delete(nl, "ca", NetNamespace.named(name))  # must still succeed
    assert env.reserved() == set()
    assert rt.attachments() == []
    rt.delete(nl, "ca", None)  # and again: DEL is idempotent


@pytest.mark.root
def test_failing_second_plugin_leaves_nothing(env: Env) -> None:
    bad = env.fake(
        "nsltfail",
        'cat >/dev/null\n[ "$CNI_COMMAND" = ADD ] || exit 0\n'
        'echo \'{"cniVersion":"1.0.0","code":120,"msg":"nope","details":"on purpose"}\'\nexit 1\n',
    )
    rt = env.runtime()
    nl = env.netlist({"type": bad})
    before = _host_links()
    with named.create(f"{env.prefix}a", run_dir=env.run_dir) as a:
        with pytest.raises(CNIError) as ei:
            rt.add(nl, "ca", a)
        e = ei.value
        assert (e.code, e.msg, e.details, e.plugin) == (120, "nope", "on purpose", bad)
        assert e.cleaned_up and e.cleanup_error is None
        assert _links(a) == ["lo"]
        assert env.reserved() == set()
        assert (
            rt.attachments() == [] and not os.listdir(env.cache_dir / "results")
            if (env.cache_dir / "results").exists()
            else True
        )
        assert _host_links() - before <= {env.bridge}
    named.delete(f"{env.prefix}a", run_dir=env.run_dir)


@pytest.mark.root
def test_missing_plugin_binary(env: Env) -> None:
    rt = env.runtime()
    nl = env.netlist({"type": "nslt-no-such-plugin"})
    with named.create(f"{env.prefix}a", run_dir=env.run_dir) as a:
        with pytest.raises(PluginNotFoundError) as ei:
            rt.add(nl, "ca", a)
        assert isinstance(ei.value, FileNotFoundError) and isinstance(ei.value, CNIError)
        assert "nslt-no-such-plugin" in str(ei.value)
        assert _links(a) == ["lo"] and env.reserved() == set() and rt.attachments() == []
    named.delete(f"{env.prefix}a", run_dir=env.run_dir)


@pytest.mark.root
def test_hanging_plugin_times_out_and_is_killed(env: Env) -> None:
    marker = env.base / "hang.pid"
    hang = env.fake(
        "nslthang",
        f'cat >/dev/null\n[ "$CNI_COMMAND" = ADD ] || exit 0\necho $$ > {marker}\n'
        "sleep 1000 &\nwait\n",
    )
    rt = env.runtime(timeout=30)
    nl = env.netlist({"type": hang})
    with named.create(f"{env.prefix}a", run_dir=env.run_dir) as a:
        with pytest.raises(PluginTimeoutError) as ei:
            rt.add(nl, "ca", a, timeout=1.5)
        assert isinstance(ei.value, TimeoutError) and ei.value.cleaned_up
        pid = int(marker.read_text())
        assert not os.path.exists(f"/proc/{pid}")  # the plugin and its sleep child were killed
        out = subprocess.run(["pgrep", "-s", str(pid)], capture_output=True, check=False).stdout
        assert all(_dead(int(p)) for p in out.split())  # its sleep child too (or a zombie)
        assert _links(a) == ["lo"] and env.reserved() == set() and rt.attachments() == []
    named.delete(f"{env.prefix}a", run_dir=env.run_dir)


@pytest.mark.root
def test_garbage_output(env: Env) -> None:
    junk = env.fake(
        "nsltjunk",
        'cat >/dev/null\n[ "$CNI_COMMAND" = ADD ] || exit 0\necho "hello, \\033[31mworld"\n',
    )
    rt = env.runtime()
    nl = env.netlist({"type": junk})
    with named.create(f"{env.prefix}a", run_dir=env.run_dir) as a:
        with pytest.raises(PluginOutputError) as ei:
            rt.add(nl, "ca", a)
        assert ei.value.code == 6 and ei.value.cleaned_up
        assert _links(a) == ["lo"] and env.reserved() == set() and rt.attachments() == []
    named.delete(f"{env.prefix}a", run_dir=env.run_dir)


@pytest.mark.root
def test_nonexistent_namespace(env: Env) -> None:
    rt = env.runtime()
    with pytest.raises(NamespaceNotFound):
        rt.add(env.netlist(), "ca", NetNamespace.named(f"{env.prefix}none"))
    with pytest.raises(NamespaceNotFound):
        rt.add(env.netlist(), "ca", "pid:999999999")
    assert env.reserved() == set() and rt.attachments() == []


@pytest.mark.root
def test_bad_arguments(env: Env, netns: nslib.NsHandle) -> None:
    rt = env.runtime()
    nl = env.netlist()
    for cid, ifname in (
        ("", "eth0"),
        ("-x", "eth0"),
        ("c", ""),
        ("c", "a/b"),
        ("c", "x" * 16),
        ("c", "a b"),
    ):
        with pytest.raises(CNIArgumentError):
            rt.add(nl, cid, netns, ifname)
    with pytest.raises(CNIArgumentError):
        rt.add(nl, "c", netns, args={"A;B": "1"})
    assert env.reserved() == set()


@pytest.mark.root
def test_environment_netns_path_and_fds(env: Env, fd_baseline: set[int]) -> None:
    """What a plugin sees: a clean environment, a namespace path that names the
    namespace we resolved, and no fds but stdin, stdout and stderr."""
    out = env.base / "seen.json"
    (env.plugins).mkdir(exist_ok=True)
    spy = env.plugins / "nsltspy"
    spy.write_text(
        f"#!{sys.executable} -I\n"
        + textwrap.dedent(f"""\
            import json, os, sys
            conf = json.load(sys.stdin)
            fds = sorted(os.listdir("/proc/self/fd"))
            netns = os.environ.get("CNI_NETNS", "")
            ino = os.stat(netns).st_ino if netns else 0
            seen = {{"env": dict(os.environ), "fds": fds, "ino": ino, "conf": conf}}
            with open({str(out)!r}, "w") as f:
                json.dump(seen, f)
            iface = {{"name": "x", "sandbox": netns}}
            print(json.dumps({{"cniVersion": conf["cniVersion"], "interfaces": [iface]}}))
            """)
    )
    spy.chmod(0o755)
    rt = env.runtime()
    nl = NetworkConfigList.from_dict(
        {
            "cniVersion": "0.4.0",
            "name": "nsltspy",
            "plugins": [{"type": "nsltspy", "capabilities": {"portMappings": True}, "x": 1}],
        }
    )
    leak = os.open(
        "/dev/null", os.O_RDONLY
    )  # inheritable-looking fd of ours: must not reach the plugin
    os.set_inheritable(leak, True)
    try:
        with nslib.NsHandle.new() as h:
            r = rt.add(
                nl,
                "c1",
                h,
                args=[("K8S_POD_NAME", "p")],
                capability_args={"portMappings": [{"hostPort": 1}], "bandwidth": {}},
            )
            seen = json.loads(out.read_text())
            assert seen["env"]["CNI_NETNS"] == f"/proc/{os.getpid()}/fd/{h.fileno()}"
            assert seen["ino"] == h.ns_id[1]
            assert {k for k in seen["env"] if k.startswith("CNI_")} == {
                "CNI_COMMAND",
                "CNI_CONTAINERID",
                "CNI_NETNS",
                "CNI_IFNAME",
                "CNI_ARGS",
                "CNI_PATH",
            }
            assert set(seen["env"]) - {"PATH", "LC_CTYPE"} <= {
                k for k in seen["env"] if k.startswith("CNI_")
            }
            assert seen["env"]["CNI_ARGS"] == "K8S_POD_NAME=p"
            assert seen["fds"] == ["0", "1", "2", "3"]  # 3: the listing's own directory fd
            conf = seen["conf"]
            assert conf["name"] == "nsltspy" and conf["cniVersion"] == "0.4.0" and conf["x"] == 1
            assert conf["runtimeConfig"] == {
                "portMappings": [{"hostPort": 1}]
            }  # only declared capabilities
            assert "prevResult" not in conf
            assert r.cni_version == "0.4.0"
            rt.delete(nl, "c1", h)
            seen = json.loads(out.read_text())
            assert seen["env"]["CNI_COMMAND"] == "DEL"
            assert (
                seen["conf"]["prevResult"]["interfaces"][0]["sandbox"] == seen["env"]["CNI_NETNS"]
            )
    finally:
        os.close(leak)


@pytest.mark.root
def test_cache_file_is_libcni_format(env: Env) -> None:
    rt = env.runtime()
    nl = env.netlist()
    name = f"{env.prefix}a"
    with named.create(name, run_dir=env.run_dir) as a:
        r = rt.add(
            nl,
            "c-1.x",
            a,
            ifname="eth1",
            args={"IgnoreUnknown": "1"},
            capability_args={"ips": ["x"]},
        )
        path = env.cache_dir / "results" / "nsltnet-c-1.x-eth1"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE((env.cache_dir / "results").stat().st_mode) == 0o700
        d = json.loads(path.read_text())
        assert d["kind"] == "cniCacheV1"
        assert (d["containerId"], d["ifName"], d["networkName"]) == ("c-1.x", "eth1", "nsltnet")
        assert base64.b64decode(d["config"]) == nl.raw
        assert d["cniArgs"] == [["IgnoreUnknown", "1"]]
        assert d["capabilityArgs"] == {"ips": ["x"]}
        assert d["result"] == r.to_dict()
        # handed over as a handle: nothing worth recording as netns
        assert "netns" not in d
        [att] = rt.attachments()
        assert (att.container_id, att.network, att.ifname) == ("c-1.x", "nsltnet", "eth1")
        assert att.network_config() == NetworkConfigList.from_bytes(nl.raw, source=str(path))
        assert rt.cached_result(nl, "c-1.x", "eth1") == Result.from_dict(r.to_dict())
        rt.delete(nl, "c-1.x", a, ifname="eth1")
        assert not path.exists()
    named.delete(name, run_dir=env.run_dir)


@pytest.mark.root
def test_gc_deletes_stale_attachments(env: Env) -> None:
    rt = env.runtime()
    nl = env.netlist()
    with (
        named.create(f"{env.prefix}a", run_dir=env.run_dir) as a,
        named.create(f"{env.prefix}b", run_dir=env.run_dir) as b,
    ):
        ra = rt.add(nl, "keep", f"name:{env.prefix}a")
        rt.add(nl, "stale", f"name:{env.prefix}b")
        rt.gc(nl, [("keep", "eth0")])
        assert [x.container_id for x in rt.attachments()] == ["keep"]
        assert env.reserved() == {_ip(ra)}
        assert _links(b) == ["lo"] and "eth0" in _links(a)
        rt.gc(nl, [])
        assert rt.attachments() == [] and env.reserved() == set()
    for n in ("a", "b"):
        named.delete(f"{env.prefix}{n}", run_dir=env.run_dir)


@pytest.mark.root
def test_version_status_check_rules(env: Env) -> None:
    rt = env.runtime()
    info = rt.version("bridge")
    assert "1.0.0" in info.supported_versions and "0.3.1" in info.supported_versions
    rt.status(env.netlist())  # 1.0.0 has no STATUS: a no-op, as libcni
    with pytest.raises(PluginNotFoundError):
        rt.version("nslt-none")
    old = env.netlist(version="0.3.1")
    with nslib.NsHandle.new() as h, pytest.raises(CNIError) as ei:
        rt.check(old, "c", h)
    assert ei.value.code == 1 and "CHECK" in str(ei.value)


@pytest.mark.root
def test_concurrent_attachments(env: Env) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rt = env.runtime()
    nl = env.netlist()
    handles = [nslib.NsHandle.new() for _ in range(8)]
    try:
        with ThreadPoolExecutor(4) as ex:
            results = list(ex.map(lambda i: rt.add(nl, f"c{i}", handles[i]), range(8)))
        assert len({_ip(r) for r in results}) == 8
        assert len(rt.attachments()) == 8
        with ThreadPoolExecutor(4) as ex:
            list(ex.map(lambda i: rt.delete(nl, f"c{i}", handles[i]), range(8)))
        assert rt.attachments() == [] and env.reserved() == set()
    finally:
        for h in handles:
            h.close()


def test_runtime_has_no_fd_leak_on_missing_namespace(tmp_path: Path) -> None:
    rt = Runtime([str(tmp_path)], str(tmp_path / "cache"))
    nl = NetworkConfigList.from_dict({"cniVersion": "1.0.0", "name": "n", "type": "x"})
    before = open_fds()
    with contextlib.suppress(NamespaceNotFound):
        rt.add(nl, "c", f"path:{tmp_path}/none")
    assert open_fds() == before
