"""``nslib monitor``, ``nslib netns set|list-id``, ``nslib exec --all`` (see :mod:`nslib.cli`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from typing import Any

from .cli import EXIT_OK, EXIT_USAGE, CliError, _json, _out, _safe, _table
from .names import DEFAULT_RUN_DIR

__all__ = ["cmd_exec_all", "cmd_monitor", "cmd_netns_list_id", "cmd_netns_set", "register"]


def _event_dict(ev: Any) -> dict[str, Any]:
    return {
        "event": ev.kind.value,
        "name": ev.name,
        "path": ev.path,
        "run_dir": ev.run_dir,
        "nsid": ev.nsid,
        "ns_id": None if ev.ns_id is None else {"dev": ev.ns_id[0], "ino": ev.ns_id[1]},
        "initial": ev.initial,
    }


def _event_line(ev: Any) -> str:
    """``add NAME`` / ``delete NAME`` as ``ip netns monitor`` prints them, then nsid, identity."""
    from .monitor import EventKind

    if ev.name is None:
        who = "-"
    elif ev.run_dir == DEFAULT_RUN_DIR:
        who = _safe(ev.name)
    else:
        who = _safe(ev.path)  # other run directories: the path says which
    ident = "-" if ev.ns_id is None else f"net:[{ev.ns_id[1]}]"
    nsid = "-" if ev.nsid is None else str(ev.nsid)
    if ev.kind in (EventKind.ADDED, EventKind.DELETED):
        return f"{ev.kind.value} {who}  nsid {nsid}  {ident}"
    verb = "nsid" if ev.kind is EventKind.NSID_ADDED else "delete nsid"
    return f"{verb} {nsid}  {who}  {ident}"


def cmd_monitor(args: argparse.Namespace) -> int:
    """``nslib monitor [--json] [--initial]``: print namespace events until Ctrl-C (exit 0)."""
    from .monitor import DEFAULT_RUN_DIRS, NamespaceMonitor

    dirs = [args.run_dir] if args.run_dir else list(DEFAULT_RUN_DIRS)
    mon = NamespaceMonitor(dirs, initial=args.initial)

    def on_term(signum: int, frame: object) -> None:
        threading.Thread(target=mon.close, name="nslib-monitor-stop").start()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        if not args.json:
            sys.stderr.write("nslib: watching " + ", ".join(_safe(d) for d in dirs) + "\n")
        for ev in mon:
            line = json.dumps(_event_dict(ev)) if args.json else _event_line(ev)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        mon.close()
    return EXIT_OK


def _nsid_arg(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not an nsid (a number or 'auto'): {text!r}")
    return int(text)


def _viewer(text: str | None) -> Any:
    if text is None:
        return None
    from .process import parse_reference

    return parse_reference(text)


def cmd_netns_set(args: argparse.Namespace) -> int:
    """``nslib netns set NAME NSID``: ``ip netns set``."""
    from ._nsid import set_nsid

    got = set_nsid(args.name, args.nsid, run_dir=args.run_dir, ns=_viewer(args.in_ns))
    if args.nsid == "auto":
        _out(str(got))
    return EXIT_OK


def cmd_netns_list_id(args: argparse.Namespace) -> int:
    """``nslib netns list-id``: ``ip netns list-id``, as a table."""
    from ._nsid import list_ids

    ids = list_ids(run_dir=args.run_dir, ns=_viewer(args.in_ns))
    if args.json:
        _json([{"nsid": k, "name": v} for k, v in sorted(ids.items())])
        return EXIT_OK
    _table(["NSID", "NAME"], [[str(k), "-" if v is None else v] for k, v in sorted(ids.items())])
    return EXIT_OK


def cmd_exec_all(args: argparse.Namespace, cmd: list[str]) -> int:
    """``nslib exec --all -- CMD...``: ``ip -all netns exec``; status by iproute2's rules."""
    from ._run_all import exit_status, run_all

    if not cmd:
        raise CliError("exec --all: no command given (nslib exec --all -- CMD...)", EXIT_USAGE)
    with contextlib.suppress(ValueError, OSError):
        sys.stdout.flush()
    return exit_status(run_all(cmd, run_dir=args.run_dir, etc=not args.no_etc))


def register(sub: Any) -> None:
    """Add ``monitor`` and ``netns`` to the ``nslib`` subcommands *sub*."""
    from .cli import _Parser

    mon = sub.add_parser(
        "monitor",
        help="print namespaces as they are added and deleted, and nsid changes (ip netns monitor)",
        description="Stream events until Ctrl-C: `add NAME` once a namespace is mounted on "
        "NAME, `delete NAME` once it is not, with its nsid and identity; `nsid N` and "
        "`delete nsid N` when this namespace assigns or drops an nsid.  Watches /run/netns "
        "and /run/docker/netns (or --run-dir).",
    )
    mon.add_argument("--json", action="store_true", help="one JSON object per line")
    mon.add_argument("--initial", action="store_true", help="first list the names already there")
    mon.set_defaults(handler=cmd_monitor)

    netns = sub.add_parser("netns", help="nsids (ip netns set / list-id)")
    verbs = netns.add_subparsers(dest="netns_command", metavar="COMMAND", parser_class=_Parser)
    verbs.required = True
    in_help = "the namespace whose nsids are meant (REF; default: this one, like ip -n REF)"
    st = verbs.add_parser("set", help="give a named namespace an nsid (ip netns set NAME NSID)")
    st.add_argument("name")
    st.add_argument("nsid", type=_nsid_arg, help="a number, or 'auto' (printed)")
    st.add_argument("--in", dest="in_ns", metavar="REF", default=None, help=in_help)
    st.set_defaults(handler=cmd_netns_set)
    li = verbs.add_parser("list-id", help="every nsid, with its name (ip netns list-id)")
    li.add_argument("--json", action="store_true", help="JSON instead of a table")
    li.add_argument("--in", dest="in_ns", metavar="REF", default=None, help=in_help)
    li.set_defaults(handler=cmd_netns_list_id)
