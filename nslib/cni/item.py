"""A CNI attachment as a declared configurator item (:meth:`nslib.Configurator.add_cni`).

The item attaches its namespace to a CNI network whenever that namespace
exists, like the configurator's veth or route items: PENDING until the
microservice starts (or the named namespace appears), ADD then, DEL when the
namespace goes away (so the address reservation and the host side are given
back at once, not at the next start), ADD again in the next namespace, DEL
on :meth:`~nslib.Configurator.remove`.

The plugins run in the configurator's default namespace (the plugin's), as a
runtime's plugins run in the host's: that is where ``bridge`` makes its
bridge, ``host-local`` keeps nothing namespaced, ``firewall`` writes its
rules.  Each call runs on a short-lived thread inside that namespace
(:func:`nslib.run_in`), so the plugin process starts there.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..configurator.items import ApplyContext, ConfigItem, Target, target_name
from ..handle import NsHandle
from ..reference import NetNamespace
from ..switching import run_in
from .config import NetworkConfigList, version_tuple
from .errors import CNIArgumentError
from .result import Result
from .runtime import Runtime, _check_ids

__all__ = ["CNIItem", "default_container_id"]

_log = logging.getLogger("nslib.cni")


def default_container_id(ref: NetNamespace | str) -> str:
    """The container ID nslib uses for *ref* when none is given.

    Stable (a hash of the reference's text), so the same reference gets the
    same cache entry and address reservation across processes; ``nslib cni``
    derives it the same way from its REF argument.
    """
    return "nslib-" + hashlib.sha256(str(ref).encode()).hexdigest()[:16]


class CNIItem(ConfigItem):
    """A CNI attachment of ``ns`` to a network (see the module documentation).

    Made by :meth:`nslib.Configurator.add_cni`.

    :ivar netlist: the network.
    :ivar ifname: the interface name inside ``ns`` (``CNI_IFNAME``).
    :ivar container_id: ``CNI_CONTAINERID``.
    :ivar runtime: the :class:`Runtime` the plugins run through.
    """

    kind = "cni"

    def __init__(
        self,
        netlist: NetworkConfigList | str | os.PathLike[str],
        ns: Target,
        ifname: str = "eth0",
        container_id: str | None = None,
        *,
        runtime: Runtime | None = None,
        args: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        capability_args: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> None:
        if ns is None:
            raise CNIArgumentError(
                "a CNI attachment needs a namespace of its own (ns=None is the default "
                "namespace, where the plugins run)"
            )
        super().__init__(ns)
        if not isinstance(netlist, NetworkConfigList):
            netlist = NetworkConfigList.load(netlist)
        self.netlist = netlist
        self.container_id = default_container_id(ns) if container_id is None else container_id
        _check_ids(self.container_id, ifname)
        self.ifname = ifname
        self.runtime = Runtime() if runtime is None else runtime
        self._args = args
        self._capability_args = dict(capability_args or {})
        self._timeout = timeout
        #: The namespace (dev, ino) of the attachment this item made and has
        #: not deleted yet; touched on the item's worker thread only.
        self._attached: tuple[int, int] | None = None
        self._result: Result | None = None

    @property
    def result(self) -> Result | None:
        """The result of the attachment in place (the last ADD), ``None`` when there is none."""
        return self._result

    def namespaces(self) -> tuple[Target, ...]:
        """The attached namespace, then the default one (where the plugins run)."""
        return (self._ns, None)

    def describe(self) -> str:
        """What the item declares, in one line."""
        return f"cni {self.netlist.name} {self.ifname} in {target_name(self._ns)}"

    # -- what the configurator calls --------------------------------------------------

    def apply(self, ctx: ApplyContext) -> None:
        """ADD, unless the attachment is there already and passes CHECK.

        An attachment this item made in a namespace that is gone (a restart
        the configurator saw only as a new namespace) is deleted first.  An
        attachment found in the cache (made by an earlier process with the
        same container ID) is kept if CHECK passes, else deleted and made
        again.
        """
        host, target = ctx.handle(None), ctx.handle(self._ns)
        ident = target.ns_id
        if self._attached is not None and self._attached != ident:
            self._delete(host, None)
        ours = self._attached == ident
        cached = self.runtime.cached_result(self.netlist, self.container_id, self.ifname)
        if ours or cached is not None:
            if self._healthy(host, target, ours):
                self._attached = ident
                if self._result is None:
                    self._result = cached
                return
            self._delete(host, target)
        self._result = self._call(host, self.runtime.add, target)
        self._attached = ident

    def undo(self, ctx: ApplyContext) -> None:
        """DEL in the namespace the attachment was made in."""
        if self._attached is not None:
            self._delete(ctx.handle(None), ctx.handle(self._ns))

    def release(self, ctx: ApplyContext) -> None:
        """DEL without a namespace (it is gone): the plugins give back addresses and host links."""
        if self._attached is not None:
            self._delete(ctx.handle(None), None)

    # -- internals --------------------------------------------------------------------

    def _call(self, host: NsHandle, fn: Any, target: NsHandle | None) -> Any:
        kw = {
            "args": self._args,
            "capability_args": self._capability_args,
            "timeout": self._timeout,
        }
        return run_in(host, fn, self.netlist, self.container_id, target, self.ifname, **kw)

    def _healthy(self, host: NsHandle, target: NsHandle, ours: bool) -> bool:
        nl = self.netlist
        if version_tuple(nl.cni_version) < (0, 4, 0) or nl.disable_check:
            return ours  # nothing to ask: trust only what this item made
        try:
            self._call(host, self.runtime.check, target)
        except Exception as e:
            _log.info("%r: CHECK failed, adding again: %s", self, e)
            return False
        return True

    def _delete(self, host: NsHandle, target: NsHandle | None) -> None:
        self._call(host, self.runtime.delete, target)
        self._attached = None
        self._result = None
