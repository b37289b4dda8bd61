"""A hostile host state for a whole test run (session fixture material).

:func:`hostile_host_state` puts on the host, for as long as it is entered:

- a tmpfs mounted at a path whose name holds a byte that is not UTF-8
  (``\\xff``), a terminal escape sequence, a newline and a space, under a
  fresh temporary directory: every ``mountinfo`` reader meets it;
- a named network namespace with an escape-laden name in a temporary run
  directory: every inventory (``nslib ls``) meets it.

It removes both on exit, even after a failure.  Everything lives under one
``tempfile.mkdtemp`` directory; nothing else on the host changes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from nslib import named
from nslib._procfs import read_mountinfo

#: A mount path component: not UTF-8, an OSC title escape, a newline, a space.
HOSTILE_DIR = b"mnt-\xff-\x1b]0;pwned\x07-\n-x y"
#: A namespace name: a CSI clear-screen, a newline that would forge a row, a bell.
HOSTILE_NAME = "ns-\x1b[2J\nFORGED ROW\x07-" + os.fsdecode(b"\xfe")


@dataclass(frozen=True)
class HostileState:
    base: str
    mount_point: bytes
    run_dir: str
    name: str


def _mounts_below(base: bytes) -> list[bytes]:
    return [m.mount_point for m in read_mountinfo() if m.mount_point.startswith(base + b"/")]


@contextlib.contextmanager
def hostile_host_state() -> Iterator[HostileState]:
    """Enter to create the hostile state, leave to remove it (see the module)."""
    base = tempfile.mkdtemp(prefix="nslib-hostile-")
    raw_base = os.fsencode(base)
    point = os.path.join(raw_base, HOSTILE_DIR)
    run_dir = os.path.join(base, "netns")
    os.mkdir(point)
    try:
        subprocess.run([b"mount", b"-t", b"tmpfs", b"hostile", point], check=True)
        named.create(HOSTILE_NAME, run_dir=run_dir).close()
        yield HostileState(base, point, run_dir, HOSTILE_NAME)
    finally:
        with contextlib.suppress(OSError):
            named.delete(HOSTILE_NAME, run_dir=run_dir)
        for mp in sorted(_mounts_below(raw_base), key=len, reverse=True):
            subprocess.run([b"umount", b"-l", mp], check=False, capture_output=True)
        shutil.rmtree(raw_base, ignore_errors=True)
