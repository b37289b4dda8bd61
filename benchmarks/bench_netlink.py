"""Netlink in a namespace, and pending configuration applied when a container starts.

Two groups:

* ``IPRoute in a namespace (construct + link dump)``: open an IPRoute bound
  to a named namespace, dump its links, close it.

  - nslib: ``nslib.netlink.iproute(NetNamespace.named(name))`` (the socket
    is made inside the namespace by the C core);
  - alternative: pyroute2's ``IPRoute(netns=name)``, which forks a helper
    to make the socket (it needs the name in /run/netns);
  - limit: a plain ``IPRoute()`` in the calling thread's own namespace.

  Everything runs on a thread pinned inside a fresh anonymous namespace,
  which is the "default namespace" of the run: both namespaces then hold
  just ``lo``, so every dump returns the same thing and only the way to the
  socket differs.  The named namespace gets a unique name in /run/netns
  and is deleted afterwards.

* ``pending interface configured after container start``: a veth end with
  an address is declared for a microservice label before its container
  exists; then a busybox container with that label starts on a private
  dockerd.  Measured: from the daemon's ``start`` event (``timeNano``) to
  the configurator reporting the item APPLIED (the veth is in the
  container's namespace, addressed and up).  p50/p95 over 20 starts (5
  with ``--quick``).  The veth peers live in a test namespace, never the
  host's.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid

import nslib
from benchmarks._harness import Result, Target, main, percentile
from nslib import named
from nslib import netlink as nl

G_IPR = "IPRoute in a namespace (construct + link dump)"
G_PENDING = "pending interface configured after container start"
G_APPLY = "veth + addresses + up, into an existing named namespace"


def _dump(ipr: object) -> int:
    return len(list(ipr.link("dump")))  # type: ignore[attr-defined]


def bench_iproute(quick: bool) -> tuple[list[Result], list[Target]]:
    from pyroute2 import IPRoute

    # Alternate the implementations call by call, so drift on a shared
    # machine hits them alike; the forking one runs every fifth round.
    rounds = 120 if quick else 500
    name = f"nsbench-nl{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ref = nslib.NetNamespace.named(name)

    def ours() -> None:
        with nl.iproute(ref) as ipr:
            _dump(ipr)

    def plain() -> None:
        with IPRoute() as ipr:
            _dump(ipr)

    def forked() -> None:
        with IPRoute(netns=name) as ipr:
            _dump(ipr)

    def measure() -> dict[str, float]:
        with nl.iproute(ref) as a, IPRoute() as b:
            assert _dump(a) == _dump(b) == 1, "both namespaces should hold just lo"
        impls = {"nslib": ours, "plain": plain, "pyroute2": forked}
        samples: dict[str, list[float]] = {k: [] for k in impls}
        for fn in impls.values():  # warm-up
            fn()
        for i in range(rounds):
            for key, fn in impls.items():
                if key == "pyroute2" and i % 5:
                    continue
                gc.collect(0)  # pyroute2 leaves cycles: collect them outside the timing
                t0 = time.perf_counter()
                fn()
                samples[key].append(time.perf_counter() - t0)
        return {k: statistics.median(v) for k, v in samples.items()}

    named.create(name).close()
    try:
        with nslib.NsHandle.new() as home:
            pool = nslib.pinned(home)
            try:
                t = pool.submit(measure).result()
            finally:
                pool.shutdown()
    finally:
        named.delete(name)
    results = [
        Result(G_IPR, "nslib.netlink.iproute(NetNamespace.named(n))", t["nslib"], "nslib"),
        Result(G_IPR, "pyroute2 IPRoute() in its own namespace", t["plain"], "limit", "no netns"),
        Result(G_IPR, "pyroute2 IPRoute(netns=n)", t["pyroute2"], "alt", "forks a helper"),
    ]
    vs_plain = t["nslib"] / t["plain"]
    vs_pyroute2 = t["pyroute2"] / t["nslib"]
    targets = [
        Target(G_IPR, "within 1.2x of plain IPRoute()", vs_plain <= 1.2, f"{vs_plain:.2f}x"),
        Target(
            G_IPR,
            "about 3x faster than IPRoute(netns=n)",
            vs_pyroute2 >= 2.5,
            f"pyroute2 takes {vs_pyroute2:.1f}x nslib's time",
        ),
    ]
    return results, targets


def bench_apply(quick: bool) -> tuple[list[Result], list[Target]]:
    """The configurator's apply against the same requests made directly.

    Each round creates a named namespace (untimed), then, in alternating
    order: ``Configurator.add_veth`` until the item is APPLIED, and the
    same pair made through two ``nslib.netlink.Session`` objects (open,
    create the pair with the peer in the plugin's default namespace, then
    per end: look up the index, add the address, set it up; close).  Both
    send the same requests; the configurator adds its worker thread,
    namespace resolution through the plugin, and its bookkeeping.
    """
    rounds = 15 if quick else 60
    tag = f"nsbench-ap{os.getpid()}-{uuid.uuid4().hex[:4]}"
    conf_s: list[float] = []
    direct_s: list[float] = []
    base = tempfile.mkdtemp(prefix="nsbench-ap-")
    run_dir = os.path.join(base, "netns")  # private: nothing else touches it
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, base, ignore_errors=True)
        cleanup.callback(subprocess.run, ["umount", "-l", run_dir], capture_output=True)
        home = cleanup.enter_context(nslib.NsHandle.new())

        def make_plugin() -> nslib.NsPlugin:
            p = nslib.NsPlugin(nslib.Config(create_missing=False, run_dir=run_dir))
            p.init()
            return p

        plugin = nslib.run_in(home, make_plugin)  # veth peers land in `home`
        cleanup.callback(plugin.close)
        conf = cleanup.enter_context(nslib.Configurator(plugin))

        def via_conf(ref: nslib.NetNamespace, i: int) -> float:
            item = conf.add_veth(
                "eth1",
                f"nsa{i}",
                ns=ref,
                addresses=[f"10.250.{i % 250}.2/30"],
                peer_addresses=[f"10.250.{i % 250}.1/30"],
            )
            item.wait(nslib.ItemStatus.APPLIED, timeout=5)
            t = time.perf_counter()
            conf.remove(item)
            item.wait(nslib.ItemStatus.REMOVED, timeout=5)
            return t

        def direct(ref: nslib.NetNamespace, i: int) -> float:
            peer = f"nsd{i}"
            path = os.path.join(run_dir, ref.reference)  # the named namespace, by its file
            with nl.Session(path) as s, nl.Session(home) as p:
                s.add_veth("eth1", peer, peer_ns=p)
                for sess, link, addr in (
                    (s, "eth1", f"10.250.{i % 250}.2/30"),
                    (p, peer, f"10.250.{i % 250}.1/30"),
                ):
                    index = sess.link_index(link)
                    sess.add_address(index, addr)
                    sess.set_link_up(index)
                t = time.perf_counter()
                s.delete_link("eth1")
            return t

        for i in range(rounds + 2):  # two warm-up rounds
            name = f"{tag}-{i}"
            named.create(name, run_dir=run_dir).close()
            try:
                ref = nslib.NetNamespace.named(name)
                order = [(via_conf, conf_s), (direct, direct_s)]
                if i % 2:
                    order.reverse()
                for fn, out in order:
                    gc.collect(0)
                    t0 = time.perf_counter()
                    t1 = fn(ref, i)
                    if i >= 2:
                        out.append(t1 - t0)
            finally:
                named.delete(name, run_dir=run_dir)
    c, d = statistics.median(conf_s), statistics.median(direct_s)
    results = [
        Result(
            G_APPLY,
            "nslib Configurator.add_veth -> APPLIED",
            c,
            "nslib",
            f"median of {len(conf_s)}",
            {"p95": percentile(conf_s, 95)},
        ),
        Result(
            G_APPLY,
            "the same requests through two nslib.netlink.Session",
            d,
            "limit",
            "open both, create, index+address+up per end, close",
            {"p95": percentile(direct_s, 95)},
        ),
    ]
    ratio = c / d
    targets = [
        Target(G_APPLY, "configurator within 1.3x of direct netlink", ratio <= 1.3, f"{ratio:.2f}x")
    ]
    return results, targets


def bench_pending(quick: bool) -> tuple[list[Result], list[Target]]:
    from benchmarks._harness import PrivateDockerd, run_container

    starts = 5 if quick else 20
    tag = f"nsbench{os.getpid()}{uuid.uuid4().hex[:4]}"
    latencies: list[float] = []
    with PrivateDockerd() as d, nslib.NsHandle.new() as home:
        client = d.client()
        tracker = nslib.MicroserviceTracker(client)
        tracker.start()
        started_ns: dict[str, int] = {}
        applied_ns: dict[str, int] = {}
        done = threading.Condition()

        def on_event(ev: nslib.MicroserviceEvent) -> None:
            if ev.kind is nslib.EventKind.STARTED and ev.daemon_time_ns:
                with done:
                    started_ns.setdefault(ev.label, ev.daemon_time_ns)

        def on_change(item: nslib.ConfigItem) -> None:
            if item.status is nslib.ItemStatus.APPLIED and item.ns is not None:
                with done:
                    applied_ns.setdefault(item.ns.reference, time.time_ns())
                    done.notify_all()

        unsubscribe = tracker.subscribe(on_event)

        def make_plugin() -> nslib.NsPlugin:
            p = nslib.NsPlugin(tracker=tracker)
            p.init()
            return p

        plugin = nslib.run_in(home, make_plugin)  # veth peers land in `home`
        conf = nslib.Configurator(plugin, on_change=on_change)
        containers = []
        try:
            if not tracker.wait_in_sync(30):
                raise RuntimeError(f"tracker not in sync: {tracker.health()}")
            for i in range(starts):
                label = f"{tag}-{i}"
                item = conf.add_veth(
                    "eth1",
                    f"nsb{i}",
                    ns=nslib.NetNamespace.microservice(label),
                    addresses=[f"10.250.{100 + i}.2/30"],
                    peer_addresses=[f"10.250.{100 + i}.1/30"],
                )
                assert item.status is nslib.ItemStatus.PENDING
                c = run_container(client, label=label)
                containers.append(c)
                item.wait(nslib.ItemStatus.APPLIED, timeout=10)
                with done:
                    done.wait_for(lambda label=label: label in started_ns, timeout=5)
                if label in started_ns:
                    start = started_ns[label]
                else:  # found by a resync: fall back to the container's StartedAt
                    start = tracker.get(label, timeout=1).started_at_ns  # type: ignore[union-attr]
                latencies.append((applied_ns[label] - start) / 1e9)
                c.remove(force=True)
                containers.remove(c)
                conf.remove(item)
                item.wait(nslib.ItemStatus.REMOVED, timeout=10)
                time.sleep(0.3)  # let the kernel finish tearing the old namespace down
        finally:
            for c in containers:
                with contextlib.suppress(Exception):
                    c.remove(force=True)
            conf.close()
            plugin.close()
            unsubscribe()
            tracker.stop()
            client.close()
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    results = [
        Result(
            G_PENDING,
            "nslib Configurator: start event -> veth configured (p50)",
            p50,
            "nslib",
            f"{len(latencies)} starts",
            {"p95": p95, "max": max(latencies)},
        ),
        Result(G_PENDING, "the same, p95", p95, "info"),
    ]
    targets = [Target(G_PENDING, "p95 under 50 ms", p95 < 0.050, f"p95 {p95 * 1e3:.1f} ms")]
    return results, targets


def run(quick: bool) -> tuple[list[Result], list[Target]]:
    results, targets = bench_iproute(quick)
    r1, t1 = bench_apply(quick)
    r2, t2 = bench_pending(quick)
    return results + r1 + r2, targets + t1 + t2


if __name__ == "__main__":
    main(run)
