"""nslib: Linux network namespaces for Python, thread-correct and fork-free.

Namespaces are per *thread*.  Everything here means the calling thread,
never the process:

>>> import nslib
>>> with nslib.NsHandle.new() as ns, nslib.entered(ns):
...     pass  # this thread is inside ns; other threads are not

See :func:`entered`, :func:`switch_to`, :func:`run_in`, :func:`pinned` and
:func:`socket_in` for running code inside a namespace, :mod:`nslib.named`
for ``ip netns``-compatible named namespaces, and :class:`NetNamespace` for
references by name, PID, thread, path or microservice label.
"""

from .errors import (
    BadFdError,
    BadPathError,
    ClosedHandleError,
    DockerUnavailableError,
    InvalidName,
    InvalidReference,
    LinkExists,
    LinkNotFound,
    NamespaceExists,
    NamespaceJoinError,
    NamespaceNotFound,
    NamespaceRestoreError,
    NotANamespace,
    NotSwitchableError,
    NslibError,
    PluginDisabledError,
    SharedNamespaceError,
    SpawnError,
    UnavailableMicroserviceError,
)
from .handle import NsHandle
from .reference import NetNamespace, ReferenceType, open_namespace
from .switching import (
    PinnedExecutor,
    Revert,
    entered,
    pinned,
    run_in,
    run_in_async,
    socket_in,
    switch_depth,
    switch_to,
    thread_poisoned,
)

__version__: str  # the installed distribution's version; see __getattr__

# Heavier parts (docker, pyroute2) load on first use, so `import nslib` and
# the switching hot path never pay for them.  name -> (module, attribute);
# an attribute of None exports the module itself.
_LAZY: dict[str, tuple[str, str | None]] = {
    "EventKind": ("microservice", "EventKind"),
    "Microservice": ("microservice", "Microservice"),
    "MicroserviceEvent": ("microservice", "MicroserviceEvent"),
    "MicroserviceTracker": ("microservice", "MicroserviceTracker"),
    "DockerSource": ("microservice", "DockerSource"),
    "PodmanSource": ("microservice", "PodmanSource"),
    "ContainerdSource": ("microservice", "ContainerdSource"),
    "named": ("named", None),
    "Config": ("plugin", "Config"),
    "NsPlugin": ("plugin", "NsPlugin"),
    "netlink": ("netlink", None),
    "Configurator": ("configurator", "Configurator"),
    "ConfigItem": ("configurator", "ConfigItem"),
    "ItemStatus": ("configurator", "ItemStatus"),
    "popen": ("process", "popen"),
    "run": ("process", "run"),
    "run_all": ("_run_all", "run_all"),
    "monitor": ("monitor", None),
    "NamespaceMonitor": ("monitor", "NamespaceMonitor"),
    "process": ("process", None),
    "inventory": ("inventory", None),
    # Every kind of namespace: kinds, spawning into several, listing them all.
    "NsKind": ("kinds", "NsKind"),
    "Pidfd": ("kinds", "Pidfd"),
    "Target": ("kinds", "Target"),
    "kinds": ("kinds", None),
    "spawn": ("spawn", None),
    "lsns": ("lsns", None),
}


def __getattr__(name: str) -> object:
    if name == "__version__":
        # The version is written once, in pyproject.toml; the installed
        # metadata carries it (read lazily: importlib.metadata costs ~30 ms).
        from importlib.metadata import version

        found = globals()[name] = version("nslib")
        return found
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'nslib' has no attribute {name!r}") from None
    import importlib

    mod = importlib.import_module(f"nslib.{module}")
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"__version__"})


__all__ = [
    "BadFdError",
    "BadPathError",
    "ClosedHandleError",
    "Config",
    "ConfigItem",
    "Configurator",
    "ContainerdSource",
    "DockerSource",
    "DockerUnavailableError",
    "EventKind",
    "InvalidName",
    "InvalidReference",
    "ItemStatus",
    "LinkExists",
    "LinkNotFound",
    "Microservice",
    "MicroserviceEvent",
    "MicroserviceTracker",
    "NamespaceExists",
    "NamespaceJoinError",
    "NamespaceMonitor",
    "NamespaceNotFound",
    "NamespaceRestoreError",
    "NetNamespace",
    "NotANamespace",
    "NotSwitchableError",
    "NsHandle",
    "NsKind",
    "NsPlugin",
    "NslibError",
    "Pidfd",
    "PinnedExecutor",
    "PluginDisabledError",
    "PodmanSource",
    "ReferenceType",
    "Revert",
    "SharedNamespaceError",
    "SpawnError",
    "Target",
    "UnavailableMicroserviceError",
    "__version__",
    "entered",
    "inventory",
    "kinds",
    "lsns",
    "monitor",
    "named",
    "netlink",
    "open_namespace",
    "pinned",
    "popen",
    "process",
    "run",
    "run_all",
    "run_in",
    "run_in_async",
    "socket_in",
    "spawn",
    "switch_depth",
    "switch_to",
    "thread_poisoned",
]
