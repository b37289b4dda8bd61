"""The CNI errors: all :class:`~nslib.errors.CNIError`, each also the builtin it behaves as."""

from __future__ import annotations

import errno

from ..errors import CNIError

__all__ = [
    "CNIArgumentError",
    "CNIConfigError",
    "CNIError",
    "IncompatibleVersionError",
    "PluginNotFoundError",
    "PluginOutputError",
    "PluginTimeoutError",
]

#: The spec's well-known error codes.
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
#: Not from the spec: a runtime-side failure that has no spec code
#: (timeout, missing binary); plugins use 100 and above for their own.
ERR_RUNTIME = 999


class CNIConfigError(CNIError, ValueError):
    """A network configuration is invalid.

    :ivar path: the file it came from, or ``None``.
    :ivar field: the offending field (``"plugins[1].type"``), or ``""``.
    """

    def __init__(
        self,
        msg: str,
        *,
        path: str | None = None,
        field: str = "",
        code: int = ERR_INVALID_CONFIG,
    ) -> None:
        where = path or "network configuration"
        text = f"{where}: {field}: {msg}" if field else f"{where}: {msg}"
        super().__init__(code, text)
        self.path = path
        self.field = field


class IncompatibleVersionError(CNIConfigError):
    """A ``cniVersion`` nslib, or the plugin, does not speak (spec code 1)."""

    def __init__(self, msg: str, *, path: str | None = None, field: str = "cniVersion") -> None:
        super().__init__(msg, path=path, field=field, code=ERR_INCOMPATIBLE_VERSION)


class PluginNotFoundError(FileNotFoundError, CNIError):
    """No executable plugin of that type in the plugin directories."""

    def __init__(self, plugin: str, dirs: tuple[str, ...]) -> None:
        msg = f"CNI plugin {plugin!r} not found in {':'.join(dirs) or '(no directories)'}"
        FileNotFoundError.__init__(self, errno.ENOENT, msg)
        self.code = ERR_RUNTIME
        self.msg = msg
        self.details = ""
        self.plugin = plugin


class PluginTimeoutError(TimeoutError, CNIError):
    """A plugin did not finish in time; it (and its process group) was killed."""

    def __init__(self, plugin: str, command: str, timeout: float) -> None:
        msg = f"CNI plugin {plugin!r} did not finish {command} within {timeout:g} s (killed)"
        TimeoutError.__init__(self, errno.ETIMEDOUT, msg)
        self.code = ERR_RUNTIME
        self.msg = msg
        self.details = ""
        self.plugin = plugin


class PluginOutputError(CNIError, ValueError):
    """A plugin printed something that is not the JSON the spec asks for (code 6)."""

    def __init__(self, plugin: str, msg: str, details: str = "") -> None:
        super().__init__(ERR_DECODE, f"CNI plugin {plugin!r}: {msg}", details)
        self.plugin = plugin


class CNIArgumentError(CNIError, ValueError):
    """A container ID, interface name or ``CNI_ARGS`` pair the spec does not allow (code 4)."""

    def __init__(self, msg: str) -> None:
        super().__init__(ERR_INVALID_ENV, msg)


def version_tuple(v: str) -> tuple[int, int, int]:
    """``"0.4.0"`` -> ``(0, 4, 0)``.

    :raises IncompatibleVersionError: not a spec version string.
    """
    parts = v.split(".") if isinstance(v, str) else []
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise IncompatibleVersionError(f"not a CNI version: {v!r}")
    return (int(parts[0]), int(parts[1]), int(parts[2]))
