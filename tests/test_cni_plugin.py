"""nslib.cni.plugin and the example plugin (examples/cni/nslib-veth).

The example is installed into a temporary plugin directory with this
interpreter on its first line, and run by :class:`nslib.cni.Runtime`, alone
and chained after the reference ``bridge`` plugin.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import missing

import nslib
from nslib import named
from nslib.cni import CNIError, NetworkConfigList, Runtime, plugin

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cni" / "nslib-veth"
PLUGIN_DIR = "/usr/lib/cni"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def install_example(directory: Path) -> Path:
    """Install the example into *directory* (lean start-up, this interpreter)."""
    return Path(plugin.install(EXAMPLE, directory))


def test_install_writes_a_lean_runnable_script(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_text(
        '#!/usr/bin/env python3\n"""A plugin."""\n\nfrom __future__ import annotations\n\n'
        "import sys\n\nimport nslib.cni.plugin\n\n"
        "print(sys.flags.no_site, sys.flags.isolated, 'site' in sys.modules)\n"
    )
    (tmp_path / "bin").mkdir()
    dest = Path(plugin.install(src, tmp_path / "bin", name="p"))
    assert dest == tmp_path / "bin" / "p"
    assert dest.stat().st_mode & 0o777 == 0o755
    assert dest.read_text().startswith(f"#!{sys.executable} -IS\n")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": "/nonexistent"}
    out = subprocess.run([str(dest)], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["1", "1", "False"]  # no site, isolated, nslib still found
    assert [p.name for p in (tmp_path / "bin").iterdir()] == ["p"]  # no temporary left


# -- main(): the skeleton, in-process ------------------------------------------


def _main(env: dict[str, str], stdin: object, **handlers: Any) -> tuple[int, Any]:
    out = io.StringIO()
    data = json.dumps(stdin).encode() if not isinstance(stdin, bytes) else stdin
    with pytest.raises(SystemExit) as ei:
        plugin.main(environ=env, stdin=io.BytesIO(data), stdout=out, **handlers)
    text = out.getvalue()
    return int(ei.value.code or 0), json.loads(text) if text.strip() else None


_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c",
    "CNI_NETNS": "/proc/1/ns/net",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/nonexistent",
    "CNI_ARGS": "A=1;B=x=y",
}


def test_main_version() -> None:
    code, out = _main(
        {"CNI_COMMAND": "VERSION"}, {"cniVersion": "1.0.0"}, versions=("0.4.0", "1.0.0")
    )
    assert code == 0 and out == {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}


def test_main_add_dispatch_and_result_version() -> None:
    seen: list[plugin.Request] = []

    def add(req: plugin.Request) -> plugin.Result:
        seen.append(req)
        return plugin.Result(
            interfaces=[plugin.Interface("eth0", sandbox=req.netns_path)],
            ips=[plugin.IPConfig("10.0.0.2/24", "10.0.0.1", 0)],
        )

    conf = {"cniVersion": "0.4.0", "name": "n", "type": "t", "prevResult": {"cniVersion": "0.4.0"}}
    code, out = _main(_ENV, conf, add=add)
    assert code == 0
    assert out["cniVersion"] == "0.4.0" and out["ips"][0]["version"] == "4"
    [req] = seen
    assert req.args == {"A": "1", "B": "x=y"} and req.path == ["/nonexistent"]
    assert req.prev_result is not None and req.name == "n"


@pytest.mark.parametrize(
    ("env", "conf", "code"),
    [
        ({**_ENV, "CNI_NETNS": ""}, {"cniVersion": "1.0.0", "name": "n"}, 4),
        ({k: v for k, v in _ENV.items() if k != "CNI_IFNAME"}, {"cniVersion": "1.0.0"}, 4),
        (_ENV, {"cniVersion": "9.0.0", "name": "n"}, 1),
        (_ENV, b"{garbage", 6),
        ({**_ENV, "CNI_COMMAND": "FROB"}, {"cniVersion": "1.0.0"}, 4),
        ({**_ENV, "CNI_ARGS": "novalue"}, {"cniVersion": "1.0.0"}, 4),
    ],
)
def test_main_bad_input_is_a_json_error(env: dict[str, str], conf: object, code: int) -> None:
    status, out = _main(env, conf, add=lambda r: plugin.Result())
    assert status == 1 and out["code"] == code and out["msg"]


def test_main_turns_exceptions_into_errors() -> None:
    def boom(req: plugin.Request) -> None:
        raise RuntimeError("broken \x1b[31m")

    def typed(req: plugin.Request) -> None:
        raise CNIError(11, "busy", "try later")

    status, out = _main({**_ENV, "CNI_COMMAND": "DEL"}, {"cniVersion": "1.0.0"}, delete=boom)
    assert status == 1 and out["code"] == 999 and "broken" in out["msg"]
    status, out = _main({**_ENV, "CNI_COMMAND": "DEL"}, {"cniVersion": "1.0.0"}, delete=typed)
    assert status == 1 and out == {
        "cniVersion": "1.0.0",
        "code": 11,
        "msg": "busy",
        "details": "try later",
    }
    # CHECK not implemented: success; ADD not implemented: an error
    assert _main({**_ENV, "CNI_COMMAND": "CHECK"}, {"cniVersion": "1.0.0"})[0] == 0
    status, out = _main(_ENV, {"cniVersion": "1.0.0"})
    assert status == 1 and out["code"] == 4


def test_plugin_import_is_lean() -> None:
    code = (
        "import sys, nslib.cni.plugin; "
        "print(sorted(m for m in ('pyroute2', 'docker') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# -- the example plugin on the real kernel --------------------------------------


class World:
    def __init__(self, base: Path, run_dir: str, prefix: str) -> None:
        self.base = base
        self.run_dir = run_dir
        self.prefix = prefix
        rnd = random.Random(prefix)
        self.net = f"10.{rnd.randint(200, 230)}.{rnd.randint(0, 255)}"
        self.plugins = base / "plugins"
        self.plugins.mkdir()
        install_example(self.plugins)
        self.rt = Runtime([str(self.plugins), PLUGIN_DIR], str(base / "cache"), run_dir=run_dir)

    def ipam(self, third: int) -> dict[str, Any]:
        return {
            "type": "host-local",
            "subnet": f"{self.net}.{third}/26",
            "dataDir": str(self.base / "ipam"),
            "routes": [{"dst": f"{self.net}.128/26"}],
        }

    def reserved(self, name: str) -> set[str]:
        d = self.base / "ipam" / name
        return {f for f in os.listdir(d) if f[0].isdigit()} if d.exists() else set()


@pytest.fixture
def world(run_dir: str, unique: str) -> Iterator[World]:
    for n in ("bridge", "host-local"):
        if not os.access(os.path.join(PLUGIN_DIR, n), os.X_OK):
            missing(f"needs the CNI reference plugins in {PLUGIN_DIR}")
    base = Path(tempfile.mkdtemp(prefix=f"{unique}-cnip-"))
    try:
        yield World(base, run_dir, unique)
    finally:
        subprocess.run(["ip", "link", "del", unique[:15]], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


def _ping(ip: str) -> bool:
    argv = [BUSYBOX, "ping", "-c", "1", "-W", "2", ip]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def _links(ns: nslib.NsHandle) -> list[str]:
    import socket

    return sorted(nslib.run_in(ns, lambda: [n for _, n in socket.if_nameindex()]))


def _host_links() -> set[str]:
    """The host ends the example plugin can make (its default prefix, ``nsv``).

    Only those: other software (a runtime starting containers) may add and
    remove host links of its own while a test runs.
    """
    import socket

    return {n for _, n in socket.if_nameindex() if n.startswith("nsv")}


@pytest.mark.root
def test_example_alone_via_runtime(world: World) -> None:
    nl = NetworkConfigList.from_dict(
        {
            "cniVersion": "1.0.0",
            "name": "nsltveth",
            "plugins": [{"type": "nslib-veth", "ipam": world.ipam(0)}],
        }
    )
    name = f"{world.prefix}a"
    before = _host_links()
    with named.create(name, run_dir=world.run_dir) as a:
        r = world.rt.add(nl, "c1", a)
        host_if, cont_if = r.interfaces
        assert cont_if.name == "eth0" and cont_if.sandbox and not host_if.sandbox
        assert host_if.name in _host_links() and "eth0" in _links(a)
        ip = r.ips[0].address.split("/")[0]
        assert r.ips[0].interface == 1 and world.reserved("nsltveth") == {ip}
        assert [x.dst for x in r.routes] == [f"{world.net}.128/26"]
        assert _ping(ip)
        world.rt.check(nl, "c1", a)
        world.rt.delete(nl, "c1", a)
        assert _links(a) == ["lo"] and _host_links() == before
        assert world.reserved("nsltveth") == set()
    named.delete(name, run_dir=world.run_dir)


@pytest.mark.root
def test_example_chained_after_bridge(world: World) -> None:
    bridge = {
        "type": "bridge",
        "bridge": world.prefix[:15],
        "isGateway": True,
        "ipam": world.ipam(64),
    }
    veth = {"type": "nslib-veth", "containerInterface": "p2p0", "ipam": world.ipam(0)}
    nl = NetworkConfigList.from_dict(
        {"cniVersion": "1.0.0", "name": "nsltchain", "plugins": [bridge, veth]}
    )
    name = f"{world.prefix}a"
    with named.create(name, run_dir=world.run_dir) as a:
        r = world.rt.add(nl, "c1", a)
        names = [i.name for i in r.interfaces]
        assert names[0] == world.prefix[:15] and "eth0" in names and "p2p0" in names
        assert len(r.ips) == 2  # the bridge's (from prevResult) and ours
        for ip in r.ips:
            assert _ping(ip.address.split("/")[0])
        assert {"eth0", "p2p0"} <= set(_links(a))
        # No CHECK here: the reference bridge plugin's CHECK wants every
        # address of prevResult on its own interface, so it refuses any chain
        # that adds a second interface.
        world.rt.delete(nl, "c1", a)
        assert _links(a) == ["lo"]
        assert world.reserved("nsltchain") == set()
    named.delete(name, run_dir=world.run_dir)


@pytest.mark.root
def test_example_del_without_namespace_and_failed_add(world: World) -> None:
    nl = NetworkConfigList.from_dict(
        {
            "cniVersion": "1.0.0",
            "name": "nsltveth",
            "plugins": [{"type": "nslib-veth", "ipam": world.ipam(0)}],
        }
    )
    name = f"{world.prefix}a"
    before = _host_links()
    with named.create(name, run_dir=world.run_dir) as a:
        world.rt.add(nl, "c1", a)
        # the interface name is taken: the plugin fails and leaves nothing
        with pytest.raises(CNIError) as ei:
            world.rt.add(nl, "c2", a)
        assert "exists" in str(ei.value).lower()
        assert len(world.reserved("nsltveth")) == 1
    named.delete(name, run_dir=world.run_dir)
    world.rt.delete(nl, "c1", None)
    assert world.reserved("nsltveth") == set() and _host_links() == before
