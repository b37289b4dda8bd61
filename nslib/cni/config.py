"""CNI network configurations: ``.conflist`` files, legacy ``.conf`` files, directories.

Follows the CNI specification's configuration format and libcni's loader
where the spec leaves room: a directory is read in lexical order of file
names (libcni ``ConfFiles``), ``.conf`` and ``.json`` files are single-plugin
legacy configurations that become a list of one, ``.conflist`` files are lists.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import CNIConfigError, IncompatibleVersionError, version_tuple

__all__ = [
    "SUPPORTED_VERSIONS",
    "NetworkConfigList",
    "PluginConfig",
    "load",
    "load_dir",
    "version_tuple",
]

#: Every spec version nslib speaks, oldest first.
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

#: libcni ``ValidateNetworkName`` / ``ValidateContainerID``.
NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
#: A plugin type is a file name in a plugin directory, nothing more.
_TYPE_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")

_EXTENSIONS = (".conf", ".conflist", ".json")


def _check_version(v: object, path: str | None, fld: str) -> str:
    if not isinstance(v, str):
        raise CNIConfigError(f"must be a string, not {type(v).__name__}", path=path, field=fld)
    if v not in SUPPORTED_VERSIONS:
        raise IncompatibleVersionError(
            f"unknown CNI version {v!r} (nslib speaks {', '.join(SUPPORTED_VERSIONS)})",
            path=path,
            field=fld,
        )
    return v


@dataclass(frozen=True)
class PluginConfig:
    """One plugin of a list: its ``type`` and its whole JSON object.

    :ivar type: the plugin binary's name (``"bridge"``).
    :ivar raw: the plugin's configuration as written (a copy; never mutated).
    :ivar capabilities: the capabilities it declares enabled (``portMappings``, ...).
    """

    type: str
    raw: Mapping[str, Any]
    capabilities: frozenset[str] = frozenset()


@dataclass(frozen=True)
class NetworkConfigList:
    """A network: a name, a spec version and a chain of plugins.

    Build one with :meth:`load`, :meth:`from_dict`, :meth:`from_bytes` or
    :func:`load_dir`.  ``raw`` is what the runtime stores in its cache (as
    libcni does, the file's own bytes when loaded from a file), so a runtime
    that deletes the attachment later uses exactly this configuration.

    :ivar name: the network name (``name``).
    :ivar cni_version: the spec version of the list (``cniVersion``).
    :ivar plugins: the chain, in ADD order.
    :ivar disable_check: ``disableCheck``: CHECK is a no-op.
    :ivar disable_gc: ``disableGC``: GC is a no-op.
    :ivar source: the file it was loaded from, or ``None``.
    :ivar raw: the configuration bytes (JSON).
    """

    name: str
    cni_version: str
    plugins: tuple[PluginConfig, ...]
    disable_check: bool = False
    disable_gc: bool = False
    source: str | None = None
    raw: bytes = field(default=b"", repr=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str | None = None) -> NetworkConfigList:
        """A list from its JSON object.

        A legacy single-plugin object (``type`` and no ``plugins``) becomes a
        list of one.

        :raises CNIConfigError: a missing or malformed field (named in the
            message and in ``.field``).
        :raises IncompatibleVersionError: an unknown ``cniVersion``.
        """
        return cls._parse(d, source, json.dumps(d, separators=(",", ":")).encode())

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str | None = None) -> NetworkConfigList:
        """A list from JSON bytes (a ``.conflist`` or a legacy ``.conf``).

        :raises CNIConfigError: not JSON, or invalid (see :meth:`from_dict`).
        """
        try:
            d = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise CNIConfigError(f"not valid JSON: {e}", path=source) from None
        return cls._parse(d, source, bytes(data))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NetworkConfigList:
        """Read a ``.conflist`` (or a legacy ``.conf``) file.

        :raises CNIConfigError: unreadable, not JSON, or invalid.
        :raises FileNotFoundError: no such file.
        """
        p = os.fspath(path)
        with open(p, "rb") as f:
            data = f.read()
        return cls.from_bytes(data, source=p)

    @classmethod
    def _parse(cls, d: object, path: str | None, raw: bytes) -> NetworkConfigList:
        if not isinstance(d, Mapping):
            raise CNIConfigError("must be a JSON object", path=path)
        if "plugins" not in d:
            if "type" not in d:
                raise CNIConfigError("neither 'plugins' nor 'type' is set", path=path)
            # A legacy single-plugin configuration; spec < 0.3 allowed no version.
            version = _check_version(d.get("cniVersion", "0.1.0"), path, "cniVersion")
            plugins: Sequence[object] = [d]
        else:
            if "cniVersion" not in d:
                raise CNIConfigError("missing", path=path, field="cniVersion")
            version = _check_version(d["cniVersion"], path, "cniVersion")
            plugins = d["plugins"]
            if not isinstance(plugins, list) or not plugins:
                raise CNIConfigError("must be a non-empty list", path=path, field="plugins")
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise CNIConfigError("missing or not a string", path=path, field="name")
        if not NAME_RE.fullmatch(name):
            raise CNIConfigError(
                f"{name!r} is not a valid network name (letters, digits, '_', '.', '-')",
                path=path,
                field="name",
            )
        parsed = tuple(_plugin(p, i, path) for i, p in enumerate(plugins))
        flags = {}
        for key in ("disableCheck", "disableGC"):
            v = d.get(key, False)
            if not isinstance(v, bool):
                raise CNIConfigError("must be true or false", path=path, field=key)
            flags[key] = v
        return cls(
            name=name,
            cni_version=version,
            plugins=parsed,
            disable_check=flags["disableCheck"],
            disable_gc=flags["disableGC"],
            source=path,
            raw=raw,
        )

    def to_dict(self) -> dict[str, Any]:
        """The list's JSON object (as stored in :attr:`raw`)."""
        d: Any = json.loads(self.raw)
        assert isinstance(d, dict)
        return d


def _plugin(p: object, i: int, path: str | None) -> PluginConfig:
    where = f"plugins[{i}]"
    if not isinstance(p, Mapping):
        raise CNIConfigError("must be a JSON object", path=path, field=where)
    t = p.get("type")
    if not isinstance(t, str) or not t:
        raise CNIConfigError("missing or not a string", path=path, field=f"{where}.type")
    if not _TYPE_RE.fullmatch(t):
        # Never a path: the type names a binary inside the plugin directories.
        raise CNIConfigError(f"{t!r} is not a plugin name", path=path, field=f"{where}.type")
    caps = p.get("capabilities", {})
    if not isinstance(caps, Mapping) or not all(isinstance(v, bool) for v in caps.values()):
        raise CNIConfigError(
            "must be an object of booleans", path=path, field=f"{where}.capabilities"
        )
    return PluginConfig(
        type=t, raw=dict(p), capabilities=frozenset(k for k, v in caps.items() if v)
    )


def load(path: str | os.PathLike[str]) -> NetworkConfigList:
    """:meth:`NetworkConfigList.load`."""
    return NetworkConfigList.load(path)


def load_dir(
    path: str | os.PathLike[str], *, skip_invalid: bool = False
) -> list[NetworkConfigList]:
    """Every network configured in a directory such as ``/etc/cni/net.d``.

    Files ending in ``.conflist``, ``.conf`` or ``.json`` are read in lexical
    order of their names, as libcni's ``ConfFiles`` does; sub-directories and
    other files are ignored.  When two files name the same network, the first
    wins (the rest are skipped), as runtimes do.

    :param skip_invalid: skip invalid files instead of raising.
    :raises CNIConfigError: a file is invalid (unless *skip_invalid*).
    :raises FileNotFoundError: no such directory.
    """
    d = os.fspath(path)
    out: list[NetworkConfigList] = []
    seen: set[str] = set()
    for name in sorted(os.listdir(d)):
        if not name.endswith(_EXTENSIONS):
            continue
        full = os.path.join(d, name)
        if not os.path.isfile(full):
            continue
        try:
            nl = NetworkConfigList.load(full)
        except (CNIConfigError, OSError):
            if skip_invalid:
                continue
            raise
        if nl.name in seen:
            continue
        seen.add(nl.name)
        out.append(nl)
    return out
