"""nsids against iproute2: ``ip netns set`` / ``list-id`` and nslib's, both ways, on the host.

``ip netns`` only knows ``/run/netns``, so these tests use the host's run
directory with the suite's prefix and delete their names afterwards.  The
host's own nsid table is shared with whatever else runs, so comparisons are
restricted to the suite's namespaces, and numbers are drawn from a range
nothing else here uses.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import PREFIX

import nslib
from nslib import NetNamespace, NsHandle, named
from nslib import named as nsids
from nslib._nsid import Rtnl
from nslib.errors import InvalidReference, NamespaceNotFound, NslibError
from nslib.inventory import inventory

pytestmark = pytest.mark.root

_LINE = re.compile(r"^nsid (\d+)(?: current-nsid \d+)? ?(?:\(iproute2 netns name: (.*)\))?$")


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def ip_list_ids(viewer: str | None) -> dict[int, str | None]:
    """``ip [-n viewer] netns list-id``, parsed."""
    res = ip(*(["-n", viewer] if viewer else []), "netns", "list-id")
    assert res.returncode == 0, res.stderr
    out: dict[int, str | None] = {}
    for line in res.stdout.splitlines():
        m = _LINE.match(line.strip())
        assert m, f"unexpected ip output: {line!r}"
        out[int(m.group(1))] = m.group(2)
    return out


@pytest.fixture
def host_names() -> Iterator[list[str]]:
    """Four fresh names in /run/netns, made by `ip netns add`, deleted afterwards."""
    tag = uuid.uuid4().hex[:4]
    names = [f"{PREFIX}i{tag}{i}" for i in range(4)]
    try:
        for n in names:
            assert ip("netns", "add", n).returncode == 0
        yield names
    finally:
        for n in names:
            ip("netns", "del", n)


def ours(ids: dict[int, str | None], names: list[str]) -> dict[int, str | None]:
    return {k: v for k, v in ids.items() if v in names}


def test_random_nsid_changes_agree_with_ip_both_ways(host_names: list[str]) -> None:
    rnd = random.Random()
    base = 1_500_000 + rnd.randrange(100_000) * 10  # far from what anything else assigns
    viewers: list[str | None] = [None, host_names[0]]
    for step in range(12):
        viewer = rnd.choice(viewers)
        target = rnd.choice(host_names)
        value: int | str = rnd.choice(["auto", base + step])
        by_ip = rnd.random() < 0.5
        if by_ip:
            res = ip(*(["-n", viewer] if viewer else []), "netns", "set", target, str(value))
            ip_ok = res.returncode == 0
            assert ip_ok or "already" in res.stderr or "exists" in res.stderr, res.stderr
        else:
            ns = NetNamespace.named(viewer) if viewer else None
            try:
                got = nsids.set_nsid(target, value, ns=ns)  # type: ignore[arg-type]
            except nsids.NsidTaken as e:
                assert e.errno == errno.EEXIST and isinstance(e, NslibError | FileExistsError)
            else:
                if value != "auto":
                    assert got == value
        for v in viewers:
            ns = NetNamespace.named(v) if v else None
            theirs = ours(ip_list_ids(v), host_names)
            assert ours(nsids.list_ids(ns=ns), host_names) == theirs
            for n in host_names:
                expect = next((k for k, name in theirs.items() if name == n), None)
                assert nsids.nsid(n, ns=ns) == expect


def test_nsid_taken_and_already_assigned(host_names: list[str]) -> None:
    a, b = host_names[0], host_names[1]
    value = 1_400_000 + random.randrange(100_000)
    assert nsids.set_nsid(a, value) == value
    with pytest.raises(nsids.NsidTaken) as e:
        nsids.set_nsid(b, value)  # the number is a's
    assert e.value.errno == errno.EEXIST and "already used" in str(e.value)
    assert "already" in ip("netns", "set", b, str(value)).stderr  # ip refuses it too
    with pytest.raises(nsids.NsidTaken) as e:
        nsids.set_nsid(a, "auto")  # a has one: never changed
    assert "already has" in str(e.value)
    assert nsids.nsid(a) == value and nsids.nsid(b) is None


@pytest.mark.parametrize("bad", [-1, 2**31, True, "3", 1.0, None])
def test_bad_nsid_values(host_names: list[str], bad: object) -> None:
    with pytest.raises(InvalidReference):
        nsids.set_nsid(host_names[0], bad)  # type: ignore[arg-type]


def test_missing_name(unique: str) -> None:
    with pytest.raises(NamespaceNotFound):
        nsids.nsid(unique)
    with pytest.raises(NamespaceNotFound):
        nsids.set_nsid(unique, "auto")


def test_list_ids_names_only_what_is_named(host_names: list[str], run_dir: str) -> None:
    # A namespace with an nsid but no name in the run directory that is asked.
    value = nsids.set_nsid(host_names[2], "auto")
    assert nsids.list_ids(run_dir=run_dir).get(value, "absent") is None
    assert nsids.list_ids()[value] == host_names[2]
    with contextlib.suppress(FileNotFoundError):
        assert nsids.list_ids(run_dir="/nonexistent/netns").get(value, "absent") is None


# -- the NSID column of `nslib ls` -----------------------------------------------------


def ls_json(*args: str, inside: str | None = None) -> list[dict[str, Any]]:
    """The rows of ``nslib ls --json --no-docker``, run as a process (inside *inside*)."""
    cmd = [sys.executable, "-m", "nslib.cli", "ls", "--json", "--no-docker", *args]
    if inside:
        cmd = ["ip", "netns", "exec", inside, *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    rows: list[dict[str, Any]] = json.loads(res.stdout)["namespaces"]
    return rows


def by_ns_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["ns_id"]: r for r in rows if r["ino"]}


def key_of(path_or_handle: str | NsHandle) -> str:
    if isinstance(path_or_handle, NsHandle):
        dev, ino = path_or_handle.ns_id
    else:
        st = os.stat(path_or_handle)
        dev, ino = st.st_dev, st.st_ino
    return f"{dev}:{ino}"


def test_ls_nsid_is_right_for_every_namespace(host_names: list[str], run_dir: str) -> None:
    """Named or not, held by a mount, an fd or only a socket: the caller's nsid, or null."""
    a, b, _c, _d = host_names  # c and d get no nsid
    base = 1_600_000 + random.randrange(100_000) * 10
    assert ip("netns", "set", a, str(base)).returncode == 0
    assert ip("netns", "set", b, "auto").returncode == 0
    # A name only nslib knows (a private run directory), with an nsid set by nslib.
    private = f"{PREFIX}p{uuid.uuid4().hex[:6]}"
    named.create(private, run_dir=run_dir).close()
    assert nsids.set_nsid(private, base + 1, run_dir=run_dir) == base + 1
    with (
        NsHandle.new() as fd_with,
        NsHandle.new() as fd_without,
        NsHandle.new() as sock_ns,
        Rtnl() as rtnl,
    ):
        rtnl.set(fd_with.fileno(), base + 2, "an fd-held namespace")
        rtnl.set(sock_ns.fileno(), base + 3, "a socket-held namespace")
        sock = nslib.socket_in(sock_ns, socket.AF_INET, socket.SOCK_DGRAM)
        sock_key = key_of(sock_ns)
        sock_ns.close()  # from now on only the socket holds it
        try:
            rows = ls_json("--sockets")
            theirs = ip_list_ids(None)
        finally:
            sock.close()
        got = by_ns_id(rows)
        for name in host_names:
            expect = next((k for k, n in theirs.items() if n == name), None)
            assert got[key_of(f"/run/netns/{name}")]["nsid"] == expect, name
        assert got[key_of(f"/run/netns/{a}")]["nsid"] == base
        assert got[key_of(os.path.join(run_dir, private))]["nsid"] == base + 1
        assert got[key_of(fd_with)]["nsid"] == base + 2
        assert got[key_of(fd_with)]["names"] == [] and base + 2 in theirs  # ip lists it, unnamed
        assert got[key_of(fd_without)]["nsid"] is None
        assert got[sock_key]["held_by"] == ["sockets"] and got[sock_key]["nsid"] == base + 3
    # Each nsid on exactly one row: none left over as an "nsid only" row of its own.
    ours = {base, base + 1, base + 2, base + 3}
    listed = [r["nsid"] for r in rows if r["nsid"] in ours]
    assert sorted(listed) == sorted(ours)


def test_ls_nsid_is_relative_to_the_calling_thread(host_names: list[str]) -> None:
    a, b, c, _d = host_names
    assert ip("-n", a, "netns", "set", b, "7").returncode == 0  # in a's table only
    assert ip("netns", "set", c, "auto").returncode == 0  # in the host's table only
    theirs = ip_list_ids(a)
    keys = {n: key_of(f"/run/netns/{n}") for n in host_names}

    def expected(name: str) -> int | None:
        return next((k for k, n in theirs.items() if n == name), None)

    # A process inside a: `ip netns exec a nslib ls`.
    got = by_ns_id(ls_json(inside=a))
    for name in (b, c):
        assert got[keys[name]]["nsid"] == expected(name), name
    assert got[keys[b]]["nsid"] == 7 and got[keys[c]]["nsid"] is None
    assert got[keys[a]]["current"]
    # A thread of this process switched into a: the API says the same.
    with nslib.entered(NetNamespace.named(a)):
        inv = inventory(docker=False)
    mine = {f"{n.dev}:{n.ino}": n.nsid for n in inv if n.ino}
    assert mine[keys[b]] == 7 and mine[keys[c]] is None
    # And from the host, c has one and b none.
    host = by_ns_id(ls_json())
    assert host[keys[c]]["nsid"] is not None and host[keys[b]]["nsid"] is None
