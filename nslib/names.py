"""Namespace names and the run directory, as ``ip netns`` defines them."""

from __future__ import annotations

import os

from .errors import InvalidName

__all__ = ["DEFAULT_RUN_DIR", "NAME_MAX", "validate_name"]

#: Where ``ip netns`` keeps its bind mounts (``/var/run/netns`` reaches it too).
DEFAULT_RUN_DIR = "/run/netns"
NAME_MAX = 255


def validate_name(name: str) -> str:
    """Return *name* if ``ip netns`` would accept it, else raise ``InvalidName``.

    The rules are iproute2's ``invalid_name()``: not empty, not ``.`` or
    ``..``, no ``/``, at most NAME_MAX bytes; nslib also refuses NUL bytes.
    Nothing touches the filesystem.
    """
    if not isinstance(name, str):
        raise InvalidName(f"namespace name must be a str, not {type(name).__name__}")
    if not name:
        raise InvalidName("namespace name is empty")
    if name in (".", ".."):
        raise InvalidName(f"namespace name {name!r} is not allowed")
    if "/" in name:
        raise InvalidName(f"namespace name {name!r} contains '/'")
    if "\0" in name:
        raise InvalidName(f"namespace name {name!r} contains a NUL byte")
    try:
        raw = os.fsencode(name)
    except UnicodeEncodeError:
        raise InvalidName(f"namespace name {name!r} cannot be encoded as a file name") from None
    if len(raw) > NAME_MAX:
        raise InvalidName(f"namespace name is longer than {NAME_MAX} bytes: {name[:20]!r}...")
    return name
