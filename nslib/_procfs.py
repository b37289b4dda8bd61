"""Small facts about ``/proc`` that several modules need (private).

Kept in one place so that named namespaces, the inventory and the
configurator agree on what "a mounted namespace" and "a mount point" are.
"""

from __future__ import annotations

import os
import re

__all__ = ["nsfs_dev", "unescape_mount_field"]

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


def unescape_mount_field(field: bytes) -> str:
    r"""A path field of ``mountinfo``, unescaped and decoded like any file name.

    The kernel writes space, tab, newline and backslash as ``\ooo`` (octal);
    other bytes are raw, hence bytes in and ``os.fsdecode`` out.
    """
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field))
