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
import random
import re
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from helpers import PREFIX

from nslib import NetNamespace
from nslib import named as nsids
from nslib.errors import InvalidReference, NamespaceNotFound, NslibError

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
