"""``nslib cni ...``: run CNI plugin chains from a shell, in the ``ip netns`` style.

::

    nslib cni add NETLIST REF [--ifname I] [--container-id C] [--json]
    nslib cni check NETLIST REF [--ifname I] [--container-id C]
    nslib cni del NETLIST [REF] [--ifname I] [--container-id C]
    nslib cni status NETLIST
    nslib cni ls [--json]                      the cached attachments

NETLIST is a ``.conflist``/``.conf`` file, or the name of a network
configured in ``--conf-dir`` (default ``/etc/cni/net.d``).  REF is a
namespace reference as the rest of the CLI reads it (``NAME``, ``pid:N``,
``path:P``, ``ms:LABEL``).  Without ``--container-id`` the container ID is
derived from REF, so ``add`` and ``del`` of the same REF pair up.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import CNIError
from .config import NetworkConfigList, load_dir
from .runtime import DEFAULT_CACHE_DIR, DEFAULT_PLUGIN_DIRS, DEFAULT_TIMEOUT, Runtime

__all__ = ["register"]

DEFAULT_CONF_DIR = "/etc/cni/net.d"


def _netlist(text: str, conf_dir: str) -> NetworkConfigList:
    from ..cli import CliError

    if os.sep in text or text.endswith((".conflist", ".conf", ".json")) or os.path.isfile(text):
        return NetworkConfigList.load(text)
    try:
        found = load_dir(conf_dir, skip_invalid=True)
    except FileNotFoundError:
        raise CliError(f"no network {text!r}: {conf_dir} does not exist") from None
    for nl in found:
        if nl.name == text:
            return nl
    raise CliError(f"no network named {text!r} in {conf_dir}")


def _runtime(args: argparse.Namespace) -> Runtime:
    return Runtime(
        args.plugin_dir or None,
        args.cache_dir,
        timeout=args.timeout,
        run_dir=args.run_dir,
    )


def _container_id(args: argparse.Namespace) -> str:
    from ..cli import CliError

    if args.container_id:
        return str(args.container_id)
    if args.ref is None:
        raise CliError("without REF, --container-id is needed")
    from .item import default_container_id

    return default_container_id(str(args.ref))


def _ref(args: argparse.Namespace) -> Any:
    from ..process import parse_reference

    return parse_reference(args.ref) if args.ref is not None else None


def _cni_error(e: CNIError) -> Exception:
    from ..cli import CliError

    text = f"CNI error {e.code}: {e}"
    if e.plugin:
        text += f" (plugin {e.plugin})"
    if e.cleanup_error is not None:
        text += f"\ncleanup after the failed ADD also failed: {e.cleanup_error}"
    return CliError(text)


def cmd_add(args: argparse.Namespace) -> int:
    """``nslib cni add``."""
    from ..cli import _json, _table

    try:
        nl = _netlist(args.netlist, args.conf_dir)
        r = _runtime(args).add(nl, _container_id(args), _ref(args), args.ifname)
    except CNIError as e:
        raise _cni_error(e) from None
    if args.json:
        _json(r.to_dict())
        return 0
    rows = []
    for ip in r.ips:
        iface = r.interfaces[ip.interface].name if ip.interface is not None else "-"
        rows.append([iface, ip.address, ip.gateway or "-"])
    _table(["INTERFACE", "ADDRESS", "GATEWAY"], rows)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """``nslib cni check``."""
    try:
        nl = _netlist(args.netlist, args.conf_dir)
        _runtime(args).check(nl, _container_id(args), _ref(args), args.ifname)
    except CNIError as e:
        raise _cni_error(e) from None
    return 0


def cmd_del(args: argparse.Namespace) -> int:
    """``nslib cni del``."""
    try:
        nl = _netlist(args.netlist, args.conf_dir)
        _runtime(args).delete(nl, _container_id(args), _ref(args), args.ifname)
    except CNIError as e:
        raise _cni_error(e) from None
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """``nslib cni status``."""
    from ..cli import _json, _out

    try:
        nl = _netlist(args.netlist, args.conf_dir)
        _runtime(args).status(nl)
    except CNIError as e:
        if args.json:
            _json({"network": nl.name, "ready": False, "code": e.code, "msg": e.msg})
        raise _cni_error(e) from None
    if args.json:
        _json({"network": nl.name, "ready": True})
    else:
        _out(f"{nl.name}: ready")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """``nslib cni ls``."""
    from ..cli import _json, _table

    atts = _runtime(args).attachments()
    if args.json:
        _json(
            [
                {
                    "network": a.network,
                    "containerId": a.container_id,
                    "ifName": a.ifname,
                    "netns": a.netns,
                    "result": a.result.to_dict() if a.result else None,
                }
                for a in atts
            ]
        )
        return 0
    rows = [
        [
            a.network,
            a.container_id,
            a.ifname,
            a.netns or "-",
            ",".join(ip.address for ip in a.result.ips) if a.result else "-",
        ]
        for a in atts
    ]
    _table(["NETWORK", "CONTAINER", "IFNAME", "NETNS", "ADDRESSES"], rows)
    return 0


def register(subparsers: Any) -> None:
    """Add the ``cni`` command (and its sub-commands) to the ``nslib`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--plugin-dir",
        action="append",
        metavar="DIR",
        help=f"plugin directory (repeatable; default {':'.join(DEFAULT_PLUGIN_DIRS)})",
    )
    common.add_argument(
        "--cache-dir", default=DEFAULT_CACHE_DIR, metavar="DIR", help="result cache (libcni's)"
    )
    common.add_argument(
        "--conf-dir", default=DEFAULT_CONF_DIR, metavar="DIR", help="where networks are named"
    )
    common.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S", help="seconds per call"
    )
    common.add_argument("--json", action="store_true", help="JSON output")

    cni = subparsers.add_parser("cni", help="run CNI plugin chains against a namespace")
    sub = cni.add_subparsers(dest="cni_command", metavar="COMMAND", parser_class=type(cni))
    sub.required = True

    def verb(name: str, help_: str, handler: Any, *, ref: str = "required") -> None:
        p = sub.add_parser(name, help=help_, parents=[common])
        p.add_argument("netlist", metavar="NETLIST", help="a .conflist file or a network name")
        if ref == "required":
            p.add_argument("ref", metavar="REF", help="the namespace (NAME, pid:N, path:P, ms:L)")
        elif ref == "optional":
            p.add_argument("ref", metavar="REF", nargs="?", default=None)
        if ref != "none":
            p.add_argument("--ifname", default="eth0", metavar="I", help="interface (eth0)")
            p.add_argument("--container-id", default=None, metavar="C", help="container ID")
        p.set_defaults(handler=handler, ref=None if ref == "none" else p.get_default("ref"))

    verb("add", "attach REF to the network (ADD)", cmd_add)
    verb("check", "check REF's attachment (CHECK)", cmd_check)
    verb("del", "detach (DEL); REF may be gone or left out", cmd_del, ref="optional")
    verb("status", "is the network ready for ADDs (STATUS)", cmd_status, ref="none")
    ls = sub.add_parser("ls", help="the cached attachments", parents=[common])
    ls.set_defaults(handler=cmd_ls)


def main(argv: list[str] | None = None) -> int:
    """``python -m nslib.cni.cli ARGS`` is ``nslib cni ARGS``; returns the exit status."""
    import sys

    from ..cli import _Parser, _run

    p = _Parser(prog="nslib")
    p.add_argument("--run-dir", metavar="DIR", default=None)
    register(p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser))
    args = p.parse_args(["cni", *(sys.argv[1:] if argv is None else argv)])
    return _run(args.handler, args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
