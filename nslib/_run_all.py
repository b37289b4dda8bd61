"""``ip -all netns exec``: one command in every named namespace (see :func:`run_all`)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from .errors import NamespaceNotFound, NotANamespace
from .names import validate_run_dir
from .process import run
from .reference import NetNamespace

__all__ = ["exit_status", "run_all"]

log = logging.getLogger("nslib.process")


def _escape(name: str) -> str:
    """A name fit for a terminal: control characters and undecodable bytes escaped."""
    from .cli import _safe  # the CLI's escaping, so both print names alike

    return _safe(name)


def run_all(
    argv: Sequence[str | bytes | os.PathLike[str]],
    *,
    run_dir: str | None = None,
    etc: bool = True,
    header: bool | None = None,
    capture_output: bool = False,
    timeout: float | None = None,
    **popen_kwargs: Any,
) -> dict[str, subprocess.CompletedProcess[Any]]:
    r"""Run *argv* in every named namespace, one after the other, as ``ip -all netns exec`` does.

    iproute2's rules: the names are taken in directory order; before each
    command ``"\nnetns: NAME\n"`` is written to standard output (*header*;
    by default only when the output is not captured; the name is escaped
    for the terminal); a command that fails does not stop the others; a
    command *killed by a signal* stops the round (the remaining namespaces
    are not run, and :func:`exit_status` gives 1).  Each command runs as
    :func:`nslib.run` runs it (``etc=True``: ``ip netns exec`` semantics).

    Two deliberate differences from iproute2 6.1: a name that cannot be
    entered (a stale placeholder, or deleted meanwhile) is skipped with a
    warning on the ``nslib.process`` logger (iproute2's child goes on
    looping through the rest of the names itself, running them twice); and
    a program that cannot be executed is reported in that name's result
    (127 not found, 126 not executable; ``exec of "CMD" failed: ...`` on
    standard error as iproute2 prints it) instead of an exit status of 1.

    :param popen_kwargs: passed to each :func:`nslib.run` (``stdin``,
        ``env``, ``text``, ...).
    :returns: name -> :class:`subprocess.CompletedProcess`, in the order run.
    :raises subprocess.TimeoutExpired: one command outlived *timeout*
        (it is killed; the round stops).
    :raises InvalidReference: *run_dir* is not acceptable.
    """
    d = validate_run_dir(run_dir)
    argv = list(argv)
    if not argv:
        raise ValueError("run_all: no command given")
    show = (not capture_output) if header is None else header
    try:
        names = os.listdir(d)  # readdir order, as ip's netns_foreach
    except FileNotFoundError:
        return {}
    results: dict[str, subprocess.CompletedProcess[Any]] = {}
    for name in names:
        if show:
            sys.stdout.write(f"\nnetns: {_escape(name)}\n")
        with contextlib.suppress(ValueError, OSError):
            sys.stdout.flush()  # the header before the child's own output
        try:
            res = run(
                NetNamespace.named(name),
                argv,
                etc=etc,
                run_dir=d,
                capture_output=capture_output,
                timeout=timeout,
                **popen_kwargs,
            )
        except NotANamespace as e:
            log.warning("skipping %s: %s", _escape(name), e)
            continue
        except OSError as e:
            if e.filename is not None and os.fsdecode(e.filename) == os.fsdecode(argv[0]):
                res = _not_run(argv, e, capture_output)  # the program, not the namespace
            elif isinstance(e, NamespaceNotFound):
                log.warning("skipping %s: %s", _escape(name), e)
                continue
            else:
                raise
        results[name] = res
        if res.returncode < 0:
            break  # killed by a signal: iproute2 stops here with status 1
    return results


def _not_run(argv: list[Any], e: OSError, captured: bool) -> subprocess.CompletedProcess[Any]:
    message = f'exec of "{_escape(os.fsdecode(argv[0]))}" failed: {os.strerror(e.errno or 0)}\n'
    code = 127 if e.errno == errno.ENOENT else 126
    if captured:
        return subprocess.CompletedProcess(argv, code, b"", message.encode())
    sys.stderr.write(message)
    with contextlib.suppress(ValueError, OSError):
        sys.stderr.flush()
    return subprocess.CompletedProcess(argv, code)


def exit_status(results: dict[str, subprocess.CompletedProcess[Any]]) -> int:
    """The status ``ip -all netns exec`` exits with after *results*.

    0, even when commands failed; 1 when one was killed by a signal.
    """
    return 1 if any(r.returncode < 0 for r in results.values()) else 0
