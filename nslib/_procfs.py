"""Small facts about ``/proc`` that several modules need (private).

Kept in one place so that named namespaces, the inventory, the configurator,
the tests and the benchmarks agree on what "a mounted namespace" and "a
mount point" are, and all read ``mountinfo`` the same way: as bytes.  A
mount path is whatever bytes a user gave ``mount(8)``; decoding it (even
with ``surrogateescape``) belongs to whoever prints it, never to the parser.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

__all__ = [
    "MountInfo",
    "nsfs_dev",
    "parse_mountinfo",
    "read_mountinfo",
    "unescape",
    "unescape_mount_field",
]

_nsfs: int | None = None


def nsfs_dev() -> int:
    """``st_dev`` of nsfs, the one internal filesystem every namespace file is on.

    A ``stat()`` whose ``st_dev`` is this means "a namespace is mounted (or
    opened) here"; a placeholder file not yet bind-mounted has its own
    filesystem's device.  Read once: the superblock never changes.
    """
    global _nsfs
    if _nsfs is None:
        _nsfs = os.stat("/proc/thread-self/ns/net").st_dev
    return _nsfs


_OCTAL = re.compile(rb"\\([0-7]{3})")


def unescape(field: bytes) -> bytes:
    r"""A ``mountinfo`` field with the kernel's ``\ooo`` escapes undone.

    The kernel writes space, tab, newline and backslash as three octal
    digits; every other byte (including invalid UTF-8) is written raw.
    """
    if b"\\" not in field:
        return field
    return _OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field)


def unescape_mount_field(field: bytes) -> str:
    r"""A path field of ``mountinfo``, unescaped and decoded like any file name.

    ``os.fsdecode`` (surrogateescape) keeps undecodable bytes round-trippable;
    prefer :func:`read_mountinfo`, which never decodes.
    """
    return os.fsdecode(unescape(field))


@dataclass(frozen=True, slots=True)
class MountInfo:
    """One line of ``/proc/<pid>/mountinfo`` (see proc(5)), fields as bytes.

    Path-like fields (*root*, *mount_point*, *source*, ...) are unescaped
    bytes exactly as the kernel knows them.  For an nsfs mount of a
    namespace, *root* is e.g. ``b"net:[4026531840]"``.
    """

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: bytes
    mount_point: bytes
    options: bytes
    optional: tuple[bytes, ...]
    fstype: bytes
    source: bytes
    super_options: bytes

    def _tag(self, prefix: bytes) -> int | None:
        for tag in self.optional:
            if tag.startswith(prefix):
                try:
                    return int(tag[len(prefix) :])
                except ValueError:
                    return None
        return None

    @property
    def shared_peer(self) -> int | None:
        """The peer group this mount shares propagation with (``shared:N``)."""
        return self._tag(b"shared:")

    @property
    def master_peer(self) -> int | None:
        """The peer group this mount receives propagation from (``master:N``)."""
        return self._tag(b"master:")

    @property
    def ns_root(self) -> tuple[bytes, int] | None:
        """``(kind, inode)`` when this is an nsfs mount of a namespace file.

        E.g. ``(b"net", 4026532001)`` for a named network namespace.
        """
        if self.fstype != b"nsfs":
            return None
        m = _NS_ROOT.fullmatch(self.root)
        if m is None:
            return None
        return m.group(1), int(m.group(2))


_NS_ROOT = re.compile(rb"/?([a-z_]+):\[([0-9]+)\]")


def _parse_line(line: bytes) -> MountInfo | None:
    # Fields are separated by exactly one space; a field may be empty (a
    # mount whose source was given as ""), so never split() on runs.
    parts = line.split(b" ")
    try:
        sep = parts.index(b"-", 6)
        major, _, minor = parts[2].partition(b":")
        return MountInfo(
            mount_id=int(parts[0]),
            parent_id=int(parts[1]),
            major=int(major),
            minor=int(minor),
            root=unescape(parts[3]),
            mount_point=unescape(parts[4]),
            options=parts[5],
            optional=tuple(parts[6:sep]),
            fstype=unescape(parts[sep + 1]),
            source=unescape(parts[sep + 2]),
            super_options=unescape(b" ".join(parts[sep + 3 :])),
        )
    except (ValueError, IndexError):
        return None  # not a mountinfo line; never let one bad line hide the rest


def parse_mountinfo(data: bytes) -> list[MountInfo]:
    """Every mount described by the ``mountinfo`` text *data*, in file order.

    Later entries are mounted on top of earlier ones at the same point.
    Malformed lines are skipped.  Nothing is decoded.
    """
    out = []
    for line in data.split(b"\n"):
        if line:
            m = _parse_line(line)
            if m is not None:
                out.append(m)
    return out


def read_mountinfo(path: str | bytes = "/proc/thread-self/mountinfo") -> list[MountInfo]:
    """Parse a ``mountinfo`` file (by default the calling thread's mount namespace).

    :raises OSError: the file cannot be read (``ESRCH``/``ENOENT`` for a
        process that exited, ``EACCES`` for one we may not inspect).
    """
    with open(path, "rb", buffering=0) as f:
        chunks = []
        while True:
            chunk = f.read(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    return parse_mountinfo(b"".join(chunks))
