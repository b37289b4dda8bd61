"""Namespace names and the run directory, as ``ip netns`` defines them."""

from __future__ import annotations

import os

from .errors import InvalidName, InvalidReference

__all__ = ["DEFAULT_RUN_DIR", "NAME_MAX", "validate_name", "validate_run_dir"]

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


#: Directories that are never a run directory: the root itself, and the
#: kernel's pseudo filesystems (and everything under them), whose mounts a
#: "named namespace" operation would otherwise reshare, cover or remove.
_NOT_RUN_DIRS = ("/proc", "/sys", "/dev")


def validate_run_dir(run_dir: str | os.PathLike[str] | None) -> str:
    """Return the run directory to use (*run_dir*, or the default) if it is sane.

    Refused, before anything touches the filesystem: the empty string (it
    would mean the current directory), ``/``, ``/proc``, ``/sys``, ``/dev``
    and every path under the last three, whether written so or reached
    through ``..`` or a symlink, and paths with a NUL byte.

    :raises InvalidReference: the directory is refused (also a ``ValueError``).
    """
    if run_dir is None:
        return DEFAULT_RUN_DIR
    try:
        d = os.fspath(run_dir)
    except TypeError:
        raise InvalidReference(f"run_dir must be a path, not {type(run_dir).__name__}") from None
    if not isinstance(d, str):
        raise InvalidReference(f"run_dir must be a str path, not {type(d).__name__}")
    if not d:
        raise InvalidReference(
            "run_dir is empty (it would mean the current directory); refusing it"
        )
    if "\0" in d:
        raise InvalidReference(f"run_dir contains a NUL byte: {d!r}")
    try:
        os.fsencode(d)
    except UnicodeEncodeError:
        raise InvalidReference(f"run_dir cannot be encoded as a file name: {d!r}") from None
    for form in {os.path.normpath(os.path.abspath(d)), os.path.realpath(d)}:
        if form == "/":
            raise InvalidReference(f"run_dir {d!r} is the root directory; refusing it")
        for bad in _NOT_RUN_DIRS:
            if form == bad or form.startswith(bad + "/"):
                raise InvalidReference(
                    f"run_dir {d!r} is inside {bad}, a kernel filesystem; refusing it"
                )
    return d
