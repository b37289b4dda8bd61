"""nslib.monitor on the real kernel: inotify, mount-table changes and rtnetlink nsid events."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

import caps
import pytest
from helpers import PREFIX, unmount_tree

from nslib import named
from nslib.monitor import EventKind, NamespaceEvent, NamespaceMonitor, RunDirError

pytestmark = pytest.mark.root

CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
QUIET = 0.3  # how long "no event" is waited for


def mount_ns(path: str) -> tuple[int, int]:
    """Bind a fresh namespace onto the existing file *path* (util-linux, not nslib)."""
    subprocess.run(["unshare", f"--net={path}", "true"], check=True)
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def next_of(
    mon: NamespaceMonitor,
    kinds: tuple[EventKind, ...],
    timeout: float = 5.0,
    *,
    name: str | None = None,
) -> NamespaceEvent:
    """The next event of one of *kinds*, for *name* if given.

    Others are skipped: nsid events are host-wide, and other software (a
    container runtime's veths) assigns nsids while a test runs.
    """
    deadline = time.monotonic() + timeout
    while True:
        ev = mon.get(max(0.0, deadline - time.monotonic()))
        assert ev is not None, f"no {kinds} event within {timeout} s"
        if ev.kind in kinds and (name is None or ev.name == name):
            return ev


NAME_EVENTS = (EventKind.ADDED, EventKind.DELETED)


@pytest.fixture
def mon_dir(run_dir: str) -> Iterator[str]:
    os.makedirs(run_dir)
    yield run_dir


def test_added_only_once_the_namespace_is_mounted(mon_dir: str, fd_baseline: set[int]) -> None:
    path = os.path.join(mon_dir, "blue")
    with NamespaceMonitor([mon_dir], nsids=False) as mon:
        open(path, "w").close()  # the bare placeholder: not a namespace yet
        assert mon.get(QUIET) is None
        ident = mount_ns(path)
        ev = mon.get(5)
        assert ev == NamespaceEvent(EventKind.ADDED, "blue", path, mon_dir, ident, None)
        assert mon.names() == {path: ident}
        # ip netns del's order: unmount, then unlink.  The unmount is the deletion.
        subprocess.run(["umount", "-l", path], check=True)
        ev = mon.get(5)
        assert ev is not None and (ev.kind, ev.name, ev.ns_id) == (EventKind.DELETED, "blue", ident)
        os.unlink(path)
        assert mon.get(QUIET) is None  # not deleted twice


def test_a_namespace_mounted_and_gone_between_two_looks(mon_dir: str) -> None:
    """Nothing reads the monitor while a name comes and goes: still reported, as a pair."""
    path = os.path.join(mon_dir, "brief")
    with NamespaceMonitor([mon_dir], nsids=False) as mon:
        open(path, "w").close()
        mount_ns(path)
        subprocess.run(["umount", "-l", path], check=True)
        os.unlink(path)
        got = [mon.get(5), mon.get(5), mon.get(QUIET)]
    assert got == [
        NamespaceEvent(EventKind.ADDED, "brief", path, mon_dir, None),
        NamespaceEvent(EventKind.DELETED, "brief", path, mon_dir, None),
        None,
    ]


def _look_ahead(mon: NamespaceMonitor, name: str) -> list[tuple[EventKind, tuple[int, int] | None]]:
    """Look at *name* before reading the directory events, as a busy monitor can.

    (The directory events are queued when they happen; a monitor thread
    descheduled between a read and a look sees the name in a later state.)
    """
    out: list[NamespaceEvent] = []
    with mon._lock:
        mon._look(mon._dirs[0], name, out)
    return [(e.kind, e.ns_id) for e in out]


def test_a_removal_older_than_the_mount_seen_is_not_reported_again(mon_dir: str) -> None:
    path = os.path.join(mon_dir, "n")
    with NamespaceMonitor([mon_dir], nsids=False) as mon:
        open(path, "w").close()
        first = mount_ns(path)
        assert next_of(mon, NAME_EVENTS).ns_id == first
        subprocess.run(["umount", "-l", path], check=True)  # ip netns del, then add
        os.unlink(path)
        open(path, "w").close()
        second = mount_ns(path)
        assert _look_ahead(mon, "n") == [(EventKind.DELETED, first), (EventKind.ADDED, second)]
        # Its IN_DELETE and IN_CREATE, read now, are older than the mount seen.
        assert mon.get(QUIET) is None
        subprocess.run(["umount", "-l", path], check=True)
        os.unlink(path)
        ev = next_of(mon, NAME_EVENTS)
        assert (ev.kind, ev.ns_id) == (EventKind.DELETED, second)
        assert mon.get(QUIET) is None


def test_a_namespace_come_and_gone_before_the_mount_seen(mon_dir: str) -> None:
    """Between the file known and the one seen, a third came and went: one unidentified pair."""
    path = os.path.join(mon_dir, "n")
    with NamespaceMonitor([mon_dir], nsids=False) as mon:
        open(path, "w").close()
        first = mount_ns(path)
        assert next_of(mon, NAME_EVENTS).ns_id == first
        for _ in range(2):
            subprocess.run(["umount", "-l", path], check=True)
            os.unlink(path)
            open(path, "w").close()
            last = mount_ns(path)
        assert _look_ahead(mon, "n") == [(EventKind.DELETED, first), (EventKind.ADDED, last)]
        got = [mon.get(5), mon.get(5), mon.get(QUIET)]
    assert got == [
        NamespaceEvent(EventKind.ADDED, "n", path, mon_dir, None),
        NamespaceEvent(EventKind.DELETED, "n", path, mon_dir, None),
        None,
    ]
    unmount_tree(path)


def test_the_same_namespace_mounted_anew_between_two_looks(mon_dir: str) -> None:
    """Unmounted and mounted again (``ip netns del`` then ``attach``): it went and came back."""
    import nslib

    path = os.path.join(mon_dir, "n")
    open(path, "w").close()
    with nslib.NsHandle.new() as h, NamespaceMonitor([mon_dir], nsids=False) as mon:
        fd = h.fileno()
        bind = ["mount", "--bind", f"/proc/self/fd/{fd}", path]
        subprocess.run(bind, check=True, pass_fds=[fd])
        assert next_of(mon, NAME_EVENTS).ns_id == h.ns_id
        subprocess.run(["umount", path], check=True)
        subprocess.run(bind, check=True, pass_fds=[fd])
        assert _look_ahead(mon, "n") == [(EventKind.DELETED, h.ns_id), (EventKind.ADDED, h.ns_id)]
        assert mon.get(QUIET) is None
    unmount_tree(path)


def test_a_placeholder_that_never_had_a_mount_is_never_reported(mon_dir: str) -> None:
    path = os.path.join(mon_dir, "failed")
    with NamespaceMonitor([mon_dir], nsids=False) as mon:
        open(path, "w").close()  # a create that fails before its mount
        os.unlink(path)
        assert mon.get(QUIET) is None


def test_named_create_and_delete(mon_dir: str, unique: str) -> None:
    with NamespaceMonitor([mon_dir]) as mon:
        with named.create(unique, run_dir=mon_dir) as h:
            ident = h.ns_id
        ev = next_of(mon, NAME_EVENTS)
        assert (ev.kind, ev.name, ev.ns_id, ev.initial) == (EventKind.ADDED, unique, ident, False)
        named.delete(unique, run_dir=mon_dir)
        ev = next_of(mon, NAME_EVENTS)
        assert (ev.kind, ev.name, ev.ns_id) == (EventKind.DELETED, unique, ident)


def test_a_name_remounted_with_another_namespace(mon_dir: str) -> None:
    path = os.path.join(mon_dir, "n")
    open(path, "w").close()
    first = mount_ns(path)
    with NamespaceMonitor([mon_dir], nsids=False) as mon:
        second = mount_ns(path)  # stacked on top: the name now means another namespace
        a, b = mon.get(5), mon.get(5)
        assert a is not None and b is not None
        assert (a.kind, a.ns_id, b.kind, b.ns_id) == (
            EventKind.DELETED,
            first,
            EventKind.ADDED,
            second,
        )
    unmount_tree(path)


def test_many_names_in_a_run_dir_with_a_space(run_dir: str) -> None:
    """Past the size where the mounts under the directory are listed first.

    A mount elsewhere changes nothing; one stacked on a name (no directory
    event) and its removal are seen.  The path has a space for good measure.
    """
    spaced = os.path.join(os.path.dirname(run_dir), "net ns")
    names = [f"n{i}" for i in range(70)]
    for n in names:
        named.create(n, run_dir=spaced).close()
    other = os.path.join(os.path.dirname(run_dir), "elsewhere")
    os.makedirs(other)
    try:
        with NamespaceMonitor([spaced], nsids=False) as mon:
            subprocess.run(["mount", "-t", "tmpfs", "none", other], check=True)
            subprocess.run(["umount", other], check=True)
            assert mon.get(QUIET) is None
            path = os.path.join(spaced, "n7")
            before = os.stat(path)
            stacked = mount_ns(path)  # another namespace on top: no directory event
            a, b = mon.get(5), mon.get(5)
            assert a is not None and b is not None
            assert (a.kind, a.name, a.ns_id) == (
                EventKind.DELETED,
                "n7",
                (before.st_dev, before.st_ino),
            )
            assert (b.kind, b.name, b.ns_id) == (EventKind.ADDED, "n7", stacked)
            subprocess.run(["umount", path], check=True)
            a, b = mon.get(5), mon.get(5)
            assert a is not None and b is not None
            assert (a.kind, a.ns_id, b.kind) == (EventKind.DELETED, stacked, EventKind.ADDED)
            named.delete("n3", run_dir=spaced)
            ev = next_of(mon, NAME_EVENTS)
            assert (ev.kind, ev.name) == (EventKind.DELETED, "n3")
            assert mon.get(QUIET) is None
    finally:
        for n in names:
            with contextlib.suppress(OSError):
                named.delete(n, run_dir=spaced)
        unmount_tree(spaced)


def test_initial_batch_then_nothing_missed(mon_dir: str) -> None:
    before = {}
    for i in range(5):
        p = os.path.join(mon_dir, f"old{i}")
        open(p, "w").close()
        before[f"old{i}"] = mount_ns(p)
    open(os.path.join(mon_dir, "stale"), "w").close()  # never reported
    made: dict[str, tuple[int, int]] = {}
    stop = threading.Event()

    def churn() -> None:  # keeps adding while the monitor starts
        i = 0
        while not stop.is_set() and i < 40:
            p = os.path.join(mon_dir, f"new{i}")
            open(p, "w").close()
            made[f"new{i}"] = mount_ns(p)
            i += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        time.sleep(0.05)
        mon = NamespaceMonitor([mon_dir], initial=True, nsids=False)
    finally:
        stop.set()
        t.join()
    with mon:
        seen: dict[str, tuple[int, int]] = {}
        initial = []
        while True:
            ev = mon.get(QUIET)
            if ev is None:
                break
            assert ev.kind is EventKind.ADDED and ev.name not in seen, ev
            assert ev.ns_id is not None
            seen[ev.name] = ev.ns_id
            initial.append(ev.initial)
        # The first batch is flagged, and nothing initial comes after a live event.
        assert initial == sorted(initial, reverse=True)
        assert all(initial[: len(before)])
    assert seen == before | made


def test_missing_run_dir_appears_goes_and_comes_back(run_dir: str) -> None:
    # run_dir's parent exists; make it two levels deep to exercise the ancestor watch.
    deep = os.path.join(run_dir, "a", "b")
    with NamespaceMonitor([deep], nsids=False) as mon:
        assert mon.get(0.1) is None
        os.makedirs(deep)
        p = os.path.join(deep, "x")
        open(p, "w").close()
        ident = mount_ns(p)
        ev = next_of(mon, NAME_EVENTS)
        assert (ev.kind, ev.name, ev.ns_id) == (EventKind.ADDED, "x", ident)
        # The whole directory goes (the mount with it): the name is deleted.
        subprocess.run(["umount", "-l", p], check=True)
        os.unlink(p)
        os.rmdir(deep)
        ev = next_of(mon, NAME_EVENTS)
        assert (ev.kind, ev.name) == (EventKind.DELETED, "x")
        os.makedirs(deep)
        p = os.path.join(deep, "y")
        open(p, "w").close()
        ident = mount_ns(p)
        ev = next_of(mon, NAME_EVENTS)
        assert (ev.kind, ev.name, ev.ns_id) == (EventKind.ADDED, "y", ident)


def test_a_run_dir_mounted_over_is_rescanned(mon_dir: str) -> None:
    p = os.path.join(mon_dir, "under")
    open(p, "w").close()
    ident = mount_ns(p)
    with NamespaceMonitor([mon_dir], initial=True, nsids=False) as mon:
        assert next_of(mon, NAME_EVENTS).name == "under"
        subprocess.run(["mount", "-t", "tmpfs", "none", mon_dir], check=True)
        ev = next_of(mon, NAME_EVENTS)
        assert (ev.kind, ev.name, ev.ns_id) == (EventKind.DELETED, "under", ident)
        q = os.path.join(mon_dir, "over")
        open(q, "w").close()
        ident2 = mount_ns(q)
        ev = next_of(mon, NAME_EVENTS)
        assert (ev.kind, ev.name, ev.ns_id) == (EventKind.ADDED, "over", ident2)


# -- bad input --------------------------------------------------------------


def test_run_dir_that_is_a_file(run_dir: str, fd_baseline: set[int]) -> None:
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    open(run_dir, "w").close()
    with pytest.raises(RunDirError) as e:
        NamespaceMonitor([run_dir])
    assert e.value.errno == errno.ENOTDIR and isinstance(e.value, OSError)
    assert run_dir in str(e.value)


def test_run_dir_symlink_loop(run_dir: str, fd_baseline: set[int]) -> None:
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    other = run_dir + "2"
    os.symlink(other, run_dir)
    os.symlink(run_dir, other)
    with pytest.raises(RunDirError) as e:
        NamespaceMonitor([run_dir])
    assert e.value.errno == errno.ELOOP


def test_unreadable_run_dir(mon_dir: str, fd_baseline: set[int]) -> None:
    os.chmod(mon_dir, 0)
    # Root reads anything; without these two capabilities (this thread only) it cannot.
    with (
        caps.drop_effective(CAP_DAC_OVERRIDE),
        caps.drop_effective(CAP_DAC_READ_SEARCH),
        pytest.raises(RunDirError) as e,
    ):
        NamespaceMonitor([mon_dir])
    assert e.value.errno == errno.EACCES


def test_nul_in_run_dir() -> None:
    with pytest.raises(RunDirError):
        NamespaceMonitor(["/run/ne\0tns"])


# -- ways to consume ---------------------------------------------------------


def test_close_from_another_thread_ends_iteration(mon_dir: str, fd_baseline: set[int]) -> None:
    # No nsid events: they are host-wide, and any would be a false "got".
    mon = NamespaceMonitor([mon_dir], nsids=False)
    got: list[object] = []
    t = threading.Thread(target=lambda: got.extend(mon))
    t.start()
    time.sleep(0.1)
    mon.close()
    t.join(5)
    assert not t.is_alive() and got == []
    assert mon.get() is None
    mon.close()  # idempotent


def test_close_from_another_thread_ends_async_iteration(
    mon_dir: str, fd_baseline: set[int]
) -> None:
    async def main() -> list[NamespaceEvent]:
        mon = NamespaceMonitor([mon_dir], nsids=False)
        threading.Timer(0.1, mon.close).start()
        return [ev async for ev in mon]

    assert asyncio.run(main()) == []


def test_async_iteration_gets_events(mon_dir: str) -> None:
    path = os.path.join(mon_dir, "x")

    async def main() -> NamespaceEvent:
        async with NamespaceMonitor([mon_dir], nsids=False) as mon:
            open(path, "w").close()
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(None, mount_ns, path)
            ev = await anext(mon)
            await fut
            return ev

    ev = asyncio.run(main())
    assert (ev.kind, ev.name) == (EventKind.ADDED, "x")


def test_async_iteration_loses_no_mount(mon_dir: str) -> None:
    # The mount table's change signal is one-shot: the async iterator must
    # not let the event loop's own poll consume it (it lost the ADDED here).
    async def main() -> list[tuple[EventKind, str]]:
        got = []
        async with NamespaceMonitor([mon_dir], nsids=False) as mon:
            loop = asyncio.get_running_loop()
            for i in range(40):
                path = os.path.join(mon_dir, f"n{i}")
                open(path, "w").close()
                fut = loop.run_in_executor(None, mount_ns, path)
                ev = await asyncio.wait_for(anext(mon), 10)
                await fut
                got.append((ev.kind, ev.name))
        return got

    got = asyncio.run(main())
    assert got == [(EventKind.ADDED, f"n{i}") for i in range(40)]


def test_callbacks_and_close_from_a_callback(mon_dir: str, fd_baseline: set[int]) -> None:
    seen: list[NamespaceEvent] = []
    done = threading.Event()

    def on_event(ev: NamespaceEvent) -> None:
        seen.append(ev)
        if ev.kind is EventKind.ADDED:
            mon.close()  # from the dispatcher thread itself
            done.set()

    def broken(ev: NamespaceEvent) -> None:
        raise RuntimeError("a broken subscriber")

    mon = NamespaceMonitor([mon_dir], nsids=False)
    mon.subscribe(broken)
    mon.subscribe(on_event)
    with pytest.raises(RuntimeError):
        next(iter(mon))  # one stream: callbacks have it
    p = os.path.join(mon_dir, "cb")
    open(p, "w").close()
    mount_ns(p)
    assert done.wait(5)
    assert [e.name for e in seen] == ["cb"]
    with pytest.raises(RuntimeError):
        mon.subscribe(on_event)


# -- nsids -------------------------------------------------------------------


def test_nsid_events_name_the_namespace(mon_dir: str, unique: str) -> None:
    with NamespaceMonitor([mon_dir]) as mon:
        named.create(unique, run_dir=mon_dir).close()
        added = next_of(mon, NAME_EVENTS)
        assert added.nsid is None
        subprocess.run(
            ["ip", "netns", "set", os.path.join(mon_dir, unique), "auto"],
            check=False,
            capture_output=True,
        )
        # `ip netns set` only takes names in /run/netns: assign through nslib's own netlink.
        from nslib._nsid import NSID_AUTO, Rtnl

        fd = os.open(os.path.join(mon_dir, unique), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with Rtnl() as r:
                r.set(fd, NSID_AUTO, "test")
                nsid = r.get(fd)
        finally:
            os.close(fd)
        ev = next_of(mon, (EventKind.NSID_ADDED,), name=unique)
        assert (ev.name, ev.nsid, ev.ns_id) == (unique, nsid, added.ns_id)
        named.delete(unique, run_dir=mon_dir)  # the last holder: the namespace dies
        ev = next_of(mon, (EventKind.DELETED,))
        assert ev.nsid == nsid
        ev = next_of(mon, (EventKind.NSID_DELETED,), name=unique)
        assert (ev.name, ev.nsid) == (unique, nsid)


# -- side by side with `ip netns monitor` -------------------------------------


class _Lines:
    """A process's stdout lines, read on a thread; wait for one by predicate."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode("utf-8", "surrogateescape").rstrip("\n"))
                self.cond.notify_all()

    def saw(self, text: str, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: any(text in line for line in self.lines), timeout)

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        assert self.saw(text, timeout), f"{self.proc.args}: no {text!r}; got {self.lines[-5:]}"

    def stop(self) -> list[str]:
        self.proc.terminate()
        self.proc.wait(10)
        self.thread.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.lines


@pytest.mark.slow
def test_side_by_side_with_ip_netns_monitor() -> None:
    """200 random adds and deletes in the host's /run/netns, from 4 nslib threads and 2 `ip` loops.

    `nslib monitor --json` and `ip netns monitor` run as two processes, side
    by side.  Each actor owns its names and never touches one of the two
    names it touched last, so a name stays mounted for at least two other
    operations.  The monitor must report every operation exactly once: a
    mount made and removed between two of its looks as an unidentified
    pair, never an extra pair or an event twice.  A sentinel name, seen by
    both monitors, marks the start and the end.
    """
    rnd = random.Random()
    prefix = f"{PREFIX}m{uuid.uuid4().hex[:3]}"
    actors = 6
    names = [[f"{prefix}{a}x{i}" for i in range(5)] for a in range(actors)]
    plans = []
    for a in range(actors):
        state = dict.fromkeys(names[a], False)
        plan: list[tuple[str, bool]] = []
        recent: list[str] = []
        for _ in range(200 // actors + 1):
            name = rnd.choice([n for n in names[a] if n not in recent[-2:]])
            plan.append((name, not state[name]))
            state[name] = not state[name]
            recent.append(name)
        plan += [(n, False) for n, up in state.items() if up]  # leave nothing behind
        plans.append(plan)

    def nslib_actor(plan: list[tuple[str, bool]]) -> None:
        for name, add in plan:
            if add:
                named.create(name).close()
            else:
                named.delete(name)

    def ip_script(plan: list[tuple[str, bool]]) -> str:
        return "\n".join(f"netns {'add' if add else 'del'} {name}" for name, add in plan) + "\n"

    sentinels: list[str] = []
    # Line-buffered: ip writes with printf and would lose its buffer on SIGTERM.
    ip_mon = _Lines(["stdbuf", "-oL", "ip", "netns", "monitor"])
    ns_mon = _Lines(
        [sys.executable, "-m", "nslib.cli", "--run-dir", "/run/netns", "monitor", "--json"]
    )
    try:
        # Both watching: a sentinel name both have reported (made again until they are up).
        for k in range(60):
            sentinels.append(f"{prefix}s{k}")
            named.create(sentinels[-1]).close()
            if ip_mon.saw(f"add {sentinels[-1]}", 0.5) and ns_mon.saw(
                f'"name": "{sentinels[-1]}"', 0.5
            ):
                break
        else:
            pytest.fail("the two monitors never both reported a sentinel")
        threads = [threading.Thread(target=nslib_actor, args=(plans[a],)) for a in range(4)]
        for t in threads:
            t.start()
        procs = []
        for a in (4, 5):
            p = subprocess.Popen(["ip", "-batch", "-"], stdin=subprocess.PIPE, text=True)
            assert p.stdin is not None
            p.stdin.write(ip_script(plans[a]))
            p.stdin.close()
            procs.append(p)
        for t in threads:
            t.join()
        for p in procs:
            assert p.wait(60) == 0
        last = sentinels[-1]
        named.delete(last)  # after everything: when both saw it, they saw the rest
        ip_mon.wait_for(f"delete {last}")
        ns_mon.wait_for(f'"event": "delete", "name": "{last}"')
    finally:
        ip_lines = ip_mon.stop()
        ns_lines = ns_mon.stop()
        for n in [*sentinels, *(n for ns in names for n in ns)]:
            with contextlib.suppress(OSError):
                named.delete(n)
    theirs: dict[str, list[str]] = defaultdict(list)
    for line in ip_lines:
        kind, _, name = line.partition(" ")
        if name.startswith(prefix) and name not in sentinels:
            theirs[name].append(kind)
    ours: dict[str, list[str]] = defaultdict(list)
    for line in ns_lines:
        ev = json.loads(line)
        name = ev["name"]
        if ev["event"] in ("add", "delete") and name.startswith(prefix) and name not in sentinels:
            assert ev["run_dir"] == "/run/netns"
            # ns_id None: mounted and unmounted between two looks of the monitor,
            # reported as a pair that cannot be identified any more.
            ours[name].append(ev["event"] + ("?" if ev["ns_id"] is None else ""))
    for name, kinds in ours.items():
        text = " ".join(kinds)
        assert "add?" not in text.replace("add? delete?", ""), (name, kinds)
    expected = {
        n: ["add" if add else "delete" for m, add in plan if m == n]
        for plan in plans
        for n in {m for m, _ in plan}
    }
    assert dict(theirs) == expected  # ip netns monitor itself saw every operation
    wrong = {n: (ours.get(n), e) for n, e in expected.items() if not _aligns(ours.get(n, []), e)}
    lines = [ln for ln in ns_lines if any(n in ln for n in wrong)]
    assert not wrong, f"monitor events differ (got, expected): {wrong}; its lines: {lines}"


def _aligns(ours: list[str], expected: list[str]) -> bool:
    """Whether *ours* reports exactly *expected*: every operation once, in order, nothing extra.

    An unidentified pair ("add? delete?": a namespace mounted and unmounted
    between two looks of the monitor) stands for the one add and the one
    delete it reports, never for nothing.
    """
    return [kind.rstrip("?") for kind in ours] == expected


# -- the configurator waits on the monitor ------------------------------------------------


def test_configurator_sees_a_named_namespace_without_polling(plugin, run_dir, unique) -> None:  # type: ignore[no-untyped-def]
    """A poll that never ticks: only the monitor can tell the configurator."""
    from nslib import NetNamespace
    from nslib.configurator import Configurator, ItemStatus

    with Configurator(plugin, poll_interval=3600) as conf:
        veth = conf.add_veth("nlt-mw0", "nlt-mw0p", ns=NetNamespace.named(unique))
        assert veth.status is ItemStatus.PENDING
        with named.create(unique, run_dir=run_dir):
            veth.wait(ItemStatus.APPLIED, timeout=10)
        named.delete(unique, run_dir=run_dir)
        veth.wait(ItemStatus.PENDING, timeout=10)  # the name went: waiting again


def test_configurator_sees_a_pid_exit_through_a_pidfd(plugin) -> None:  # type: ignore[no-untyped-def]
    from nslib import NetNamespace
    from nslib.configurator import Configurator, ItemStatus

    proc = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while os.stat(f"/proc/{proc.pid}/ns/net") == os.stat("/proc/self/ns/net"):
            assert time.monotonic() < deadline
            time.sleep(0.01)  # until unshare has made its namespace
        with Configurator(plugin, poll_interval=3600) as conf:
            veth = conf.add_veth("nlt-mp0", "nlt-mp0p", ns=NetNamespace.pid(proc.pid))
            assert veth.status is ItemStatus.APPLIED
            proc.kill()
            proc.wait()
            veth.wait(ItemStatus.PENDING, timeout=10)
    finally:
        proc.kill()
        proc.wait()


def test_wait_for_name_ends_with_the_mount(mon_dir: str) -> None:
    from nslib.monitor import wait_for_name

    path = os.path.join(mon_dir, "soon")
    open(path, "w").close()
    assert wait_for_name("soon", run_dir=mon_dir, timeout=0.1) is False  # a placeholder only
    t = threading.Timer(0.2, mount_ns, args=(path,))
    t.start()
    try:
        assert wait_for_name("soon", run_dir=mon_dir, timeout=10) is True
    finally:
        t.join()
    assert wait_for_name("soon", run_dir=mon_dir, timeout=0) is True  # already mounted


def test_plugin_lookup_waits_for_a_mount_in_progress(plugin, run_dir) -> None:  # type: ignore[no-untyped-def]
    from nslib import NetNamespace

    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "racing")
    open(path, "w").close()  # another creator's placeholder, its mount still to come
    t = threading.Timer(0.2, mount_ns, args=(path,))
    t.start()
    try:
        with plugin.get_namespace_handle(NetNamespace.named("racing"), timeout=10) as h:
            assert h.ns_id == (os.stat(path).st_dev, os.stat(path).st_ino)
    finally:
        t.join()


def test_cli_prints_like_ip_netns_monitor_and_escapes(mon_dir: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nslib.cli", "--run-dir", mon_dir, "monitor"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None and "watching" in proc.stderr.readline()
        path = os.path.join(mon_dir, "evil\x1b[2J")
        open(path, "w").close()
        ident = mount_ns(path)
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0  # SIGTERM is the normal way to stop
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    escaped = os.path.join(mon_dir, "evil\\x1b[2J")
    assert line == f"add {escaped}  nsid -  net:[{ident[1]}]\n"
