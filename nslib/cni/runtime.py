"""The CNI runtime: run plugin chains against any namespace nslib can name.

:class:`Runtime` does what libcni's ``CNIConfig`` does for Go runtimes
(podman, containerd, CRI-O), and keeps its result cache in libcni's layout
so the same attachment can be added by one and deleted by the other.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import NamespaceNotFound, NotANamespace, UnavailableMicroserviceError
from ..names import DEFAULT_RUN_DIR
from ..reference import NetNamespace, NsLike, ReferenceType
from .config import NAME_RE, NetworkConfigList, PluginConfig, version_tuple
from .errors import (
    ERR_INCOMPATIBLE_VERSION,
    ERR_RUNTIME,
    CNIArgumentError,
    CNIError,
    PluginNotFoundError,
    PluginOutputError,
    PluginTimeoutError,
)
from .result import Result

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DEFAULT_PLUGIN_DIRS",
    "DEFAULT_TIMEOUT",
    "Attachment",
    "PluginInfo",
    "Runtime",
]

_log = logging.getLogger("nslib.cni")

#: Where plugins are looked for, in order (libcni's usual path, then Debian's).
DEFAULT_PLUGIN_DIRS: tuple[str, ...] = ("/opt/cni/bin", "/usr/lib/cni")
#: libcni's cache directory.
DEFAULT_CACHE_DIR = "/var/lib/cni"
#: Seconds a whole ADD/CHECK/DEL may take (each plugin gets what is left).
DEFAULT_TIMEOUT = 60.0

_CACHE_KIND = "cniCacheV1"
_FD_PATH_RE = re.compile(r"/proc/[0-9]+/fd/[0-9]+")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ArgsLike = Mapping[str, str] | Sequence[tuple[str, str]] | None


@dataclass(frozen=True)
class PluginInfo:
    """A plugin's answer to ``VERSION``."""

    cni_version: str
    supported_versions: tuple[str, ...]


@dataclass(frozen=True)
class Attachment:
    """One cached attachment (a file in ``<cache_dir>/results``).

    :ivar config: the network configuration it was added with (JSON bytes).
    :ivar netns: the namespace path recorded at ADD, ``""`` when none was
        worth recording (see :meth:`Runtime.add`).
    :ivar result: the cached result, ``None`` if the file had none.
    :ivar path: the cache file.
    """

    container_id: str
    network: str
    ifname: str
    netns: str
    config: bytes
    cni_args: tuple[tuple[str, str], ...]
    capability_args: dict[str, Any]
    result: Result | None
    path: str

    def network_config(self) -> NetworkConfigList:
        """The cached network configuration, parsed.

        :raises CNIConfigError: the cached configuration is invalid.
        """
        return NetworkConfigList.from_bytes(self.config, source=self.path)


def _check_ids(container_id: str, ifname: str) -> None:
    if not isinstance(container_id, str) or not NAME_RE.fullmatch(container_id):
        raise CNIArgumentError(
            f"invalid container ID {container_id!r} (letters, digits, '_', '.', '-'; "
            "starting with a letter or digit)"
        )
    if (
        not isinstance(ifname, str)
        or not ifname
        or len(ifname.encode()) > 15
        or ifname in (".", "..")
        or any(c in ifname for c in "/:")
        or any(c.isspace() for c in ifname)
    ):
        raise CNIArgumentError(
            f"invalid interface name {ifname!r} (1-15 bytes, no '/', ':' or whitespace)"
        )


def _args_pairs(args: _ArgsLike) -> tuple[tuple[str, str], ...]:
    if args is None:
        return ()
    items = list(args.items()) if isinstance(args, Mapping) else list(args)
    out = []
    for pair in items:
        k, v = pair
        if not isinstance(k, str) or not isinstance(v, str):
            raise CNIArgumentError(f"CNI_ARGS entries must be strings: {pair!r}")
        if not k or "=" in k or ";" in k or ";" in v:
            raise CNIArgumentError(f"CNI_ARGS entry {k!r}={v!r} cannot be encoded ('=' or ';')")
        out.append((k, v))
    return tuple(out)


@dataclass
class _Call:
    """One runtime call: what every plugin of the chain gets in its environment."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: tuple[tuple[str, str], ...] = ()
    capability_args: dict[str, Any] = field(default_factory=dict)
    deadline: float = 0.0
    #: The namespace CNI_NETNS must still name, checked before each plugin.
    ns_ident: tuple[int, int] | None = None


class _Closable(Protocol):
    def close(self) -> None: ...


class _Target:
    """A resolved namespace held open for one call."""

    def __init__(self, fd: int, own: _Closable | None, recorded: str) -> None:
        self.fd = fd
        self.own = own
        self.recorded = recorded
        st = os.fstat(fd)
        self.ident = (st.st_dev, st.st_ino)
        if recorded and not recorded.startswith("/proc/"):
            # Plugins record CNI_NETNS as the interface's sandbox and CHECK
            # compares it, so a stable path is handed over where one exists.
            self.path = recorded
        else:
            # Our own PID, not /proc/self: the plugin is another process.
            self.path = f"/proc/{os.getpid()}/fd/{fd}"

    def close(self) -> None:
        own, self.own = self.own, None
        if own is not None:
            own.close()


class Runtime:
    """Runs CNI plugin chains (ADD, CHECK, DEL, GC, STATUS, VERSION).

    Thread-safe: a runtime holds no state between calls but its directories;
    calls for different attachments may run concurrently.

    :param plugin_dirs: where plugin binaries are looked for, in order
        (default :data:`DEFAULT_PLUGIN_DIRS`); also the plugins' ``CNI_PATH``.
    :param cache_dir: the result cache (default ``/var/lib/cni``, libcni's),
        laid out as libcni does: ``<cache_dir>/results/<network>-<container>-<ifname>``.
    :param timeout: default seconds for one whole call (see :meth:`add`).
    :param tracker: a :class:`~nslib.MicroserviceTracker` for ``ms:LABEL``
        namespaces (without one, a short-lived tracker is started per call).
    :param run_dir: where named namespaces live (default ``/run/netns``).
    :param path: the ``PATH`` plugins get (default: this process's ``PATH``);
        plugins such as ``firewall`` run ``iptables``.
    """

    def __init__(
        self,
        plugin_dirs: Sequence[str] | None = None,
        cache_dir: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        tracker: Any = None,
        run_dir: str | None = None,
        path: str | None = None,
    ) -> None:
        if isinstance(plugin_dirs, str):
            raise TypeError("plugin_dirs must be a sequence of directories, not a str")
        self.plugin_dirs: tuple[str, ...] = tuple(
            DEFAULT_PLUGIN_DIRS if plugin_dirs is None else plugin_dirs
        )
        self.cache_dir = cache_dir or DEFAULT_CACHE_DIR
        self.timeout = timeout
        self.tracker = tracker
        self.run_dir = run_dir or DEFAULT_RUN_DIR
        self.path = path if path is not None else os.environ.get("PATH", _DEFAULT_PATH)

    def __repr__(self) -> str:
        return f"Runtime(plugin_dirs={list(self.plugin_dirs)!r}, cache_dir={self.cache_dir!r})"

    # -- plugins ----------------------------------------------------------------

    def find_plugin(self, plugin: str) -> str:
        """The path of plugin *plugin* (the first executable file of that name).

        :raises PluginNotFoundError: none in :attr:`plugin_dirs`.
        """
        if not NAME_RE.fullmatch(plugin):
            raise PluginNotFoundError(plugin, self.plugin_dirs)
        for d in self.plugin_dirs:
            p = os.path.join(d, plugin)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
        raise PluginNotFoundError(plugin, self.plugin_dirs)

    def version(self, plugin: str, *, timeout: float | None = None) -> PluginInfo:
        """Ask plugin *plugin* which spec versions it speaks (``VERSION``).

        :raises PluginNotFoundError: no such plugin.
        :raises PluginOutputError: its answer is not the spec's.
        :raises CNIError: it failed.
        """
        call = _Call("VERSION", deadline=self._deadline(timeout))
        out = self._exec(plugin, call, json.dumps({"cniVersion": "1.0.0"}).encode())
        d = _json(plugin, out)
        if not isinstance(d, dict):
            raise PluginOutputError(plugin, "VERSION answer is not a JSON object")
        vs = d.get("supportedVersions") or [d.get("cniVersion", "0.1.0")]
        if not isinstance(vs, list) or not all(isinstance(v, str) for v in vs):
            raise PluginOutputError(plugin, "supportedVersions is not a list of strings")
        return PluginInfo(str(d.get("cniVersion", "")), tuple(vs))

    # -- the four verbs ---------------------------------------------------------

    def add(
        self,
        netlist: NetworkConfigList,
        container_id: str,
        ns: NsLike,
        ifname: str = "eth0",
        *,
        args: _ArgsLike = None,
        capability_args: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Result:
        """Attach namespace *ns* to network *netlist*: ADD through the whole chain.

        *ns* is anything nslib resolves: an :class:`~nslib.NsHandle`, a
        :class:`~nslib.NetNamespace` (``name:``, ``pid:``, ``path:``,
        ``ms:LABEL``), or its string form.  It is resolved once and held open
        for the whole call, and every plugin gets ``CNI_NETNS=/proc/<our
        pid>/fd/<fd>``: a path to *that very* namespace that stays valid for
        the call whatever happens to the name, the process or the PID (a
        ``/proc/<pid>/ns/net`` path would follow a reused PID, and a named
        path could be deleted and re-created in between).  The cache records
        the run-dir path for a named namespace and the path for ``path:``
        (what a later GC or another runtime can use), and nothing for the
        others.

        Each plugin's config gets ``name``, ``cniVersion``, the previous
        plugin's result as ``prevResult`` (in the list's version) and a
        ``runtimeConfig`` with the *capability_args* it declares.  The result
        is cached for :meth:`check` and :meth:`delete`.

        A failed ADD leaves nothing behind: DEL runs for the whole list (in
        reverse, with the last good result), the cache entry is removed, and
        the original error is raised with ``cleaned_up`` and
        ``cleanup_error`` set.

        :param args: ``CNI_ARGS`` pairs.
        :param timeout: seconds for the whole chain (default: the runtime's ``timeout``);
            the cleanup after a failure gets its own.
        :raises CNIError: a plugin failed (the plugin's ``code``, ``msg``,
            ``details``; ``.plugin`` names it), timed out
            (:class:`PluginTimeoutError`), is missing
            (:class:`PluginNotFoundError`) or printed garbage
            (:class:`PluginOutputError`).
        :raises CNIArgumentError: an invalid container ID, interface or arg.
        :raises NamespaceNotFound: *ns* does not resolve.
        """
        _check_ids(container_id, ifname)
        pairs = _args_pairs(args)
        caps = dict(capability_args or {})
        target = self._resolve(ns)
        try:
            call = _Call(
                "ADD",
                container_id,
                target.path,
                ifname,
                pairs,
                caps,
                self._deadline(timeout),
                target.ident,
            )
            prev: Result | None = None
            try:
                for pl in netlist.plugins:
                    prev = self._run_plugin(netlist, pl, call, prev)
                assert prev is not None  # a list has at least one plugin
                self._cache_write(netlist, call, prev, target.recorded)
            except BaseException as e:
                self._undo_add(netlist, call, prev, e)
                raise
            return prev
        finally:
            target.close()

    def check(
        self,
        netlist: NetworkConfigList,
        container_id: str,
        ns: NsLike,
        ifname: str = "eth0",
        *,
        args: _ArgsLike = None,
        capability_args: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> None:
        """CHECK the attachment through the whole chain, with the cached result as ``prevResult``.

        A no-op when the list sets ``disableCheck``.

        :raises CNIError: a plugin reports a problem, or the list's version
            is older than 0.4.0 (code 1: CHECK does not exist there).
        :raises NamespaceNotFound: *ns* does not resolve.
        """
        _check_ids(container_id, ifname)
        if version_tuple(netlist.cni_version) < (0, 4, 0):
            raise CNIError(
                ERR_INCOMPATIBLE_VERSION,
                f"configuration version {netlist.cni_version!r} does not support the CHECK command",
            )
        if netlist.disable_check:
            return
        pairs = _args_pairs(args)
        target = self._resolve(ns)
        try:
            call = _Call(
                "CHECK",
                container_id,
                target.path,
                ifname,
                pairs,
                dict(capability_args or {}),
                self._deadline(timeout),
                target.ident,
            )
            cached = self._cached_result(netlist, container_id, ifname)
            for pl in netlist.plugins:
                self._run_plugin(netlist, pl, call, cached)
        finally:
            target.close()

    def delete(
        self,
        netlist: NetworkConfigList,
        container_id: str,
        ns: NsLike | None = None,
        ifname: str = "eth0",
        *,
        args: _ArgsLike = None,
        capability_args: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> None:
        """DEL the attachment through the chain in reverse, then drop its cache entry.

        The cached result is each plugin's ``prevResult`` (0.4.0 and later).
        When *ns* is ``None`` or no longer exists, plugins get an empty
        ``CNI_NETNS`` and still release what they hold outside it (addresses,
        host-side links, firewall rules): the spec requires DEL to succeed
        then, and runtimes rely on it.

        :raises CNIError: a plugin failed (the cache entry is kept, so DEL
            can be retried).
        """
        _check_ids(container_id, ifname)
        pairs = _args_pairs(args)
        target: _Target | None = None
        if ns is not None:
            try:
                target = self._resolve(ns)
            except (NamespaceNotFound, NotANamespace, UnavailableMicroserviceError) as e:
                _log.info(
                    "DEL %s/%s: namespace gone (%s); CNI_NETNS left empty", container_id, ifname, e
                )
        try:
            call = _Call(
                "DEL",
                container_id,
                target.path if target else "",
                ifname,
                pairs,
                dict(capability_args or {}),
                self._deadline(timeout),
                target.ident if target else None,
            )
            self._delete(netlist, call)
        finally:
            if target is not None:
                target.close()

    def gc(
        self,
        netlist: NetworkConfigList,
        valid_attachments: Iterable[tuple[str, str]],
        *,
        timeout: float | None = None,
    ) -> None:
        """Garbage-collect the attachments of *netlist* that are no longer valid.

        DEL every cached attachment of *netlist* not in *valid_attachments*
        (``(container_id, ifname)`` pairs), then, for lists of version 1.1.0
        and later, send ``GC`` to every plugin with the valid ones in
        ``cni.dev/valid-attachments``, as libcni does.

        A stale attachment is deleted with the namespace path its cache entry
        recorded, if that still resolves, else with none.

        :raises CNIError: the first failure; every step is still attempted,
            and the others are in the exception's notes.
        """
        valid = {(c, i) for c, i in valid_attachments}
        errors: list[BaseException] = []
        if not netlist.disable_gc:
            for a in self.attachments():
                if a.network != netlist.name or (a.container_id, a.ifname) in valid:
                    continue
                ns = NetNamespace.path(a.netns) if a.netns else None
                try:
                    self.delete(
                        netlist,
                        a.container_id,
                        ns,
                        a.ifname,
                        args=a.cni_args,
                        capability_args=a.capability_args,
                        timeout=timeout,
                    )
                except CNIError as e:
                    errors.append(e)
            if version_tuple(netlist.cni_version) >= (1, 1, 0):
                listed = [{"containerID": c, "ifname": i} for c, i in sorted(valid)]
                call = _Call("GC", deadline=self._deadline(timeout))
                for pl in netlist.plugins:
                    conf = self._plugin_conf(netlist, pl, call, None)
                    conf["cni.dev/valid-attachments"] = listed
                    try:
                        self._exec(pl.type, call, json.dumps(conf).encode())
                    except CNIError as e:
                        errors.append(e)
        _raise_first(errors)

    def status(self, netlist: NetworkConfigList, *, timeout: float | None = None) -> None:
        """Ask every plugin whether it is ready for ADDs (``STATUS``, 1.1.0 and later).

        Returns quietly for older lists (they have no STATUS), as libcni does.

        :raises CNIError: the first plugin that is not ready (codes 50-53).
        """
        if version_tuple(netlist.cni_version) < (1, 1, 0):
            return
        call = _Call("STATUS", deadline=self._deadline(timeout))
        for pl in netlist.plugins:
            conf = self._plugin_conf(netlist, pl, call, None)
            self._exec(pl.type, call, json.dumps(conf).encode())

    # -- the cache --------------------------------------------------------------

    def cache_path(self, network: str, container_id: str, ifname: str) -> str:
        """The cache file of one attachment (libcni's layout)."""
        return os.path.join(self.cache_dir, "results", f"{network}-{container_id}-{ifname}")

    def cached_result(
        self, netlist: NetworkConfigList, container_id: str, ifname: str = "eth0"
    ) -> Result | None:
        """The cached result of an attachment, in the list's version; ``None`` if none."""
        return self._cached_result(netlist, container_id, ifname)

    def attachments(self, container_id: str | None = None) -> list[Attachment]:
        """Every attachment in the cache (of *container_id* only, if given), by file name.

        Files that are not libcni's ``cniCacheV1`` records are skipped, as
        libcni does.
        """
        d = os.path.join(self.cache_dir, "results")
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if name.startswith("."):
                continue  # our own temporary files
            path = os.path.join(d, name)
            a = _read_attachment(path)
            if a is None or (container_id is not None and a.container_id != container_id):
                continue
            out.append(a)
        return out

    # -- internals --------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _resolve(self, ns: NsLike) -> _Target:
        # The one resolver of nslib; what it opens, _Target closes.
        from .._resolve import resolve

        recorded = ""
        if isinstance(ns, str):
            ns = NetNamespace.path(ns) if ns.startswith("/") else NetNamespace.parse(ns)
        if isinstance(ns, NetNamespace):
            if ns.type == ReferenceType.NSID:
                recorded = os.path.join(self.run_dir, ns.reference)
            elif ns.type == ReferenceType.FD:
                recorded = ns.reference
        r = resolve(ns, tracker=self.tracker, run_dir=self.run_dir)
        try:
            return _Target(r.fd, r, recorded)
        except BaseException:
            r.close()
            raise

    def _plugin_conf(
        self, netlist: NetworkConfigList, pl: PluginConfig, call: _Call, prev: Result | None
    ) -> dict[str, Any]:
        conf = dict(pl.raw)
        conf["name"] = netlist.name
        conf["cniVersion"] = netlist.cni_version
        if prev is not None:
            pr = prev.to_dict(netlist.cni_version)
            for iface in pr.get("interfaces", ()):
                if _same_sandbox(iface.get("sandbox", ""), call):
                    iface["sandbox"] = call.netns
            conf["prevResult"] = pr
        else:
            conf.pop("prevResult", None)
        rc = {k: call.capability_args[k] for k in pl.capabilities if k in call.capability_args}
        if rc:
            conf["runtimeConfig"] = rc
        return conf

    def _run_plugin(
        self, netlist: NetworkConfigList, pl: PluginConfig, call: _Call, prev: Result | None
    ) -> Result | None:
        stdin = json.dumps(self._plugin_conf(netlist, pl, call, prev)).encode()
        out = self._exec(pl.type, call, stdin)
        if call.command != "ADD":
            return prev
        d = _json(pl.type, out)
        try:
            return Result.from_dict(d, cni_version=netlist.cni_version)
        except CNIError as e:
            raise PluginOutputError(pl.type, e.msg) from None

    def _env(self, call: _Call) -> dict[str, str]:
        env = {"CNI_COMMAND": call.command, "CNI_PATH": ":".join(self.plugin_dirs)}
        if call.command in ("ADD", "CHECK", "DEL"):
            env["CNI_CONTAINERID"] = call.container_id
            env["CNI_NETNS"] = call.netns
            env["CNI_IFNAME"] = call.ifname
            env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in call.args)
        # Nothing else of ours leaks in, but plugins run tools (iptables).
        env["PATH"] = self.path
        return env

    def _exec(self, plugin: str, call: _Call, stdin: bytes) -> bytes:
        path = self.find_plugin(plugin)
        if call.ns_ident is not None and not call.netns.startswith("/proc/"):
            _check_same(call.netns, call.ns_ident)
        remaining = call.deadline - time.monotonic()
        if remaining <= 0:
            raise PluginTimeoutError(plugin, call.command, 0)
        try:
            p = subprocess.Popen(
                [path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env(call),
                close_fds=True,
                cwd="/",
                # Its own process group, so a timeout kills what it started too.
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError):
            raise PluginNotFoundError(plugin, self.plugin_dirs) from None
        try:
            out, err = p.communicate(stdin, timeout=remaining)
        except subprocess.TimeoutExpired:
            _kill(p)
            raise PluginTimeoutError(plugin, call.command, remaining) from None
        except BaseException:
            _kill(p)
            raise
        if err:
            _log.debug("%s %s stderr: %s", plugin, call.command, err[-2000:])
        if p.returncode != 0:
            raise _plugin_error(plugin, call.command, p.returncode, out, err)
        return out

    def _delete(self, netlist: NetworkConfigList, call: _Call) -> None:
        cached = None
        if version_tuple(netlist.cni_version) >= (0, 4, 0):
            cached = self._cached_result(netlist, call.container_id, call.ifname)
        for pl in reversed(netlist.plugins):
            self._run_plugin(netlist, pl, call, cached)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.cache_path(netlist.name, call.container_id, call.ifname))

    def _undo_add(
        self, netlist: NetworkConfigList, call: _Call, prev: Result | None, error: BaseException
    ) -> None:
        cleanup = _Call(
            "DEL",
            call.container_id,
            call.netns,
            call.ifname,
            call.args,
            call.capability_args,
            self._deadline(None),
            call.ns_ident,
        )
        cleanup_error: BaseException | None = None
        for pl in reversed(netlist.plugins):
            # Every plugin gets its DEL even if another's fails: leave nothing.
            try:
                self._run_plugin(netlist, pl, cleanup, prev)
            except Exception as e:  # reported with the original error, never instead of it
                if cleanup_error is None:
                    cleanup_error = e
                else:
                    cleanup_error.add_note(f"also: {e}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.cache_path(netlist.name, call.container_id, call.ifname))
        if isinstance(error, CNIError):
            error.cleaned_up = cleanup_error is None
            error.cleanup_error = cleanup_error
        if cleanup_error is not None:
            error.add_note(f"cleanup DEL after the failed ADD also failed: {cleanup_error}")
        else:
            error.add_note("the failed ADD was undone (DEL ran for the whole list)")

    def _cache_write(
        self, netlist: NetworkConfigList, call: _Call, result: Result, netns: str
    ) -> None:
        rec: dict[str, Any] = {
            "kind": _CACHE_KIND,
            "containerId": call.container_id,
            # libcni's Config is a []byte, which Go's JSON writes as base64.
            "config": base64.b64encode(netlist.raw).decode(),
            "ifName": call.ifname,
            "networkName": netlist.name,
        }
        if netns:
            rec["netns"] = netns
        if call.args:
            rec["cniArgs"] = [list(p) for p in call.args]
        if call.capability_args:
            rec["capabilityArgs"] = call.capability_args
        rec["result"] = result.to_dict()
        path = self.cache_path(netlist.name, call.container_id, call.ifname)
        d = os.path.dirname(path)
        os.makedirs(d, mode=0o700, exist_ok=True)
        tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.{id(call):x}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(rec).encode())
            os.replace(tmp, path)  # readers never see half a record
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _cached_result(
        self, netlist: NetworkConfigList, container_id: str, ifname: str
    ) -> Result | None:
        path = self.cache_path(netlist.name, container_id, ifname)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None  # as libcni: no cache entry is not an error
        try:
            d = json.loads(data)
            raw = d.get("result") if d.get("kind") == _CACHE_KIND else d  # else a legacy file
            if raw is None:
                return None
            return Result.from_dict(raw).convert(netlist.cni_version)
        except (ValueError, AttributeError, CNIError) as e:
            _log.warning("ignoring unreadable CNI cache entry %s: %s", path, e)
            return None


def _read_attachment(path: str) -> Attachment | None:
    try:
        with open(path, "rb") as f:
            d = json.loads(f.read())
        if not isinstance(d, dict) or d.get("kind") != _CACHE_KIND:
            return None
        cid, net, ifname = d.get("containerId"), d.get("networkName"), d.get("ifName")
        if not (isinstance(cid, str) and isinstance(net, str) and isinstance(ifname, str)):
            return None
        if not net or not ifname:
            return None
        raw = d.get("result")
        result = Result.from_dict(raw) if isinstance(raw, dict) else None
        config = base64.b64decode(d.get("config") or "")
        args = tuple((str(k), str(v)) for k, v in d.get("cniArgs") or [])
        caps = d.get("capabilityArgs") or {}
        return Attachment(
            cid, net, ifname, str(d.get("netns") or ""), config, args, dict(caps), result, path
        )
    except (OSError, ValueError, TypeError, CNIError) as e:
        _log.debug("skipping cache file %s: %s", path, e)
        return None


def _same_sandbox(sandbox: str, call: _Call) -> bool:
    # Plugins compare the cached sandbox with CNI_NETNS as strings.  The ADD
    # may have named the namespace differently (its transient
    # /proc/<pid>/fd/<n>, or the name where this call has a handle): when
    # the cached path is a transient one, or still names this very
    # namespace, it is rewritten to this call's path.
    if not sandbox or not call.netns or sandbox == call.netns or call.ns_ident is None:
        return False
    if _FD_PATH_RE.fullmatch(sandbox):
        return True
    try:
        st = os.stat(sandbox)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == call.ns_ident


def _check_same(path: str, ident: tuple[int, int]) -> None:
    # The name was resolved at the start of the call; make sure it was not
    # deleted and re-created (a different namespace) before a plugin opens it.
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NamespaceNotFound(
            errno.ENOENT, f"{path} vanished during the CNI call", path
        ) from None
    if (st.st_dev, st.st_ino) != ident:
        raise NamespaceNotFound(
            errno.ESTALE, f"{path} names another namespace than at the start of the call", path
        )


def _json(plugin: str, out: bytes) -> Any:
    try:
        return json.loads(out)
    except (ValueError, UnicodeDecodeError):
        raise PluginOutputError(
            plugin, "output is not JSON", out[:200].decode("utf-8", "backslashreplace")
        ) from None


def _plugin_error(plugin: str, command: str, status: int, out: bytes, err: bytes) -> CNIError:
    e: CNIError
    try:
        d = json.loads(out)
        if not isinstance(d, dict) or not isinstance(d.get("code"), int):
            raise ValueError
        e = CNIError(d["code"], str(d.get("msg", "")), str(d.get("details", "")))
    except (ValueError, UnicodeDecodeError):
        text = (err or out)[-500:].decode("utf-8", "backslashreplace").strip()
        e = CNIError(
            ERR_RUNTIME,
            f"CNI plugin {plugin!r} failed ({command}) with exit status {status}",
            text,
        )
    else:
        e.add_note(f"from CNI plugin {plugin!r} ({command})")
    e.plugin = plugin
    return e


def _kill(p: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)
    try:
        p.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        # Something outside the group still holds the pipes: stop waiting for it.
        for s in (p.stdout, p.stderr):
            if s is not None:
                s.close()
        p.wait()


def _raise_first(errors: list[BaseException]) -> None:
    if not errors:
        return
    first = errors[0]
    for other in errors[1:]:
        first.add_note(f"also: {other}")
    raise first
