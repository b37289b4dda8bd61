"""``NsPlugin``: the Ligato vpp-agent's namespace plugin (nsplugin), in Python.

Resolve any :class:`~nslib.NetNamespace` reference to a handle, or switch
the calling thread into it::

    with nslib.NsPlugin(tracker=tracker) as plugin:
        with plugin.get_namespace_handle(nslib.NetNamespace.microservice("web")) as h:
            ...
        revert = plugin.switch_to_namespace(nslib.NetNamespace.named("blue"))
        try:
            ...  # this thread is inside "blue"
        finally:
            revert()

The plugin's *default namespace* is the one the thread calling
:meth:`NsPlugin.init` was in at that moment; ``None`` and an FD reference
with an empty path mean it, as in the vpp-agent.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from ._resolve import Tracker, parse, resolve
from .errors import (
    InvalidReference,
    NamespaceExists,
    NamespaceNotFound,
    NotANamespace,
    PluginDisabledError,
    UnavailableMicroserviceError,
)
from .handle import NsHandle
from .names import DEFAULT_RUN_DIR
from .reference import NetNamespace, ReferenceType, handle_from
from .switching import Revert, switch_to

__all__ = ["Config", "NsPlugin"]

# A concurrent creator makes the placeholder before it bind-mounts the
# namespace on it (iproute2's order): give it this long to finish.
_MOUNT_GRACE = 1.0

_DEFAULT_WHAT = "the plugin's default namespace"


@dataclass(frozen=True, slots=True)
class Config:
    """How an :class:`NsPlugin` behaves.

    :param disabled: every call raises :class:`~nslib.PluginDisabledError`
        (the vpp-agent's ``disabled: true``).
    :param create_missing: an NSID reference to a named namespace that does
        not exist creates it, as the vpp-agent does.  This is the only implicit
        creation anywhere in nslib; ``False`` turns it off (a missing name
        then raises :class:`~nslib.NamespaceNotFound`).
    :param run_dir: where named namespaces live (default ``/run/netns``,
        as ``ip netns``).
    :param microservice_timeout: how long a MICROSERVICE lookup may wait for
        the tracker's first sync before the label counts as unavailable.
    """

    disabled: bool = False
    create_missing: bool = True
    run_dir: str | None = None
    microservice_timeout: float = 5.0


class NsPlugin:
    """Resolves namespace references and switches threads into them.

    Call :meth:`init` first (or use the plugin as a context manager) and
    :meth:`close` at the end.  Thread-safe: any thread may resolve or switch
    once the plugin is initialized.

    The *tracker* (a :class:`~nslib.MicroserviceTracker`) resolves
    MICROSERVICE references.  The plugin does not start or stop it; its
    owner does.  Without one, MICROSERVICE references raise
    :class:`~nslib.UnavailableMicroserviceError`.
    """

    def __init__(self, config: Config | None = None, tracker: Tracker | None = None) -> None:
        """Make a plugin; nothing happens until :meth:`init`."""
        self._config = config if config is not None else Config()
        self._tracker = tracker
        self._lock = threading.Lock()
        self._default: NsHandle | None = None
        self._state = "new"  # new -> ready -> closed

    # -- lifecycle ------------------------------------------------------------

    @property
    def config(self) -> Config:
        """The configuration given at construction."""
        return self._config

    @property
    def tracker(self) -> Tracker | None:
        """The microservice tracker, if any."""
        return self._tracker

    @property
    def initialized(self) -> bool:
        """Whether :meth:`init` ran and :meth:`close` did not."""
        return self._state == "ready"

    def init(self) -> None:
        """Capture the calling thread's namespace as the default namespace.

        Like the vpp-agent's, a disabled plugin initializes to nothing.  Calling
        init twice is an error.

        :raises RuntimeError: already initialized, or closed.
        """
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"NsPlugin.init(): the plugin is already {self._state}")
            if not self._config.disabled:
                # Named for what it is from now on: every handle dup()ed from
                # it (and every error naming one) says "the plugin's default
                # namespace", not "the calling thread's", which is some other
                # thread's by the time it is used.
                here = NsHandle.current()
                self._default = NsHandle(here.detach(), what=_DEFAULT_WHAT)
            self._state = "ready"

    def close(self) -> None:
        """Release the default namespace.  Idempotent; the plugin is then unusable."""
        with self._lock:
            default, self._default = self._default, None
            self._state = "closed"
        if default is not None:
            default.close()

    def __enter__(self) -> NsPlugin:
        if self._state == "new":
            self.init()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        flags = " disabled" if self._config.disabled else ""
        return f"<NsPlugin {self._state}{flags}>"

    def _check(self, call: str) -> None:
        if self._config.disabled:
            raise PluginDisabledError(f"NsPlugin.{call}(): the namespace plugin is disabled")
        if self._state != "ready":
            if self._state == "new":
                raise RuntimeError(f"NsPlugin.{call}() before init(): call plugin.init() first")
            raise RuntimeError(f"NsPlugin.{call}() after close()")

    # -- resolving --------------------------------------------------------------

    def default_namespace(self) -> NsHandle:
        """A new handle on the default namespace (captured at :meth:`init`).

        :raises PluginDisabledError: the plugin is disabled.
        """
        self._check("default_namespace")
        with self._lock:
            if self._default is None:
                raise RuntimeError("NsPlugin.default_namespace() after close()")
            return self._default.dup()

    def get_namespace_handle(
        self,
        ns: NetNamespace | str | None,
        *,
        create_missing: bool | None = None,
        timeout: float | None = None,
    ) -> NsHandle:
        """Resolve *ns* to a new :class:`~nslib.NsHandle`; the caller closes it.

        * ``None``, or an FD reference with an empty path: the default namespace;
        * a string: read by the rule every nslib call uses (``/...`` a path,
          ``name:``/``pid:``/``path:``/``ms:`` what they say, any other
          string a name), then as below;
        * PID: the namespace of that process; FD: the namespace file at that path;
        * NSID: the named namespace, created if missing when *create_missing*
          (default: the plugin's :attr:`Config.create_missing`) is true;
        * MICROSERVICE: the namespace of the container holding the label,
          through the tracker.

        *timeout* bounds the waiting a lookup may do: for the tracker's first
        sync, and for a named namespace whose placeholder exists but is not
        mounted yet (a concurrent creator).  Default:
        :attr:`Config.microservice_timeout` and one second.

        :raises PluginDisabledError: the plugin is disabled.
        :raises NamespaceNotFound: the process, file or name does not exist
            (and is not to be created).
        :raises UnavailableMicroserviceError: no running container holds the label,
            or there is no tracker.
        :raises NotANamespace: the name is taken by something that is not a
            mounted namespace (a stale placeholder, a dangling symlink) and
            still is after *timeout*.
        :raises InvalidReference: an UNDEFINED reference.
        """
        self._check("get_namespace_handle")
        if isinstance(ns, str):
            ns = parse(ns)
        if ns is None:
            return self.default_namespace()
        if not isinstance(ns, NetNamespace):
            raise InvalidReference(
                f"expected a NetNamespace, a reference string or None, not {type(ns).__name__}"
            )
        t = ns.type
        if t == ReferenceType.FD and not ns.reference:
            return self.default_namespace()
        if t == ReferenceType.NSID:
            create = self._config.create_missing if create_missing is None else create_missing
            grace = _MOUNT_GRACE if timeout is None else timeout
            return self._named(ns.reference, create, grace)
        if t == ReferenceType.MICROSERVICE:
            if self._tracker is None:
                raise UnavailableMicroserviceError(
                    f"{ns}: this NsPlugin has no microservice tracker "
                    "(NsPlugin(tracker=MicroserviceTracker()))"
                )
            wait = self._config.microservice_timeout if timeout is None else timeout
            with resolve(ns, tracker=self._tracker, timeout=wait) as res:
                return handle_from(res)
        with resolve(ns, run_dir=self._config.run_dir) as res:  # PID, FD; UNDEFINED refused
            return handle_from(res)

    def _named(self, name: str, create: bool, grace: float) -> NsHandle:
        run_dir = self._config.run_dir
        deadline = time.monotonic() + grace
        while True:
            try:
                return NsHandle.from_name(name, run_dir=run_dir)
            except NamespaceNotFound:
                if not create:
                    raise
            except NotANamespace:
                # Someone created the placeholder and has not mounted it yet,
                # or a stale placeholder: wait a little, then report.
                if time.monotonic() >= deadline:
                    raise
                self._wait_mounted(name, deadline)
                continue
            from .named import create as create_named  # only now: most never create

            try:
                return create_named(name, run_dir=run_dir)
            except NamespaceExists as e:
                # Usually a race with another creator: open theirs.  But the
                # name can also be taken by something open() cannot follow
                # and O_EXCL will not replace (a dangling symlink): then this
                # would loop for ever, so the same deadline applies here.
                if time.monotonic() >= deadline:
                    path = os.path.join(run_dir or DEFAULT_RUN_DIR, name)
                    raise NotANamespace(
                        f"name:{name}: {path} exists but does not open as a namespace "
                        "(a dangling symlink or something else that is not a namespace); "
                        "remove it to use the name"
                    ) from e
                self._wait_mounted(name, deadline)

    def _wait_mounted(self, name: str, deadline: float) -> None:
        # Woken by the mount itself (nslib.monitor), not by a timer.
        from .monitor import wait_for_name

        wait_for_name(name, run_dir=self._config.run_dir, timeout=deadline - time.monotonic())

    # -- switching --------------------------------------------------------------

    def switch_to_namespace(self, ns: NetNamespace | str | None) -> Revert:
        """Move the calling thread into *ns*; return the callable that moves it back.

        The vpp-agent's ``SwitchToNamespace``: the caller must call the returned
        :class:`~nslib.Revert` on the same thread (or use it as a context
        manager).  Resolution follows :meth:`get_namespace_handle`.

        :raises PluginDisabledError: the plugin is disabled.
        :raises NamespaceRestoreError: the thread is poisoned by an earlier
            failed restore.
        """
        self._check("switch_to_namespace")
        with self.get_namespace_handle(ns) as handle:
            # The thread keeps the namespace once it is in; the fd is not
            # needed for the way back (the C core saved the thread's home).
            return switch_to(handle)
