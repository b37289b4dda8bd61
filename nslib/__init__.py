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
    ClosedHandleError,
    DockerUnavailableError,
    InvalidName,
    InvalidReference,
    NamespaceExists,
    NamespaceNotFound,
    NamespaceRestoreError,
    NotANamespace,
    NslibError,
    PluginDisabledError,
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

__version__ = "0.1.0"

__all__ = [
    "ClosedHandleError",
    "DockerUnavailableError",
    "InvalidName",
    "InvalidReference",
    "NamespaceExists",
    "NamespaceNotFound",
    "NamespaceRestoreError",
    "NetNamespace",
    "NotANamespace",
    "NsHandle",
    "NslibError",
    "PinnedExecutor",
    "PluginDisabledError",
    "ReferenceType",
    "Revert",
    "UnavailableMicroserviceError",
    "__version__",
    "entered",
    "open_namespace",
    "pinned",
    "run_in",
    "run_in_async",
    "socket_in",
    "switch_depth",
    "switch_to",
    "thread_poisoned",
]
