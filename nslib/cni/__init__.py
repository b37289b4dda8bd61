"""CNI for nslib: run the standard plugins against any namespace, and write plugins in Python.

* :class:`Runtime` runs plugin chains (ADD, CHECK, DEL, GC, STATUS,
  VERSION) as libcni does, against any namespace nslib resolves, with
  libcni's result cache layout.
* :class:`NetworkConfigList`, :func:`load`, :func:`load_dir` read network
  configurations.
* :class:`Result` is a plugin's result in any spec version.
* :class:`CNIItem` is an attachment declared to a :class:`~nslib.Configurator`
  (:meth:`~nslib.Configurator.add_cni`): added whenever its namespace exists.
* :mod:`nslib.cni.plugin` is the skeleton for writing plugins (Go's
  ``pkg/skel`` plus ``pkg/ns``).

Attributes load on first use, so a plugin importing :mod:`nslib.cni.plugin`
pays only for what it needs.
"""

from __future__ import annotations

from ..errors import CNIError

# name -> module; every name is loaded on first use.
_LAZY: dict[str, str] = {
    "Attachment": "runtime",
    "CNIItem": "item",
    "CNIArgumentError": "errors",
    "CNIConfigError": "errors",
    "DNS": "result",
    "IPConfig": "result",
    "IncompatibleVersionError": "errors",
    "Interface": "result",
    "NetworkConfigList": "config",
    "PluginConfig": "config",
    "PluginInfo": "runtime",
    "PluginNotFoundError": "errors",
    "PluginOutputError": "errors",
    "PluginTimeoutError": "errors",
    "Result": "result",
    "Route": "result",
    "Runtime": "runtime",
    "SUPPORTED_VERSIONS": "config",
    "default_container_id": "item",
    "load": "config",
    "load_dir": "config",
}


def __getattr__(name: str) -> object:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'nslib.cni' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(f"nslib.cni.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["CNIError", *sorted(_LAZY)]
