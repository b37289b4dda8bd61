"""``nslib demo``: build a small real topology, prove it works, tear it down.

Two named namespaces joined by a veth pair, with addresses and a route; then,
if a docker daemon answers, a busybox microservice whose interface was
declared *before* its container existed.  Connectivity is proven with
``ping``, ``nslib ls`` is printed, and everything is removed again -- also on
Ctrl-C or SIGTERM -- and checked to be gone.

All addresses live only inside namespaces the demo creates; nothing is
configured in the host's own namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TypeVar

from . import named, netlink
from .errors import NslibError
from .reference import NetNamespace

__all__ = ["main"]

T = TypeVar("T")

#: The image `scripts/host-setup.sh` builds: FROM scratch plus static busybox.
IMAGE = "nslib-busybox:test"
#: The demo's addresses: a private /16 used only inside the demo's namespaces.
NET = "10.231"


#: Set by the SIGTERM handler.  The KeyboardInterrupt it raises can be lost:
#: CPython swallows an exception raised inside a ``__del__`` or a weakref
#: callback.  Every step checks this, so a lost one still stops the demo.
_terminated = False


def _check_terminated() -> None:
    if _terminated:
        raise KeyboardInterrupt


class _Steps:
    """Numbered progress lines with timings."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        _check_terminated()
        self.n += 1
        print(f"[{self.n}/{self.total}] {text} ...", end=" ", flush=True)
        t0 = time.perf_counter()
        try:
            yield
        except BaseException:
            print("FAILED", flush=True)
            raise
        print(f"ok ({(time.perf_counter() - t0) * 1e3:.1f} ms)", flush=True)
        _check_terminated()

    @staticmethod
    def detail(text: str) -> None:
        print(f"      {text}", flush=True)


def _ping(ref: NetNamespace, address: str) -> str:
    """Ping *address* once from inside *ref*; return busybox's summary line."""
    from .process import run

    busybox = shutil.which("busybox") or "/bin/busybox"
    proc = run(
        ref,
        [busybox, "ping", "-c", "1", "-W", "2", address],
        capture_output=True,
        text=True,
        errors="backslashreplace",
    )
    lines = [line for line in proc.stdout.splitlines() if "packets" in line or "round-trip" in line]
    if proc.returncode != 0:
        raise RuntimeError(f"ping {address} from {ref} failed: {proc.stdout}{proc.stderr}".strip())
    return "; ".join(lines)


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    global _terminated
    _terminated = True
    raise KeyboardInterrupt


def _docker_client(timeout: float) -> tuple[Any | None, str]:
    """A docker client that answers, or None and the reason."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        client.ping()
        client.images.get(IMAGE)
    except ImportError:
        return None, "the docker SDK is not installed"
    except Exception as e:
        reason = str(e).splitlines()[0][:160] or type(e).__name__
        if "No such image" in reason or "ImageNotFound" in type(e).__name__:
            reason = f"image {IMAGE} is missing (scripts/host-setup.sh builds it)"
        with contextlib.suppress(Exception):
            client.close()
        return None, reason
    return client, ""


#: Every link name the demo makes; none of them may appear in the host's namespace.
_LINKS = frozenset({"l0", "r0", "eth1", "web0"})


def _host_state(tag: str) -> tuple[frozenset[str], frozenset[str]]:
    """The demo's own traces on the host: its named namespaces and link names."""
    names = frozenset(n for n in named.list() if n.startswith(tag))
    return names, frozenset(netlink.list_links()) & _LINKS


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit status."""
    p = argparse.ArgumentParser(prog="nslib demo", description=__doc__.splitlines()[0])
    p.add_argument("--no-docker", action="store_true", help="skip the microservice part")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "nslib demo: needs root (namespaces and mounts); try: sudo nslib demo", file=sys.stderr
        )
        return 1

    old = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    tag = f"nsdemo{os.getpid() % 100000}"
    left, right = f"{tag}-left", f"{tag}-right"
    before = _host_state(tag)
    cleanup: list[tuple[str, Callable[[], object]]] = []
    steps = _Steps(8)
    print(f"nslib demo: a small topology in namespaces {left!r} and {right!r}\n")
    try:
        _run(steps, args, tag, left, right, cleanup)
        _check_terminated()
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: tearing down", flush=True)
        return 130
    except (NslibError, OSError, RuntimeError) as e:
        print(f"\nnslib demo: {e}", file=sys.stderr)
        return 1
    finally:
        _teardown(cleanup, before, tag)
        signal.signal(signal.SIGTERM, old)


def _run(
    steps: _Steps,
    args: argparse.Namespace,
    tag: str,
    left: str,
    right: str,
    cleanup: list[tuple[str, Callable[[], object]]],
) -> None:
    L, R = NetNamespace.named(left), NetNamespace.named(right)

    with steps.step(f"create named namespaces {left} and {right} (ip netns compatible)"):
        for name in (left, right):
            named.create(name).close()
            cleanup.append((f"delete namespace {name}", functools.partial(named.delete, name)))

    with steps.step("veth pair l0 <-> r0 between them, addresses, links up"):
        netlink.add_veth("l0", "r0", ns=L, peer_ns=R)
        netlink.add_address("l0", f"{NET}.0.1/30", ns=L)
        netlink.add_address("r0", f"{NET}.0.2/30", ns=R)
        netlink.add_address("lo", f"{NET}.1.1/32", ns=R)
        for link, ns in (("l0", L), ("r0", R), ("lo", L), ("lo", R)):
            netlink.set_link_up(link, ns=ns)

    with steps.step(f"route {NET}.1.0/24 via {NET}.0.2 in {left}"):
        netlink.add_route(f"{NET}.1.0/24", gateway=f"{NET}.0.2", ns=L)

    with steps.step(f"ping {NET}.1.1 (on {right}'s lo) from {left}, through the route"):
        summary = _ping(L, f"{NET}.1.1")
    steps.detail(summary)

    client, why = (None, "--no-docker given") if args.no_docker else _docker_client(3.0)
    if client is None:
        steps.total = 6
        steps.n += 1
        print(f"[{steps.n}/{steps.total}] microservice: skipped, docker is not available: {why}")
        print("      (the namespace part above ran in full)")
    else:
        # Registered before anything that uses the client, so that it runs
        # after them (cleanup runs in reverse): the container's removal and
        # the tracker's stop still talk to docker through it.
        cleanup.append(("close docker client", client.close))
        _microservice(steps, client, tag, L, cleanup)

    with steps.step("nslib ls (every network namespace on this host)"):
        print()
        from .cli import main as cli_main

        cli_main(["ls"])


def _microservice(
    steps: _Steps,
    client: Any,
    tag: str,
    left: NetNamespace,
    cleanup: list[tuple[str, Callable[[], object]]],
) -> None:
    from .configurator import Configurator, ItemStatus
    from .microservice import MicroserviceTracker
    from .plugin import NsPlugin

    label = f"{tag}-web"
    ms = NetNamespace.microservice(label)
    tracker = MicroserviceTracker(client)
    tracker.start()
    cleanup.append(("stop tracker", tracker.stop))
    plugin = NsPlugin(tracker=tracker)
    plugin.init()
    cleanup.append(("close plugin", plugin.close))
    conf = Configurator(plugin)
    cleanup.append(("close configurator", conf.close))
    if not tracker.wait_in_sync(10.0):
        raise RuntimeError(f"the tracker did not sync with docker: {tracker.health()}")

    with steps.step(f"declare veth 'eth1' for microservice {label!r} before it exists"):
        item = conf.add_veth(
            "eth1",
            "web0",
            ns=ms,
            peer_ns=left,
            addresses=[f"{NET}.2.2/30"],
            peer_addresses=[f"{NET}.2.1/30"],
        )
    steps.detail(f"status: {item.status.name} (no container yet)")

    with steps.step(f"start busybox container {label} (--network none), wait for the link"):
        container = client.containers.run(
            IMAGE,
            name=label,
            detach=True,
            network_mode="none",
            environment={"MICROSERVICE_LABEL": label},
            labels={"org.nslib.demo": tag},
            stop_signal="SIGKILL",
        )
        cleanup.append((f"remove container {label}", lambda: container.remove(force=True)))
        t0 = time.perf_counter()
        item.wait(ItemStatus.APPLIED, timeout=10.0)
        took = (time.perf_counter() - t0) * 1e3
    steps.detail(f"configured {took:.0f} ms after `docker run` returned; inside the container:")
    rc, out = container.exec_run(["ip", "-4", "addr", "show", "dev", "eth1"])
    inet = [
        line.strip()
        for line in out.decode(errors="backslashreplace").splitlines()
        if "inet " in line
    ]
    steps.detail("eth1: " + ("; ".join(inet) or f"no IPv4 address (ip exited {rc})"))

    with steps.step(f"ping the container ({NET}.2.2) from {left}"):
        summary = _ping(left, f"{NET}.2.2")
    steps.detail(summary)


def _teardown(cleanup: list[tuple[str, Callable[[], object]]], before: Any, tag: str) -> None:
    # SIGINT/SIGTERM during teardown must not leave half the topology behind.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        print("\nteardown:", flush=True)
        for what, undo in reversed(cleanup):
            try:
                undo()
                print(f"  - {what}", flush=True)
            except Exception as e:
                print(f"  - {what}: FAILED: {e}", flush=True)
        after = _host_state(tag)
        if after == before:
            print("host left as found: no named namespace or link of the demo remains")
        else:
            print(
                f"WARNING: host changed: namespaces {sorted(after[0] ^ before[0])}, "
                f"links {sorted(after[1] ^ before[1])}"
            )
    finally:
        signal.signal(signal.SIGINT, old)
        signal.signal(signal.SIGTERM, old_term)
