"""``nslib ls --kind KIND|all`` and ``nslib exec --target PID ...`` (see :mod:`nslib.cli`).

``nslib exec`` with ``--target`` or any kind flag mirrors ``nsenter``:

    nslib exec --target PID --all -- CMD...       every namespace of PID (nsenter -a -t PID)
    nslib exec --target PID --net --uts -- CMD... some of them
    nslib exec --net=/run/netns/blue --uts=/proc/42/ns/uts -- CMD...   by file
    nslib exec -t PID --all --root --wd -- CMD... also PID's root and working directory

It runs CMD as a child (through :func:`nslib.spawn.popen`, so no process is
left in between even for a PID namespace), waits, and exits with CMD's own
status: 128+N when CMD was killed by signal N, 127 when it was not found,
126 when it could not be executed, and 125 when nslib failed before (a
namespace it could not join is named).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import subprocess
from typing import Any

from .cli import (
    EXIT_CANNOT_EXECUTE,
    EXIT_EXEC_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    _json,
    _safe,
    _shorten,
    _table,
)
from .kinds import ALL_KINDS, NsKind

__all__ = ["add_exec_options", "cmd_exec_kinds", "cmd_ls_kinds", "kind_flags_given"]

_KIND_CHOICES = [k.proc_name for k in ALL_KINDS] + ["all"]


def kind_choices() -> list[str]:
    """What ``nslib ls --kind`` accepts."""
    return list(_KIND_CHOICES)


# -- ls ---------------------------------------------------------------------------


def cmd_ls_kinds(args: argparse.Namespace) -> int:
    """``nslib ls --kind KIND|all``: every namespace of that kind, as ``lsns`` and more."""
    from .lsns import namespaces

    kinds = None if args.kind == "all" else [args.kind]
    listing = namespaces(kinds)
    if args.json:
        _json(listing.to_dict())
        return EXIT_OK
    rows = []
    for e in listing:
        holders = []
        for m in e.mounts:
            holders.append(m.path if m.via_pid is None else f"{m.path} (mnt ns of pid {m.via_pid})")
        if e.threads:
            holders.append(f"{len(e.threads)} thread(s)")
        holders += [f"fd {f.pid}:{f.fd}" for f in e.fds]
        if len(holders) > 3:
            holders = [*holders[:3], f"+{len(holders) - 3} more"]
        rows.append(
            [
                str(e.ino),
                e.kind.proc_name,
                str(e.nprocs),
                "-" if e.pid is None else str(e.pid),
                e.user or "-",
                "-" if e.nsid is None else str(e.nsid),
                ", ".join(holders) or "-",
                _shorten(e.command or "-", 60),
            ]
        )
    # _table escapes every cell: commands and paths are untrusted.
    _table(["NS", "TYPE", "NPROCS", "PID", "USER", "NSID", "ALSO HELD BY", "COMMAND"], rows)
    return EXIT_OK


# -- exec ---------------------------------------------------------------------------


def add_exec_options(ex: argparse.ArgumentParser) -> None:
    """The ``nsenter``-style options of ``nslib exec``."""
    ex.add_argument(
        "-t", "--target", type=int, metavar="PID", help="take namespaces from process PID"
    )
    for kind in ALL_KINDS:
        ex.add_argument(
            f"--{kind.proc_name}",
            dest=f"ns_{kind.proc_name}",
            nargs="?",
            const="",
            default=None,
            metavar="FILE",
            help=f"enter the {kind.proc_name} namespace (of --target, or FILE)",
        )
    ex.add_argument(
        "--root", nargs="?", const="", default=None, metavar="DIR",
        help="chroot: the target's root, or DIR",
    )  # fmt: skip
    ex.add_argument(
        "--wd", nargs="?", const="", default=None, metavar="DIR",
        help="working directory: the target's, or DIR (inside)",
    )  # fmt: skip
    ex.add_argument(
        "--preserve-credentials",
        action="store_true",
        help="with a user namespace, keep uid/gid/groups (do not become root in it)",
    )


def kind_flags_given(args: argparse.Namespace) -> bool:
    """Whether ``nslib exec`` was called the ``nsenter`` way."""
    return getattr(args, "target", None) is not None or any(
        getattr(args, f"ns_{k.proc_name}", None) is not None for k in ALL_KINDS
    )


def _namespaces(args: argparse.Namespace) -> Any:
    from .kinds import Target

    given = {k: getattr(args, f"ns_{k.proc_name}") for k in ALL_KINDS}
    chosen = {k: v for k, v in given.items() if v is not None}
    if args.all:
        if args.target is None:
            raise CliError("exec: --all with kinds needs --target PID", EXIT_USAGE)
        if any(chosen.values()):
            raise CliError("exec: --all takes no FILE for a kind", EXIT_USAGE)
        return Target(args.target)
    if not chosen:
        raise CliError("exec: --target needs --all or a kind (--net, --mnt, ...)", EXIT_USAGE)
    if all(v == "" for v in chosen.values()) and args.target is not None:
        return Target(args.target, kinds=list(chosen))
    mapping: dict[NsKind, Any] = {}
    for kind, value in chosen.items():
        if value == "":
            if args.target is None:
                raise CliError(f"exec: --{kind.proc_name} without FILE needs --target", EXIT_USAGE)
            value = f"/proc/{args.target}/ns/{kind.proc_name}"
        mapping[kind] = value
    return mapping


def cmd_exec_kinds(args: argparse.Namespace, cmd: list[str]) -> int:
    """``nslib exec --target PID [--all | --KIND[=FILE]...] -- CMD...``."""
    from .errors import NamespaceJoinError, NslibError
    from .spawn import popen

    if not cmd:
        raise CliError("exec: no command given (nslib exec --target PID --all -- CMD...)")
    if args.no_etc:
        raise CliError("exec: --no-etc is for a network REF, not with --target", EXIT_USAGE)
    namespaces = _namespaces(args)
    root: Any = None if args.root is None else (True if args.root == "" else args.root)
    wd: Any = None if args.wd is None else (True if args.wd == "" else args.wd)
    if (root is True or wd is True) and args.target is None:
        raise CliError("exec: --root/--wd without DIR need --target", EXIT_USAGE)
    try:
        proc = popen(
            namespaces,
            cmd,
            root=root,
            cwd=wd,
            preserve_credentials=args.preserve_credentials,
            # Our stdio is the command's; nothing of ours leaks into it.
            close_fds=True,
        )
    except NamespaceJoinError as e:
        raise CliError(f"exec: {_safe(e)}", EXIT_EXEC_FAILED) from None
    except OSError as e:
        if e.filename == cmd[0]:
            if e.errno == errno.ENOENT:
                raise CliError(f"{_safe(cmd[0])}: command not found", EXIT_NOT_FOUND) from None
            raise CliError(
                f"{_safe(cmd[0])}: cannot execute: {e.strerror}", EXIT_CANNOT_EXECUTE
            ) from None
        raise CliError(f"exec: {_safe(e)}", EXIT_EXEC_FAILED) from None
    except (NslibError, ValueError) as e:
        raise CliError(f"exec: {_safe(e)}", EXIT_EXEC_FAILED) from None
    return _wait(proc)


def _wait(proc: subprocess.Popen[Any]) -> int:
    # The terminal's Ctrl-C reaches the command too (same process group):
    # wait for it to decide, as nsenter does, instead of dying first.  The
    # command has exec'd by now (popen returns after that), so ignoring the
    # signals here is not inherited by it.
    with _ignoring(signal.SIGINT), _ignoring(signal.SIGQUIT):
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:  # pragma: no cover (SIGINT is ignored)
                continue
    return code if code >= 0 else 128 - code


@contextlib.contextmanager
def _ignoring(sig: int) -> Any:
    try:
        old = signal.signal(sig, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(sig, old)
