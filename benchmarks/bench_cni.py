"""CNI: the runtime's overhead, concurrent attachments, and a plugin written in Python.

Three groups, on the real reference plugins (``/usr/lib/cni``), a named
namespace in a private run dir, a private cache and IPAM directory:

* ``CNI ADD+DEL bridge+host-local``: :class:`nslib.cni.Runtime` against the
  floor of a shell loop exec'ing ``bridge`` directly with the same stdin
  (ADD, then DEL with the first result as prevResult).  Target <= 1.15x.
* ``CNI 100 concurrent ADDs``: 100 anonymous namespaces attached from a
  pool of 8 threads; attachments per second and p95 (info rows).
* ``CNI plugin ADD``: the example Python plugin (examples/cni/nslib-veth)
  against the Go ``ptp`` plugin doing the same work (veth pair, host-local,
  addresses, routes), each exec'd with the same environment; plus the
  interpreter start and the plugin module's import, to say where the time
  goes.  Target: within 2x of ptp.

Run: ``python -m benchmarks.bench_cni [--quick]`` (root).
"""

from __future__ import annotations

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
from nslib.cni import NetworkConfigList, Runtime

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
        pdir = base / "plugins"
        pdir.mkdir()
        body = EXAMPLE.read_text().split("\n", 1)[1]
        ex_path = pdir / "nslib-veth"
        ex_path.write_text(f"#!{sys.executable} -I\n{body}")
        ex_path.chmod(0o755)
        reps = 5 if quick else 20
        with named.create(name, run_dir=run_dir):
            netns = os.path.join(run_dir, name)
            py_s, go_s = [], []
            for plug, out_list in ((str(ex_path), py_s), (f"{PLUGINS}/ptp", go_s)):
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
                e = _exec_env(netns, "bench")
                _plugin_add(plug, conf, e)  # warm-up
                for _ in range(reps):
                    out_list.append(_plugin_add(plug, conf, e))
            start = [_time([sys.executable, "-I", "-c", "pass"]) for _ in range(reps)]
            imp = [
                _time([sys.executable, "-I", "-c", "import nslib.cni.plugin"]) for _ in range(reps)
            ]
            imp_nslib = [_time([sys.executable, "-I", "-c", "import nslib"]) for _ in range(reps)]
        named.delete(name, run_dir=run_dir)
        g = "CNI plugin ADD (veth pair + host-local)"
        py, go = statistics.median(py_s), statistics.median(go_s)
        results.append(Result(g, "examples/cni/nslib-veth (Python)", py, "nslib"))
        results.append(Result(g, "ptp (Go reference plugin)", go, "alt"))
        results.append(
            Result(g, "python -I -c pass (interpreter start)", statistics.median(start), "info")
        )
        results.append(
            Result(g, "python -I -c 'import nslib'", statistics.median(imp_nslib), "info")
        )
        results.append(
            Result(g, "python -I -c 'import nslib.cni.plugin'", statistics.median(imp), "info")
        )
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
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main(run)
