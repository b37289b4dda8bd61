r"""The ``nslib`` command: network namespaces from a shell.

::

    nslib ls [--json] [--sockets] [--no-docker]   every namespace on the host
    nslib add NAME | del NAME                     ip netns add / del
    nslib repair NAME                             remove a stale placeholder
    nslib attach NAME PID                         ip netns attach
    nslib identify [PID] [--json]                 ip netns identify
    nslib pids NAME [--json]                      ip netns pids (every thread)
    nslib exec [--no-etc] REF -- CMD...           ip netns exec, for any reference
    nslib exec --all [--no-etc] -- CMD...         ip -all netns exec
    nslib monitor [--json] [--initial]            ip netns monitor, plus nsids
    nslib netns set NAME NSID | list-id           ip netns set / list-id
    nslib ms ls [--json] [--source S]             the microservice map
    nslib ms watch [--json] [--source S]          stream tracker events until Ctrl-C
    nslib bench [ARGS...]                         the benchmark report
    nslib demo [ARGS...]                          the guided demo

``--run-dir DIR`` (before the command) uses another directory than
``/run/netns`` for named namespaces.  A reference (REF) is written as
:meth:`nslib.NetNamespace.parse` reads it: ``NAME``, ``name:NAME``,
``pid:N``, ``path:P`` or ``ms:LABEL``.

Text from the host (namespace names, mount paths, command lines, container
names and labels) is untrusted: every table and message escapes control
characters, backslashes and bytes that are not UTF-8 visibly (``\n``,
``\x1b``, ``\xff``), so it can neither drive the terminal nor forge rows,
and a strict or non-UTF-8 stdout never fails.  ``--json`` is exact and pure
ASCII: text is decoded from the host's bytes with ``surrogateescape``, so a
byte that is not UTF-8 appears as a ``\udcXX`` escape (``os.fsencode`` of
the decoded string gives the original bytes back).

Exit status: 0 on success; 2 for a usage error or a malformed name or
reference; 1 when the operation failed (missing namespace, permission,
docker unreachable), with one line saying why and no traceback; 130 after
Ctrl-C.  ``nslib exec`` exits with the command's own status (it *becomes*
the command, as ``ip netns exec`` does), 127 when the command is not found,
126 when it cannot be executed, and 125 when nslib failed before running it.
``nslib ms watch`` treats Ctrl-C (or SIGTERM) as the normal way to stop and
exits 0.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import threading
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from .errors import (
    DockerUnavailableError,
    InvalidReference,
    NamespaceExists,
    NamespaceNotFound,
    NotANamespace,
    NslibError,
    UnavailableMicroserviceError,
)

__all__ = ["main"]

#: Exit statuses (see the module docstring).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_EXEC_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
EXIT_INTERRUPTED = 130

#: How long `ms ls` waits for docker before it says the daemon is unreachable.
DOCKER_TIMEOUT = 10.0


class CliError(Exception):
    """An expected failure: print *message* and exit with *status*."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


# -- output helpers -------------------------------------------------------------


def _safe(text: object) -> str:
    r"""*text* with control characters, backslashes and undecodable bytes escaped.

    Undecodable bytes arrive as ``surrogateescape`` surrogates and are shown
    as ``\xNN``; the result is printable and has no line breaks.
    """
    s = str(text)
    if s.isprintable() and "\\" not in s:
        return s
    out = []
    for ch in s:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch.isprintable() and unicodedata.category(ch) not in ("Cf", "Zl", "Zp"):
            out.append(ch)
        elif ch in "\n\t\r":
            out.append(repr(ch)[1:-1])
        elif o <= 0xFF:
            out.append(f"\\x{o:02x}")
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "".join(out)


def _write(stream: TextIO, text: str) -> None:
    """Write, falling back to backslash escapes where *stream* cannot encode."""
    try:
        stream.write(text)
    except UnicodeEncodeError:
        enc = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(enc, "backslashreplace").decode(enc, "replace"))


def _out(text: str = "") -> None:
    _write(sys.stdout, text + "\n")


def _json(value: object) -> None:
    _out(json.dumps(value, indent=2, sort_keys=False))


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], out: TextIO | None = None
) -> None:
    """Print a plain aligned table (the last column is never padded)."""
    cells = [[_safe(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(cell))
    stream = out or sys.stdout
    for r in [list(headers), *cells]:
        line = [c.ljust(widths[i]) for i, c in enumerate(r[:-1])] + [r[-1]]
        _write(stream, "  ".join(line).rstrip() + "\n")


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- verbs: named namespaces ------------------------------------------------------


def _named() -> Any:
    from . import named

    return named


def cmd_add(args: argparse.Namespace) -> int:
    """``nslib add NAME``."""
    _named().create(args.name, run_dir=args.run_dir).close()
    return EXIT_OK


def cmd_del(args: argparse.Namespace) -> int:
    """``nslib del NAME``."""
    _named().delete(args.name, run_dir=args.run_dir)
    return EXIT_OK


def cmd_repair(args: argparse.Namespace) -> int:
    """``nslib repair NAME``: remove a stale placeholder."""
    _named().repair(args.name, run_dir=args.run_dir)
    return EXIT_OK


def cmd_attach(args: argparse.Namespace) -> int:
    """``nslib attach NAME PID``."""
    _named().attach(args.name, args.pid, run_dir=args.run_dir)
    return EXIT_OK


def cmd_identify(args: argparse.Namespace) -> int:
    """``nslib identify [PID]``: the names of that process's namespace."""
    pid = args.pid if args.pid is not None else os.getpid()
    names = _named().identify(pid, run_dir=args.run_dir)
    if args.json:
        _json(list(names))
    else:
        for name in names:
            _out(_safe(name))
    return EXIT_OK


def cmd_pids(args: argparse.Namespace) -> int:
    """``nslib pids NAME``: every process with a thread in it."""
    pids = _named().pids(args.name, run_dir=args.run_dir)
    if args.json:
        _json(list(pids))
    else:
        for pid in pids:
            _out(str(pid))
    return EXIT_OK


# -- verbs: ls --------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    """``nslib ls``: every network namespace on the host."""
    if getattr(args, "kind", None) not in (None, "net"):  # every kind: nslib.lsns
        from ._cli_kinds import cmd_ls_kinds

        return cmd_ls_kinds(args)
    from .inventory import inventory

    inv = inventory(run_dir=args.run_dir, docker=not args.no_docker, sockets=args.sockets)
    _propagation_note(args.run_dir)
    if args.json:
        _json(inv.to_dict())
        return EXIT_OK
    rows = []
    for ns in inv:
        names = ",".join(ns.names) or "-"
        if ns.current:
            names = f"{names} (current)" if ns.names else "(current)"
        containers = ", ".join(
            f"{c.name}" + (f" [ms:{c.label}]" if c.label else "") for c in ns.containers
        )
        rows.append(
            [
                str(ns.ino),
                "-" if ns.nsid is None else str(ns.nsid),
                names,
                f"{len(ns.processes)}/{ns.thread_count}",
                _holders(ns),
                containers or "-",
                _examples(ns),
            ]
        )
    _table(
        ["NETNS", "NSID", "NAMES", "PROCS/THR", "HELD BY", "CONTAINERS", "PROCESSES"],
        rows,
    )
    notes = []
    if inv.unreadable:
        pids = ", ".join(str(p) for p in list(inv.unreadable)[:5])
        more = "" if len(inv.unreadable) <= 5 else f" and {len(inv.unreadable) - 5} more"
        privileged = os.geteuid() == 0 and _has_cap_sys_admin()
        hint = "" if privileged else "; run as root to see them"
        notes.append(
            f"{len(inv.unreadable)} process(es) could not be inspected (pid {pids}{more}): "
            f"namespaces only they hold are not shown{hint}"
        )
    if not args.no_docker and inv.docker != "ok":
        shown = sum(len(ns.containers) for ns in inv.namespaces)
        head = f"only {shown} containers shown" if shown else "containers not shown"
        notes.append(f"{head}: docker {inv.docker}")
    for note in notes:
        sys.stderr.write(f"nslib: note: {note}\n")
    return EXIT_OK


def _propagation_note(run_dir: str | None) -> None:
    """One line on stderr when the run directory does not share names with the host."""
    from ._propagation import run_dir_propagation
    from .names import DEFAULT_RUN_DIR

    p = run_dir_propagation(run_dir or DEFAULT_RUN_DIR)
    if not p.ok:
        _write(sys.stderr, f"nslib: warning: {_safe(p.message())}\n")


def _holders(ns: Any) -> str:
    parts = []
    for m in ns.mounts:
        if m.via_pid is None:
            parts.append(m.path)
        elif m.via_pid == 0:
            parts.append(f"{m.path} (mnt ns {m.mnt_ns}, no process; kept by an fd or mount)")
        else:
            parts.append(f"{m.path} (mnt ns {m.mnt_ns} of pid {m.via_pid})")
    if not parts and ns.ino == 0 and ns.nsid is not None:
        parts.append("nsid only (its holder could not be inspected)")
    if ns.processes:
        parts.append(f"{len(ns.processes)} proc")
    for f in ns.fds:
        kind = "fd" if f.kind == "ns" else "socket"
        parts.append(f"{kind} {f.pid}:{f.fd}")
    if len(parts) > 4:
        parts = [*parts[:4], f"+{len(parts) - 4} more"]
    return ", ".join(parts) or "-"


def _examples(ns: Any, count: int = 3) -> str:
    shown = []
    # User processes say more than kernel threads ("[kworker/0:1]").
    procs = sorted(ns.processes, key=lambda p: p.command.startswith("["))
    for p in procs[:count]:
        part = f"{p.pid} {_shorten(p.command, 28)}"
        if not p.all_threads:
            part += f" ({len(p.threads)} thr)"
        shown.append(part)
    if len(ns.processes) > count:
        shown.append(f"+{len(ns.processes) - count}")
    return "; ".join(shown) or "-"


# -- verbs: exec --------------------------------------------------------------------


def cmd_exec(args: argparse.Namespace) -> int:
    """``nslib exec REF -- CMD...``: become CMD inside REF."""
    from .process import execvp

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    from ._cli_kinds import cmd_exec_kinds, kind_flags_given

    if kind_flags_given(args):  # nsenter style: --target PID, --net[=FILE], ...
        return cmd_exec_kinds(args, ([args.ref] if args.ref is not None else []) + cmd)
    if args.all:  # there is no REF: what argparse took for one is the command
        from ._cli_monitor import cmd_exec_all

        return cmd_exec_all(args, ([args.ref] if args.ref is not None else []) + cmd)
    if args.ref is None:
        args.usage_error("no REF given (nslib exec REF -- CMD...)")  # exits 2, with usage
    if not cmd:
        args.usage_error("no command given (nslib exec REF -- CMD...)")
    ref = _reference(args.ref)
    try:
        execvp(ref, cmd, etc=not args.no_etc, run_dir=args.run_dir)
    except DockerUnavailableError as e:
        raise CliError(_docker_hint(e), EXIT_EXEC_FAILED) from None
    except OSError as e:
        if e.filename == cmd[0]:  # exec itself failed; the namespace part worked
            if e.errno == errno.ENOENT:
                raise CliError(f"{cmd[0]}: command not found", EXIT_NOT_FOUND) from None
            raise CliError(f"{cmd[0]}: cannot execute: {e.strerror}", EXIT_CANNOT_EXECUTE) from None
        if isinstance(e, PermissionError):
            raise CliError(_permission(e), EXIT_EXEC_FAILED) from None
        raise CliError(_describe(e), EXIT_EXEC_FAILED) from None
    except InvalidReference:
        raise
    except (LookupError, ValueError) as e:  # microservice and namespace lookups
        raise CliError(_describe(e), EXIT_EXEC_FAILED) from None


def _reference(text: str) -> Any:
    from .process import parse_reference

    return parse_reference(text)


# -- verbs: microservices -----------------------------------------------------------


#: The runtimes ``nslib ms --source`` accepts.
SOURCES = ("docker", "podman", "containerd")


def _source_spec(text: str) -> str:
    """The ``--source`` argument type: ``docker``, ``podman`` or ``containerd[:NAMESPACE]``."""
    kind, colon, ns = text.partition(":")
    if kind not in SOURCES or (colon and (kind != "containerd" or not ns)):
        raise argparse.ArgumentTypeError(
            f"not a source: {_safe(text)!s} (docker, podman or containerd[:NAMESPACE])"
        )
    return text


def _podman_url() -> str:
    # As podman's own remote client: CONTAINER_HOST, when it names a local socket.
    from .microservice.sources.podman import DEFAULT_PODMAN_URL

    host = os.environ.get("CONTAINER_HOST", "")
    return host if host.startswith("unix://") else DEFAULT_PODMAN_URL


def _containerd_address() -> str:
    # As ctr: CONTAINERD_ADDRESS.
    return os.environ.get("CONTAINERD_ADDRESS") or "/run/containerd/containerd.sock"


def _answers(url: str) -> bool:
    """Whether something accepts a connection at *url* (a unix socket or tcp://host:port)."""
    import socket

    try:
        if url.startswith("tcp://"):
            host, _, port = url[len("tcp://") :].rpartition(":")
            socket.create_connection((host or "localhost", int(port)), timeout=1.0).close()
            return True
        if url.startswith(("ssh://", "http://", "https://")):
            return True  # let the client say
        path = url[len("unix://") :] if url.startswith("unix://") else url
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(path)
        return True
    except (OSError, ValueError):
        return False


def _make_source(spec: str | None) -> Any:
    """The source ``--source`` names; without one, the first runtime that answers.

    The default tries docker (``DOCKER_HOST``, else its socket), then podman
    (``CONTAINER_HOST``, else the rootful socket), then containerd
    (``CONTAINERD_ADDRESS``, else its socket, namespace ``default``).
    """
    from .microservice.sources import DockerSource

    if spec is None:
        docker_url = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        if _answers(docker_url):
            return DockerSource()
        if _answers(_podman_url()):
            spec = "podman"
        elif _answers(_containerd_address()):
            spec = "containerd"
        else:
            raise CliError(
                f"docker daemon not reachable at {docker_url}, and no podman at "
                f"{_podman_url()} nor containerd at {_containerd_address()} either\n"
                "nslib: start one, or name it with --source docker|podman|containerd[:NAMESPACE]"
            )
    kind, _, ns = spec.partition(":")
    if kind == "docker":
        return DockerSource()
    if kind == "podman":
        from .microservice.sources.podman import PodmanSource

        return PodmanSource(_podman_url())
    from .microservice.sources.containerd import ContainerdSource

    try:
        return ContainerdSource(_containerd_address(), ns or "default")
    except ImportError as e:  # the extra is missing; the message names the pip command
        raise CliError(str(e)) from None


def _tracker(spec: str | None = None) -> Any:
    from .microservice import MicroserviceTracker
    from .process import wait_synced

    source = _make_source(spec)
    tracker = MicroserviceTracker(source=source)
    tracker.start()
    try:
        if source.kind == "docker":
            wait_synced(tracker, DOCKER_TIMEOUT)
        else:
            _wait_synced(tracker, source, DOCKER_TIMEOUT)
    except BaseException:
        tracker.stop()
        raise
    return tracker


def _wait_synced(tracker: Any, source: Any, timeout: float) -> None:
    """As :func:`nslib.process.wait_synced`, naming *source* rather than docker."""
    import time

    where = getattr(source, "url", None) or getattr(source, "address", "?")
    deadline = time.monotonic() + timeout
    while not tracker.wait_in_sync(0.05):
        health = tracker.health()
        if health.last_error and not health.connected:
            raise CliError(f"{source.kind} not reachable at {where}: {health.last_error}")
        if time.monotonic() >= deadline:
            why = health.last_error or "no answer"
            raise CliError(
                f"{source.kind} not reachable at {where}: no sync within {timeout:g} s ({why})"
            )


def _ms_dict(ms: Any) -> dict[str, Any]:
    return {
        "label": ms.label,
        "container_id": ms.container_id,
        "name": ms.name,
        "pid": ms.pid,
        "network_mode": ms.network_mode,
        "created": ms.created.isoformat(),
        "started_at": ms.started_at.isoformat(),
        "source": ms.source,
        "pod": ms.pod,
    }


def _short_id(ms: Any) -> str:
    # Docker and podman IDs are 64 hex digits; containerd's are names: whole.
    cid: str = ms.container_id
    return cid if ms.source.startswith("containerd") else cid[:12]


def cmd_ms_ls(args: argparse.Namespace) -> int:
    """``nslib ms ls``: the label -> container map."""
    tracker = _tracker(args.source)
    try:
        snap = tracker.snapshot()
        claims = {label: tracker.claimants(label) for label in snap}
    finally:
        tracker.stop()
    if args.json:
        _json(
            [
                {**_ms_dict(ms), "claimants": [c.container_id for c in claims[label]]}
                for label, ms in sorted(snap.items())
            ]
        )
        return EXIT_OK
    rows = []
    for label, ms in sorted(snap.items()):
        others = len(claims[label]) - 1
        rows.append(
            [
                label,
                _short_id(ms),
                ms.name,
                ms.source,
                str(ms.pid),
                ms.network_mode,
                ms.created.strftime("%Y-%m-%d %H:%M:%S"),
                f"{others} other claimant(s)" if others > 0 else "-",
            ]
        )
    _table(["LABEL", "CONTAINER", "NAME", "SOURCE", "PID", "NETWORK", "CREATED", "CONFLICT"], rows)
    return EXIT_OK


def cmd_ms_watch(args: argparse.Namespace) -> int:
    """``nslib ms watch``: print every tracker event until Ctrl-C (then exit 0)."""
    # Ctrl-C and SIGTERM both end the watch normally.
    stop = threading.Event()
    lock = threading.Lock()
    broken: list[bool] = []

    def on_event(ev: Any) -> None:
        if args.json:
            record = {
                "kind": ev.kind.value,
                "label": ev.label,
                **_ms_dict(ev.microservice),
                "claimants": [c.container_id for c in ev.claimants],
                "daemon_time_ns": ev.daemon_time_ns,
            }
            line = json.dumps(record)
        else:
            ms = ev.microservice
            line = (
                f"{ev.kind.value.upper():9} {_safe(ev.label)}  container "
                f"{_safe(_short_id(ms))} ({_safe(ms.name)}) pid {ms.pid} [{_safe(ms.source)}]"
            )
            if ev.claimants:
                line += f"  claimants: {', '.join(_safe(_short_id(c)) for c in ev.claimants)}"
        with lock:
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except (BrokenPipeError, ValueError):
                broken.append(True)
                stop.set()

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    tracker = _tracker(args.source)
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        tracker.subscribe(on_event, replay=True)
        if not args.json:
            sys.stderr.write("nslib: watching microservices; Ctrl-C to stop\n")
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        tracker.stop()
    if broken:
        _quiet_stdout()
    return EXIT_OK


# -- verbs: bench and demo ------------------------------------------------------------


def _benchmarks_dir() -> Path | None:
    for base in (Path(__file__).resolve().parent.parent, Path.cwd()):
        candidate = base / "benchmarks"
        if (candidate / "__init__.py").is_file() and (candidate / "run_all.py").is_file():
            return candidate
    return None


def cmd_bench(args: argparse.Namespace) -> int:
    """``nslib bench [ARGS...]``: ``python -m benchmarks.run_all ARGS`` of a source checkout."""
    import importlib
    import importlib.util

    where = _benchmarks_dir()
    if where is None:
        raise CliError(
            "the benchmarks live in nslib's source tree, not in the installed package: run "
            "`nslib bench` from the root of a checkout, or from an editable install of one "
            "(pip install -e '.[bench]'); they also need root and gcc"
        )
    # The checkout's `benchmarks` package, imported by its path (it is not on
    # sys.path) and run in this process, so Ctrl-C reaches its cleanup.
    spec = importlib.util.spec_from_file_location(
        "benchmarks", where / "__init__.py", submodule_search_locations=[str(where)]
    )
    assert spec is not None and spec.loader is not None
    sys.modules["benchmarks"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["benchmarks"])
    module: Any = importlib.import_module("benchmarks.run_all")
    status = module.main(list(args.rest))
    return int(status or 0)


def cmd_demo(args: argparse.Namespace) -> int:
    """``nslib demo [ARGS...]``: ``nslib.demo.main(ARGS)``."""
    import importlib

    try:
        demo: Any = importlib.import_module("nslib.demo")
    except ImportError as e:
        raise CliError(f"the demo is not available in this build ({e})") from None
    status = demo.main(list(args.rest))
    return int(status or 0)


# -- errors --------------------------------------------------------------------------


def _permission(e: OSError) -> str:
    msg = _describe(e)
    if os.geteuid() != 0:
        return f"{msg}\nnslib: you are not root (uid {os.geteuid()}): this needs CAP_SYS_ADMIN"
    if not _has_cap_sys_admin():
        return f"{msg}\nnslib: this process lacks CAP_SYS_ADMIN (root without privileges)"
    return msg


def _has_cap_sys_admin() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 21 & 1)
    except (OSError, ValueError):
        pass
    return True  # unknown: do not claim it is missing


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        # nslib puts its whole message in strerror; a builtin error needs its path.
        name = e.filename
        if (
            name is not None
            and not isinstance(e, NslibError)
            and os.fsdecode(name) not in e.strerror
        ):
            return f"{e.strerror}: {os.fsdecode(name)}"
        return e.strerror
    return str(e) or type(e).__name__


def _docker_hint(e: DockerUnavailableError) -> str:
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    msg = str(e)
    if not msg.startswith("docker daemon not reachable"):
        msg = f"docker daemon not reachable: {msg}"
    return f"{msg}\nnslib: is dockerd running? (DOCKER_HOST={host})"


def _quiet_stdout() -> None:
    # After EPIPE, make the interpreter's final flush a no-op.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return handler(args)
    except CliError as e:
        _error(str(e))
        return e.status
    except InvalidReference as e:
        _error(str(e))
        return EXIT_USAGE
    except DockerUnavailableError as e:
        _error(_docker_hint(e))
        return EXIT_FAILED
    except (NamespaceNotFound, NamespaceExists, NotANamespace, UnavailableMicroserviceError) as e:
        _error(_describe(e))
        return EXIT_FAILED
    except PermissionError as e:
        _error(_permission(e))
        return EXIT_FAILED
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            _quiet_stdout()
            return EXIT_FAILED
        _error(_describe(e))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _error(message: str) -> None:
    # Messages quote names and paths from the command line or the host.
    text = "\n".join(_safe(line) for line in message.split("\n"))
    _write(sys.stderr, f"nslib: {text}\n")


# -- the parser -------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"nslib: {message}\n")


def _pid(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The ``nslib`` argument parser."""
    p = _Parser(
        prog="nslib",
        description="Linux network namespaces: list, create, enter, and follow microservices.",
        epilog="A REF is NAME, name:NAME, pid:N, path:P or ms:LABEL.  "
        "Exit status: 0 ok, 1 failed, 2 usage error or bad reference, 130 interrupted.",
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"nslib {__version__}")
    p.add_argument(
        "--run-dir",
        metavar="DIR",
        default=None,
        help="directory of named namespaces (default /run/netns, as ip netns)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    from . import _cli_kinds as _kinds

    ls = sub.add_parser("ls", help="list every network namespace on the host")
    ls.add_argument("--json", action="store_true", help="JSON instead of a table")
    ls.add_argument(
        "--sockets", action="store_true", help="also find namespaces held only by sockets"
    )
    ls.add_argument("--no-docker", action="store_true", help="do not ask docker for containers")
    ls.add_argument(
        "--kind",
        choices=[*_kinds.kind_choices()],
        default=None,
        help="namespaces of this kind, or all of every kind, as lsns lists them (default net)",
    )
    ls.set_defaults(handler=cmd_ls)

    add = sub.add_parser("add", help="create a named namespace (ip netns add)")
    add.add_argument("name")
    add.set_defaults(handler=cmd_add)

    rm = sub.add_parser("del", help="delete a named namespace (ip netns del)")
    rm.add_argument("name")
    rm.set_defaults(handler=cmd_del)

    fix = sub.add_parser("repair", help="remove a stale placeholder (a name with nothing mounted)")
    fix.add_argument("name")
    fix.set_defaults(handler=cmd_repair)

    at = sub.add_parser("attach", help="name the namespace of a process (ip netns attach)")
    at.add_argument("name")
    at.add_argument("pid", type=_pid)
    at.set_defaults(handler=cmd_attach)

    ident = sub.add_parser("identify", help="names of a process's namespace (ip netns identify)")
    ident.add_argument("pid", type=_pid, nargs="?", help="default: this shell's namespace")
    ident.add_argument("--json", action="store_true", help="a JSON list")
    ident.set_defaults(handler=cmd_identify)

    pids = sub.add_parser("pids", help="processes with a thread in a named namespace")
    pids.add_argument("name")
    pids.add_argument("--json", action="store_true", help="a JSON list")
    pids.set_defaults(handler=cmd_pids)

    ex = sub.add_parser(
        "exec",
        help="run a command inside a namespace (ip netns exec, any REF)",
        description="Run CMD inside REF with ip netns exec semantics: a private mount "
        "namespace, a fresh /sys, and /etc/netns/NAME/* over /etc for a named namespace.",
        epilog="Exit status: CMD's own; 127 command not found, 126 not executable, "
        "125 nslib failed before running CMD, 2 usage error or malformed REF.",
    )
    ex.add_argument("--no-etc", action="store_true", help="only join the network namespace")
    ex.add_argument("--all", action="store_true", help="in every named namespace (ip -all)")
    _kinds.add_exec_options(ex)  # --target PID, --net[=FILE], ... as nsenter
    ex.add_argument("ref", metavar="REF", nargs="?")
    ex.add_argument("cmd", metavar="CMD", nargs=argparse.REMAINDER)
    ex.set_defaults(handler=cmd_exec, usage_error=ex.error)

    from ._cli_monitor import register

    register(sub)  # monitor, netns set / list-id

    from .cni.cli import register as register_cni

    register_cni(sub)  # cni add|check|del|status|ls

    ms = sub.add_parser("ms", help="microservices (containers with MICROSERVICE_LABEL)")
    ms_sub = ms.add_subparsers(dest="ms_command", metavar="COMMAND", parser_class=_Parser)
    ms_sub.required = True
    source_help = (
        "the runtime: docker, podman or containerd[:NAMESPACE] (default: the first that "
        "answers of docker (DOCKER_HOST), podman (CONTAINER_HOST), containerd (CONTAINERD_ADDRESS))"
    )
    ms_ls = ms_sub.add_parser("ls", help="print the label -> container map")
    ms_ls.add_argument("--json", action="store_true", help="JSON instead of a table")
    ms_ls.add_argument("--source", type=_source_spec, default=None, help=source_help)
    ms_ls.set_defaults(handler=cmd_ms_ls)
    ms_watch = ms_sub.add_parser("watch", help="stream tracker events until Ctrl-C (exit status 0)")
    ms_watch.add_argument("--json", action="store_true", help="one JSON object per line")
    ms_watch.add_argument("--source", type=_source_spec, default=None, help=source_help)
    ms_watch.set_defaults(handler=cmd_ms_watch)

    # Everything after `bench` / `demo` is passed on untouched (see main()).
    bench = sub.add_parser(
        "bench", help="run every benchmark and write the report (ARGS: see `nslib bench -h`)"
    )
    bench.set_defaults(handler=cmd_bench, rest=[])
    demo = sub.add_parser("demo", help="build a small topology, show it, tear it down")
    demo.set_defaults(handler=cmd_demo, rest=[])
    return p


_PASSTHROUGH = ("bench", "demo")


def _split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(argv for our parser, arguments for the delegate)`` for bench and demo."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--run-dir":
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        if arg in _PASSTHROUGH:
            return argv[: i + 1], argv[i + 1 :]
        break
    return argv, []


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    # A library warning (a run directory that does not propagate, say) is one
    # escaped "nslib: warning:" line, as the logged ones are, not Python's
    # file:line form.
    print(f"nslib: warning: {_safe(str(message))}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nslib`` command line; return the exit status."""
    logging.basicConfig(level=logging.WARNING, format="nslib: warning: %(message)s")
    warnings.showwarning = _show_warning
    ours, rest = _split_passthrough(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(ours)
    if rest:
        args.rest = rest
    if args.handler is not cmd_ms_watch:
        # The tracker logs each failed connection; one clear error is enough here.
        logging.getLogger("nslib.microservice").setLevel(logging.ERROR)
    if args.run_dir is not None:
        from .names import validate_run_dir

        try:
            # Before abspath: '' must be refused, not become the current directory.
            validate_run_dir(args.run_dir)
        except InvalidReference as e:
            _error(str(e))
            return EXIT_USAGE
        args.run_dir = os.path.abspath(args.run_dir)
    return _run(args.handler, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
