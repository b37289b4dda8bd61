"""Write CNI plugins in Python: the equivalent of Go's ``pkg/skel`` plus ``pkg/ns``.

A plugin is a program; its ``main`` hands its commands to :func:`main`::

    from nslib.cni import plugin

    def add(req: plugin.Request) -> plugin.Result:
        ipam = plugin.delegate_add(req)            # host-local, or whatever "ipam" names
        with req.netns() as ns:                     # CNI_NETNS, opened and checked
            ...                                     # configure inside with nslib
        return ipam

    def delete(req: plugin.Request) -> None:
        plugin.delegate_del(req)

    if __name__ == "__main__":
        plugin.main(add=add, delete=delete, check=None, about="my plugin")

:func:`main` reads the environment and stdin, answers ``VERSION`` itself,
checks the ``cniVersion`` against the versions the plugin supports,
dispatches to the author's function, prints the result in the config's
version, and turns every exception into the spec's JSON error object and
exit status 1 (a :class:`~nslib.errors.CNIError` keeps its code; other
errors become code 999 with the exception's text).

The import path is kept short on purpose: a plugin process lives for a few
milliseconds, so nothing here imports pyroute2, docker or :mod:`subprocess`.
:func:`install` puts a plugin script into a plugin directory with a start-up
line that skips what a plugin does not need (``site``, ``.pth`` files).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

from ..errors import CNIError
from ..handle import NsHandle
from .result import DNS, Interface, IPConfig, Result, Route

__all__ = [
    "DNS",
    "CNIError",
    "IPConfig",
    "Interface",
    "Request",
    "Result",
    "Route",
    "delegate",
    "delegate_add",
    "delegate_check",
    "delegate_del",
    "install",
    "main",
]

#: Versions a plugin built on this module speaks unless it says otherwise.
DEFAULT_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")

_ENV_NEEDED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
}


@dataclass
class Request:
    """One invocation: the environment and the network configuration.

    :ivar command: ``ADD``, ``CHECK``, ``DEL``, ``GC`` or ``STATUS``.
    :ivar netns_path: ``CNI_NETNS`` (``""`` on a DEL whose namespace is gone).
    :ivar args: ``CNI_ARGS`` as a dict.
    :ivar path: ``CNI_PATH`` as a list of directories.
    :ivar config: the whole stdin object.
    :ivar stdin: stdin as received (what delegated plugins get).
    """

    command: str
    container_id: str
    netns_path: str
    ifname: str
    args: dict[str, str]
    path: list[str]
    config: dict[str, Any]
    stdin: bytes = field(repr=False, default=b"")

    @property
    def cni_version(self) -> str:
        """The config's ``cniVersion``."""
        return str(self.config.get("cniVersion", "0.1.0"))

    @property
    def name(self) -> str:
        """The network name."""
        return str(self.config.get("name", ""))

    @property
    def prev_result(self) -> Result | None:
        """``prevResult``, parsed (``None`` when the plugin is first in its chain).

        :raises CNIError: a malformed ``prevResult`` (code 6).
        """
        pr = self.config.get("prevResult")
        if pr is None:
            return None
        return Result.from_dict(pr, cni_version=self.cni_version)

    @property
    def runtime_config(self) -> dict[str, Any]:
        """``runtimeConfig`` (only the capabilities the plugin declared)."""
        rc = self.config.get("runtimeConfig") or {}
        return dict(rc) if isinstance(rc, Mapping) else {}

    def netns(self) -> NsHandle:
        """Open ``CNI_NETNS`` (checked to be a network namespace); close it after use.

        Use it with :func:`nslib.entered`, :func:`nslib.socket_in`,
        :func:`nslib.run_in` (the ``pkg/ns`` equivalents).

        :raises CNIError: no ``CNI_NETNS`` (code 4), or it is not a network
            namespace or no longer exists (code 3, unknown container).
        """
        if not self.netns_path:
            raise CNIError(4, "CNI_NETNS is not set")
        try:
            return NsHandle.from_path(self.netns_path)
        except (OSError, ValueError) as e:
            raise CNIError(3, f"cannot open CNI_NETNS {self.netns_path}", str(e)) from None


def _fail(code: int, msg: str, details: str = "") -> NoReturn:
    raise CNIError(code, msg, details)


def _request(environ: Mapping[str, str], data: bytes) -> Request:
    cmd = environ.get("CNI_COMMAND", "")
    for var in _ENV_NEEDED.get(cmd, ()):
        if var not in environ or (var == "CNI_NETNS" and not environ[var]):
            _fail(4, f"required environment variable {var} is missing")
    try:
        conf = json.loads(data) if data.strip() else {}
    except ValueError as e:
        _fail(6, "cannot decode the network configuration on stdin", str(e))
    if not isinstance(conf, dict):
        _fail(6, "the network configuration on stdin is not a JSON object")
    args: dict[str, str] = {}
    for pair in environ.get("CNI_ARGS", "").split(";"):
        if pair:
            k, sep, v = pair.partition("=")
            if not sep:
                _fail(4, f"CNI_ARGS entry {pair!r} is not KEY=VALUE")
            args[k] = v
    return Request(
        command=cmd,
        container_id=environ.get("CNI_CONTAINERID", ""),
        netns_path=environ.get("CNI_NETNS", ""),
        ifname=environ.get("CNI_IFNAME", ""),
        args=args,
        path=[p for p in environ.get("CNI_PATH", "").split(":") if p],
        config=conf,
        stdin=data,
    )


def _error_json(e: CNIError, version: str) -> str:
    d: dict[str, Any] = {"cniVersion": version, "code": e.code, "msg": e.msg}
    if e.details:
        d["details"] = e.details
    return json.dumps(d)


Handler = Callable[[Request], Any]


def main(
    *,
    add: Handler | None = None,
    check: Handler | None = None,
    delete: Handler | None = None,
    status: Handler | None = None,
    gc: Handler | None = None,
    versions: tuple[str, ...] = DEFAULT_VERSIONS,
    about: str = "",
    environ: Mapping[str, str] | None = None,
    stdin: IO[bytes] | None = None,
    stdout: IO[str] | None = None,
) -> NoReturn:
    """Run one plugin invocation and exit (Go's ``skel.PluginMainFuncs``).

    ``add`` returns a :class:`Result` (printed in the config's version);
    the others return ``None``.  A missing ``check``/``status``/``gc``
    succeeds without doing anything; a missing ``add``/``delete`` is an
    error.  ``VERSION`` is answered from *versions*.  With no
    ``CNI_COMMAND``, *about* is printed to stderr (as ``skel`` does).

    :param environ: the environment (default ``os.environ``); for tests.
    :param stdin: where the config is read from (default ``sys.stdin.buffer``).
    :param stdout: where the answer goes (default ``sys.stdout``).
    """
    env = os.environ if environ is None else environ
    out = sys.stdout if stdout is None else stdout
    version = versions[-1]
    try:
        cmd = env.get("CNI_COMMAND", "")
        data = (sys.stdin.buffer if stdin is None else stdin).read() if cmd else b""
        if not cmd:
            print(about or "a CNI plugin (CNI_COMMAND is not set)", file=sys.stderr)
            sys.exit(1)
        if cmd == "VERSION":
            out.write(json.dumps({"cniVersion": version, "supportedVersions": list(versions)}))
            out.write("\n")
            out.flush()
            sys.exit(0)
        req = _request(env, data)
        version = req.cni_version if req.cni_version in versions else version
        if req.cni_version not in versions:
            _fail(
                1,
                "incompatible CNI versions",
                f"config is {req.cni_version!r}, plugin supports {list(versions)}",
            )
        handlers = {"ADD": add, "CHECK": check, "DEL": delete, "STATUS": status, "GC": gc}
        if cmd not in handlers:
            _fail(4, f"unknown CNI_COMMAND {cmd!r}")
        fn = handlers[cmd]
        if fn is None:
            if cmd in ("ADD", "DEL"):
                _fail(4, f"this plugin does not implement {cmd}")
            sys.exit(0)
        result = fn(req)
        if cmd == "ADD":
            if not isinstance(result, Result):
                _fail(999, f"plugin bug: add() returned {type(result).__name__}, not a Result")
            out.write(json.dumps(result.to_dict(req.cni_version)))
            out.write("\n")
            out.flush()
        sys.exit(0)
    except CNIError as e:
        out.write(_error_json(e, version) + "\n")
        out.flush()
        sys.exit(1)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as e:  # the spec wants JSON on stdout, never a traceback
        err = CNIError(999, f"{type(e).__name__}: {e}")
        out.write(_error_json(err, version) + "\n")
        out.flush()
        sys.exit(1)


# -- delegation (Go's pkg/invoke DelegateAdd/Check/Del) -------------------------


def _find(plugin: str, path: list[str]) -> str:
    if not plugin or "/" in plugin:
        _fail(7, f"invalid delegate plugin name {plugin!r}")
    for d in path:
        p = os.path.join(d, plugin)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    _fail(7, f"delegate plugin {plugin!r} not found in CNI_PATH", ":".join(path))


def delegate(
    req: Request, plugin: str, command: str, stdin: bytes | None = None
) -> dict[str, Any] | None:
    """Run another plugin (an IPAM plugin, say) the way the runtime ran this one.

    *plugin* is found in ``CNI_PATH`` and gets *command*, this call's
    environment and *stdin* (default: the stdin this plugin got).

    The delegate inherits no fds but its pipes and stderr, and is killed with
    us if the runtime's timeout fires (it stays in our process group).

    :returns: its JSON output for ADD, else ``None``.
    :raises CNIError: the delegate's own error (its code, msg, details).
    """
    exe = _find(plugin, req.path)
    env = dict(os.environ)
    env["CNI_COMMAND"] = command
    data = req.stdin if stdin is None else stdin
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    try:
        # posix_spawn: no fork of the interpreter, and no subprocess import.
        pid = os.posix_spawn(
            exe,
            [exe],
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1)],
        )
    except BaseException:
        for fd in (in_r, in_w, out_r, out_w):
            os.close(fd)
        raise
    os.close(in_r)
    os.close(out_w)
    chunks = []
    try:
        with os.fdopen(in_w, "wb") as w:
            w.write(data)  # a config is far below the pipe's capacity
        with os.fdopen(out_r, "rb") as r:
            while chunk := r.read(65536):
                chunks.append(chunk)
    finally:
        _, status = os.waitpid(pid, 0)
    out = b"".join(chunks)
    if os.waitstatus_to_exitcode(status) != 0:
        try:
            d = json.loads(out)
            raise CNIError(int(d["code"]), str(d.get("msg", "")), str(d.get("details", "")))
        except (ValueError, KeyError, TypeError):
            _fail(
                999,
                f"delegate plugin {plugin!r} failed ({command})",
                out[:300].decode("utf-8", "replace"),
            )
    if command != "ADD":
        return None
    try:
        d = json.loads(out)
    except ValueError:
        _fail(6, f"delegate plugin {plugin!r} printed something that is not JSON")
    if not isinstance(d, dict):
        _fail(6, f"delegate plugin {plugin!r} printed a non-object")
    return d


def _ipam_type(req: Request) -> str:
    ipam = req.config.get("ipam")
    if not isinstance(ipam, Mapping) or not isinstance(ipam.get("type"), str):
        _fail(7, "the network configuration has no ipam.type")
    return str(ipam["type"])


def delegate_add(req: Request) -> Result:
    """ADD through the IPAM plugin the config names (``ipam.type``) and parse its result.

    :raises CNIError: no ``ipam.type`` (code 7), or the IPAM plugin's error.
    """
    d = delegate(req, _ipam_type(req), "ADD")
    assert d is not None
    return Result.from_dict(d, cni_version=req.cni_version)


def delegate_check(req: Request) -> None:
    """CHECK through the IPAM plugin.

    :raises CNIError: the IPAM plugin's error.
    """
    delegate(req, _ipam_type(req), "CHECK")


def delegate_del(req: Request) -> None:
    """DEL through the IPAM plugin (releases the addresses).

    :raises CNIError: the IPAM plugin's error.
    """
    delegate(req, _ipam_type(req), "DEL")


# -- installing a plugin script ------------------------------------------------------


def install(
    script: str | os.PathLike[str],
    plugin_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    python: str | None = None,
) -> str:
    """Copy plugin *script* into *plugin_dir* (as *name*) with a lean start-up line.

    A runtime execs the plugin for every ADD, CHECK and DEL, so its start-up
    is most of its cost.  The copy starts with ``#!<python> -IS`` (no
    ``site``: no ``.pth`` files, no editable-install finder, no user site)
    and then puts back on ``sys.path`` only the directories this
    interpreter imports nslib and its compiled dependency (cffi's backend)
    from.  That saves about 20 ms per call in a virtualenv with an editable
    install.  The script's own first line (its ``#!``) is replaced.

    :param python: the interpreter (default: the one running this).
    :returns: the installed file's path (mode 0755, written atomically).
    :raises OSError: *script* cannot be read or *plugin_dir* written.
    """
    import ast
    import importlib.util

    src = os.fspath(script)
    with open(src, encoding="utf-8") as f:
        text = f.read()
    if text.startswith("#!"):
        text = text.partition("\n")[2]
    paths: list[str] = []
    for module in ("nslib", "_cffi_backend"):
        spec = importlib.util.find_spec(module)
        origin = spec.origin if spec is not None else None
        if origin is None:
            continue
        # A package's parent directory; a plain module's directory.
        d = os.path.dirname(os.path.dirname(origin) if module == "nslib" else origin)
        if d not in paths:
            paths.append(d)
    exe = python or sys.executable
    # After the docstring and any `from __future__` import, which must come first.
    after = 0
    for i, node in enumerate(ast.parse(text).body):
        doc = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if not (doc or (isinstance(node, ast.ImportFrom) and node.module == "__future__")):
            break
        after = node.end_lineno or after
    lines = text.splitlines(keepends=True)
    text = (
        f"#!{exe} -IS\n"
        + "".join(lines[:after])
        + "import sys  # nslib.cni.plugin.install: no site; nslib from here\n"
        + f"sys.path[:0] = {paths!r}\n"
        + "".join(lines[after:])
    )
    dest = os.path.join(os.fspath(plugin_dir), name or os.path.basename(src))
    tmp = f"{dest}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o755)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o755)  # whatever the umask
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest
