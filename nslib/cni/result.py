"""CNI results: the spec's ``interfaces``, ``ips``, ``routes`` and ``dns``, in every version.

A :class:`Result` holds the fields of the current spec (1.x) and converts
from and to the older layouts where the spec says how:

* 0.3.0-0.4.0 have the same shape plus a ``version`` (``"4"``/``"6"``) on
  each IP;
* 0.1.0-0.2.0 have ``ip4`` and ``ip6`` objects, each with one address, its
  gateway and its routes, and no interfaces.  Going down to them keeps the
  first address of each family (as libcni does).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Not from .config: a plugin process would load the config parser for one function.
from .errors import CNIError, IncompatibleVersionError, version_tuple

__all__ = ["DNS", "IPConfig", "Interface", "Result", "Route"]


def _bad(msg: str) -> CNIError:
    return CNIError(6, f"malformed CNI result: {msg}")


def _str(d: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    v = d.get(key, "")
    if v is None:
        v = ""
    if not isinstance(v, str) or (required and not v):
        raise _bad(f"{where}.{key} must be a {'non-empty ' if required else ''}string")
    return v


def _obj(v: object, where: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise _bad(f"{where} must be an object")
    return v


@dataclass
class Interface:
    """An interface a plugin created or touched.

    :ivar sandbox: the namespace path it lives in; ``""`` for the host.
    :ivar extra: any other fields (``mtu``, ``socketPath``, ...), kept as given.
    """

    name: str
    mac: str = ""
    sandbox: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The spec's JSON object."""
        d: dict[str, Any] = {"name": self.name}
        if self.mac:
            d["mac"] = self.mac
        if self.sandbox:
            d["sandbox"] = self.sandbox
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: object, where: str = "interfaces[]") -> Interface:
        """From the spec's JSON object.

        :raises CNIError: malformed (code 6).
        """
        m = _obj(d, where)
        extra = {k: v for k, v in m.items() if k not in ("name", "mac", "sandbox")}
        return cls(
            _str(m, "name", where, required=True),
            _str(m, "mac", where),
            _str(m, "sandbox", where),
            extra,
        )


@dataclass
class IPConfig:
    """An address (CIDR form), its gateway, and the interface that holds it.

    :ivar interface: an index into :attr:`Result.interfaces`, or ``None``.
    """

    address: str
    gateway: str = ""
    interface: int | None = None

    @property
    def version(self) -> str:
        """``"4"`` or ``"6"`` (the field the 0.3/0.4 layout carries)."""
        return str(ipaddress.ip_interface(self.address).version)

    def to_dict(self, cni_version: str = "1.0.0") -> dict[str, Any]:
        """The spec's JSON object in *cni_version*'s layout (0.3.0 and later)."""
        d: dict[str, Any] = {}
        if version_tuple(cni_version) < (1, 0, 0):
            d["version"] = self.version
        if self.interface is not None:
            d["interface"] = self.interface
        d["address"] = self.address
        if self.gateway:
            d["gateway"] = self.gateway
        return d

    @classmethod
    def from_dict(cls, d: object, where: str = "ips[]") -> IPConfig:
        """From the spec's JSON object (the ``version`` field, if any, is checked).

        :raises CNIError: malformed (code 6).
        """
        m = _obj(d, where)
        addr = _str(m, "address", where, required=True)
        try:
            iface = ipaddress.ip_interface(addr)
        except ValueError:
            raise _bad(f"{where}.address {addr!r} is not an address in CIDR form") from None
        if "version" in m and str(m["version"]) != str(iface.version):
            raise _bad(f"{where}.version {m['version']!r} does not match {addr!r}")
        idx = m.get("interface")
        if idx is not None and (isinstance(idx, bool) or not isinstance(idx, int) or idx < 0):
            raise _bad(f"{where}.interface must be a non-negative integer")
        return cls(addr, _str(m, "gateway", where), idx)


@dataclass
class Route:
    """A route: ``dst`` in CIDR form and its ``gw``.

    :ivar extra: any other fields (``mtu``, ``priority``, ``table``, ...), kept as given.
    """

    dst: str
    gw: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The spec's JSON object."""
        d: dict[str, Any] = {"dst": self.dst}
        if self.gw:
            d["gw"] = self.gw
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: object, where: str = "routes[]") -> Route:
        """From the spec's JSON object.

        :raises CNIError: malformed (code 6).
        """
        m = _obj(d, where)
        extra = {k: v for k, v in m.items() if k not in ("dst", "gw")}
        return cls(_str(m, "dst", where, required=True), _str(m, "gw", where), extra)

    @property
    def family(self) -> int:
        """4 or 6."""
        return ipaddress.ip_network(self.dst, strict=False).version


@dataclass
class DNS:
    """The spec's ``dns`` object."""

    nameservers: list[str] = field(default_factory=list)
    domain: str = ""
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The spec's JSON object (empty fields left out)."""
        d: dict[str, Any] = {}
        if self.nameservers:
            d["nameservers"] = list(self.nameservers)
        if self.domain:
            d["domain"] = self.domain
        if self.search:
            d["search"] = list(self.search)
        if self.options:
            d["options"] = list(self.options)
        return d

    @classmethod
    def from_dict(cls, d: object) -> DNS:
        """From the spec's JSON object.

        :raises CNIError: malformed (code 6).
        """
        if d is None:
            return cls()
        m = _obj(d, "dns")

        def strs(key: str) -> list[str]:
            v = m.get(key) or []
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise _bad(f"dns.{key} must be a list of strings")
            return list(v)

        return cls(strs("nameservers"), _str(m, "domain", "dns"), strs("search"), strs("options"))


_KNOWN = ("cniVersion", "interfaces", "ips", "routes", "dns", "ip4", "ip6")


@dataclass
class Result:
    """A plugin's (or a whole list's) result.

    Fields follow the current spec whatever the version it was read in;
    :meth:`to_dict` writes any version.

    :ivar cni_version: the version it was produced in (and :meth:`to_dict`'s default).
    :ivar extra: top-level fields the spec does not define, kept as given.
    """

    cni_version: str = "1.0.0"
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: DNS = field(default_factory=DNS)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: object, *, cni_version: str | None = None) -> Result:
        """Parse a result in any spec version.

        :param cni_version: the version to assume when the object has no
            ``cniVersion`` (libcni assumes 0.1.0).
        :raises CNIError: malformed (code 6).
        :raises IncompatibleVersionError: an unknown ``cniVersion``.
        """
        m = _obj(d, "result")
        ver = m.get("cniVersion", cni_version or "0.1.0")
        if not isinstance(ver, str):
            raise _bad("cniVersion must be a string")
        vt = version_tuple(ver)
        if vt > (1, 1, 0):
            raise IncompatibleVersionError(f"result version {ver!r} is newer than nslib speaks")
        extra = {k: v for k, v in m.items() if k not in _KNOWN}
        r = cls(cni_version=ver, dns=DNS.from_dict(m.get("dns")), extra=extra)
        if vt < (0, 3, 0):
            for fam in ("ip4", "ip6"):
                if m.get(fam) is None:
                    continue
                o = _obj(m[fam], fam)
                r.ips.append(IPConfig.from_dict({"address": o.get("ip"), **_gw(o)}, fam))
                for i, rt in enumerate(o.get("routes") or []):
                    r.routes.append(Route.from_dict(rt, f"{fam}.routes[{i}]"))
            return r
        for key in ("interfaces", "ips", "routes"):
            v = m.get(key) or []
            if not isinstance(v, list):
                raise _bad(f"{key} must be a list")
        r.interfaces = [
            Interface.from_dict(x, f"interfaces[{i}]")
            for i, x in enumerate(m.get("interfaces") or [])
        ]
        r.ips = [IPConfig.from_dict(x, f"ips[{i}]") for i, x in enumerate(m.get("ips") or [])]
        r.routes = [Route.from_dict(x, f"routes[{i}]") for i, x in enumerate(m.get("routes") or [])]
        for i, ip in enumerate(r.ips):
            if ip.interface is not None and ip.interface >= len(r.interfaces):
                raise _bad(f"ips[{i}].interface {ip.interface} is out of range")
        return r

    def to_dict(self, cni_version: str | None = None) -> dict[str, Any]:
        """The JSON object in *cni_version*'s layout (default: :attr:`cni_version`).

        :raises IncompatibleVersionError: an unknown version.
        """
        ver = cni_version or self.cni_version
        vt = version_tuple(ver)
        if vt > (1, 1, 0):
            raise IncompatibleVersionError(f"cannot write a result in version {ver!r}")
        d: dict[str, Any] = {"cniVersion": ver}
        if vt < (0, 3, 0):
            for fam, name in ((4, "ip4"), (6, "ip6")):
                first = next((ip for ip in self.ips if ip.version == str(fam)), None)
                if first is None:
                    continue
                o: dict[str, Any] = {"ip": first.address}
                if first.gateway:
                    o["gateway"] = first.gateway
                routes = [r.to_dict() for r in self.routes if r.family == fam]
                if routes:
                    o["routes"] = routes
                d[name] = o
        else:
            if self.interfaces:
                d["interfaces"] = [i.to_dict() for i in self.interfaces]
            if self.ips:
                d["ips"] = [ip.to_dict(ver) for ip in self.ips]
            if self.routes:
                d["routes"] = [r.to_dict() for r in self.routes]
        d["dns"] = self.dns.to_dict()
        d.update(self.extra)
        return d

    def convert(self, cni_version: str) -> Result:
        """The same result, stamped with *cni_version* (a parse of :meth:`to_dict`)."""
        return Result.from_dict(self.to_dict(cni_version))


def _gw(o: Mapping[str, Any]) -> dict[str, Any]:
    return {"gateway": o["gateway"]} if o.get("gateway") else {}
