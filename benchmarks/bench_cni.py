"""CNI: the runtime's overhead, concurrent attachments, and a plugin written in Python.

Three groups, on the real reference plugins (``/usr/lib/cni``), a named
namespace in a private run dir, a private cache and IPAM directory:

* ``CNI ADD+DEL bridge+host-local``: :class:`nslib.cni.Runtime` against the
  floor of a shell loop exec'ing ``bridge`` directly with the same stdin
  (ADD, then DEL with the first result as prevResult).  Target <= 1.15x.
* ``CNI 100 concurrent ADDs``: 100 anonymous namespaces attached from a
  pool of 8 threads; attachments per second and p95 (info rows).
* ``CNI plugin ADD``: the example Python plugin (examples/cni/nslib-veth),
  installed with :func:`nslib.cni.plugin.install` (``python -IS``) and as a
  plain ``python -I`` copy, against the Go ``ptp`` plugin doing the same
  work (veth pair, host-local, addresses, routes), each exec'd with the
  same environment; plus the interpreter start and the imports, to say
  where the time goes.  Target: within 2x of ptp (out of reach: CPython's
  start alone is about ptp's whole ADD).

Run: ``python -m benchmarks.bench_cni [--quick]`` (root).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nslib
from benchmarks._harness import Result, Target, main, percentile
from nslib import named
from nslib.cni import NetworkConfigList, Runtime, plugin

PLUGINS = "/usr/lib/cni"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cni" / "nslib-veth"

_FLOOR = """\
n=$1; add=$2; del=$3
s=$(date +%s%N)
i=0
while [ $i -lt $n ]; do
  CNI_COMMAND=ADD /usr/lib/cni/bridge < "$add" > /dev/null || exit 1
  CNI_COMMAND=DEL /usr/lib/cni/bridge < "$del" > /dev/null || exit 1
  i=$((i+1))
done
e=$(date +%s%N)
echo $(( (e - s) / n ))
"""


def _exec_env(netns: str, cid: str, ifname: str = "eth0") -> dict[str, str]:
    return {
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": "",
        "CNI_PATH": PLUGINS,
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    }


def _plugin_add(exe: str, conf: bytes, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run([exe], input=conf, env={**env, "CNI_COMMAND": "ADD"}, capture_output=True)
    dt = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"{exe} ADD failed: {p.stdout!r} {p.stderr!r}")
    subprocess.run(
        [exe], input=conf, env={**env, "CNI_COMMAND": "DEL"}, capture_output=True, check=True
    )
    return dt


def run(quick: bool) -> tuple[list[Result], list[Target]]:
    results: list[Result] = []
    targets: list[Target] = []
    tag = uuid.uuid4().hex[:6]
    base = Path(tempfile.mkdtemp(prefix=f"nsbcni{tag}-"))
    run_dir = str(base / "netns")
    bridge = f"nsbcni{tag}"
    name = f"nsbcni{tag}"
    try:
        nl = NetworkConfigList.from_dict(
            {
                "cniVersion": "1.0.0",
                "name": "nsbcni",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": bridge,
                        "ipam": {
                            "type": "host-local",
                            "subnet": "10.241.0.0/16",
                            "dataDir": str(base / "ipam"),
                        },
                    }
                ],
            }
        )
        rt = Runtime([PLUGINS], str(base / "cache"), run_dir=run_dir)
        with named.create(name, run_dir=run_dir) as h:
            netns = os.path.join(run_dir, name)
            # -- overhead vs the shell floor ------------------------------------
            n, rounds = (10, 3) if quick else (30, 7)
            first = rt.add(nl, "bench", h)
            rt.delete(nl, "bench", h)
            conf = dict(nl.plugins[0].raw, name=nl.name, cniVersion=nl.cni_version)
            (base / "add.json").write_text(json.dumps(conf))
            (base / "del.json").write_text(json.dumps({**conf, "prevResult": first.to_dict()}))
            (base / "floor.sh").write_text(_FLOOR)
            env = {**_exec_env(netns, "bench"), "PATH": os.environ.get("PATH", "")}
            nslib_s: list[float] = []
            floor_s: list[float] = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                for _ in range(n):
                    rt.add(nl, "bench", f"name:{name}")
                    rt.delete(nl, "bench", f"name:{name}")
                nslib_s.append((time.perf_counter() - t0) / n)
                out = subprocess.run(
                    [
                        "sh",
                        str(base / "floor.sh"),
                        str(n),
                        str(base / "add.json"),
                        str(base / "del.json"),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                floor_s.append(int(out.stdout.strip()) / 1e9)
            g = "CNI ADD+DEL bridge+host-local"
            ours, floor = statistics.median(nslib_s), statistics.median(floor_s)
            results.append(Result(g, "nslib.cni.Runtime", ours, "nslib"))
            results.append(Result(g, "shell loop exec'ing bridge", floor, "limit"))
            targets.append(
                Target(g, "<= 1.15x the exec floor", ours / floor <= 1.15, f"{ours / floor:.2f}x")
            )
        named.delete(name, run_dir=run_dir)

        # -- 100 concurrent attachments -------------------------------------------
        count = 40 if quick else 100
        handles = [nslib.NsHandle.new() for _ in range(count)]
        lat: list[float] = []

        def attach(i: int) -> None:
            t0 = time.perf_counter()
            rt.add(nl, f"c{i}", handles[i])
            lat.append(time.perf_counter() - t0)

        try:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as ex:
                list(ex.map(attach, range(count)))
            wall = time.perf_counter() - t0
            with ThreadPoolExecutor(8) as ex:
                list(ex.map(lambda i: rt.delete(nl, f"c{i}", handles[i]), range(count)))
        finally:
            for hd in handles:
                hd.close()
        g = f"CNI {count} concurrent ADDs (8 threads)"
        results.append(
            Result(
                g,
                "per attachment (wall / count)",
                wall / count,
                "nslib",
                f"{count / wall:.0f} attachments/s",
            )
        )
        results.append(Result(g, "p95 ADD latency", percentile(lat, 95), "info"))
        results.append(Result(g, "median ADD latency", statistics.median(lat), "info"))

        # -- the Python plugin vs ptp -------------------------------------------------
        # The example as a plain copy run by `python -I` (site, .pth files, the
        # editable finder), and as nslib.cni.plugin.install writes it (`-IS`,
        # explicit paths).
        pdir = base / "plugins"
        pdir.mkdir()
        body = EXAMPLE.read_text().split("\n", 1)[1]
        plain = pdir / "nslib-veth-plain"
        plain.write_text(f"#!{sys.executable} -I\n{body}")
        plain.chmod(0o755)
        lean = plugin.install(EXAMPLE, pdir)
        reps = 5 if quick else 30
        conf = json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "nsbptp",
                "type": "x",
                "ipam": {
                    "type": "host-local",
                    "subnet": "10.242.0.0/24",
                    "dataDir": str(base / "ipam2"),
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }
        ).encode()
        with named.create(name, run_dir=run_dir):
            e = _exec_env(os.path.join(run_dir, name), "bench")
            runs: dict[str, list[float]] = {}
            plugs = {"lean": lean, "plain": str(plain), "ptp": f"{PLUGINS}/ptp"}
            for plug in plugs.values():
                _plugin_add(plug, conf, e)  # warm-up (page cache, .pyc files)
            for _ in range(reps):  # interleaved: load changes hit every variant alike
                for key, plug in plugs.items():
                    runs.setdefault(key, []).append(_plugin_add(plug, conf, e))
        named.delete(name, run_dir=run_dir)
        paths = repr(_install_paths(lean))
        infos = {
            "python -IS -c pass (interpreter start, no site)": [
                sys.executable,
                "-IS",
                "-c",
                "pass",
            ],
            "python -I -c pass (with site: .pth files, editable finder)": [
                sys.executable,
                "-I",
                "-c",
                "pass",
            ],
            "python -IS: import nslib.cni.plugin (start + imports)": [
                sys.executable,
                "-IS",
                "-c",
                f"import sys; sys.path[:0] = {paths}; import nslib.cni.plugin",
            ],
            "installed example, no CNI_COMMAND (start + all its imports, no work)": [lean],
        }
        info_s = {k: [_time(v) for _ in range(reps)] for k, v in infos.items()}
        g = "CNI plugin ADD (veth pair + host-local)"
        med = {k: statistics.median(v) for k, v in runs.items()}
        results.append(
            Result(g, "examples/cni/nslib-veth, installed (python -IS)", med["lean"], "nslib")
        )
        results.append(
            Result(g, "examples/cni/nslib-veth, plain copy (python -I)", med["plain"], "info")
        )
        results.append(Result(g, "ptp (Go reference plugin)", med["ptp"], "alt"))
        for k, v in info_s.items():
            results.append(Result(g, k, statistics.median(v), "info"))
        py, go = med["lean"], med["ptp"]
        targets.append(Target(g, "within 2x of ptp", py / go <= 2.0, f"{py / go:.2f}x"))
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
        with_name = os.path.join(run_dir, name)
        if os.path.exists(with_name):
            with contextlib.suppress(OSError):
                named.delete(name, run_dir=run_dir)
        subprocess.run(["umount", "-l", run_dir], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
    return results, targets


def _time(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=False, capture_output=True)  # the example exits 1 without a command
    return time.perf_counter() - t0


def _install_paths(script: str) -> list[str]:
    """The ``sys.path`` entries :func:`nslib.cni.plugin.install` wrote into *script*."""
    for line in Path(script).read_text().splitlines():
        if line.startswith("sys.path[:0] = "):
            return list(ast.literal_eval(line.partition(" = ")[2]))
    raise RuntimeError(f"{script} was not written by nslib.cni.plugin.install")


if __name__ == "__main__":
    main(run)
