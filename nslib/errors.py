"""Exceptions raised by nslib.

Each nslib error is also the builtin a caller would catch without knowing
nslib (``NamespaceNotFound`` is a ``FileNotFoundError``, ``InvalidName`` a
``ValueError``).  Permission problems stay ``PermissionError``.
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "BadFdError",
    "BadPathError",
    "CNIError",
    "ClosedHandleError",
    "DockerUnavailableError",
    "InvalidName",
    "InvalidReference",
    "LinkExists",
    "LinkNotFound",
    "NamespaceExists",
    "NamespaceJoinError",
    "NamespaceNotFound",
    "NamespaceRestoreError",
    "NotANamespace",
    "NotSwitchableError",
    "NslibError",
    "PluginDisabledError",
    "SharedNamespaceError",
    "SpawnError",
    "UnavailableMicroserviceError",
]


class NslibError(Exception):
    """Base class of every error nslib defines."""


class NamespaceNotFound(FileNotFoundError, NslibError):
    """The namespace, its process, thread or file does not exist."""


class NamespaceExists(FileExistsError, NslibError):
    """A named namespace of that name exists already."""


class NotANamespace(ValueError, NslibError):
    """The file or fd is not a network namespace (or not a namespace at all)."""

    #: The CLONE_NEW* type of the namespace it is instead; 0: not a namespace.
    nstype: int = 0


class InvalidReference(ValueError, NslibError):
    """A namespace reference that cannot be parsed or is malformed."""


class InvalidName(InvalidReference):
    """A namespace name that ``ip netns`` would reject."""


class ClosedHandleError(ValueError, NslibError):
    """An operation on a closed namespace handle."""


class BadFdError(OSError, NslibError):
    """An fd that cannot be one: negative, too large, or not open (errno EBADF)."""


class BadPathError(OSError, NslibError):
    """A path that cannot lead to a file (ENAMETOOLONG, ELOOP, ENOTDIR).

    Too long, a symlink loop, or a component that is not a directory.
    """


class NamespaceRestoreError(OSError, NslibError):
    """Switching a thread back failed; the thread is poisoned.

    A poisoned thread refuses every later nslib switch, so it can never run
    code in the wrong namespace by accident.  Let it finish and exit.
    """


class LinkNotFound(LookupError, NslibError):
    """No network interface of that name or index in the namespace.

    A ``LookupError`` (like ``KeyError``): the interface is an entry in the
    namespace's link table, not a file.
    """


class LinkExists(FileExistsError, NslibError):
    """The namespace already has a network interface of that name."""


class UnavailableMicroserviceError(LookupError, NslibError):
    """No running container holds the microservice label (or it vanished)."""


class SharedNamespaceError(UnavailableMicroserviceError):
    """The microservice's namespace is the host's, and that was refused.

    ``--network host``, or ``--network container:X`` with X on the host
    network: configuring "the microservice's namespace" would configure the
    host.  ``Microservice.open_namespace(allow_shared=True)`` opens it
    anyway.  A configurator reports such an item FAILED, not PENDING.
    """


class NotSwitchableError(ValueError, NslibError):
    """A kind of namespace one thread cannot enter and leave: USER, PID or TIME.

    The kernel lets only a single-threaded process join a user namespace,
    and PID and time namespaces apply to the children a process makes.
    Start a process in them instead (:mod:`nslib.spawn`, or
    ``nslib.run(Target(pid), argv)``).  :attr:`kind` is the refused
    :class:`~nslib.kinds.NsKind`.
    """

    #: The kind that was refused (an ``NsKind``).
    kind: object = None


class SpawnError(OSError, NslibError):
    """A child started into namespaces failed before its program ran.

    :attr:`step` says what it was doing (``"changing the root directory"``,
    ...); ``errno`` is the child's.  A program that cannot be executed is a
    plain ``OSError`` subclass instead (``FileNotFoundError``), as with
    :mod:`subprocess`.
    """

    #: What the child was doing when it failed.
    step: str = ""


class NamespaceJoinError(SpawnError):
    """A child could not join one of its namespaces; :attr:`kind` says which.

    ``kind`` is an :class:`nslib.kinds.NsKind`; ``errno`` is ``setns(2)``'s
    (EPERM: not allowed, EINVAL: e.g. re-entering the caller's own user
    namespace).
    """

    #: The kind of namespace that could not be joined (an ``NsKind``).
    kind: object = None


class DockerUnavailableError(ConnectionError, NslibError):
    """The docker daemon cannot be reached."""


class PluginDisabledError(RuntimeError, NslibError):
    """The namespace plugin was configured as disabled."""


class CNIError(NslibError):
    """A CNI plugin (or the CNI runtime) failed; the spec's error object.

    :ivar code: the spec's error code (1 incompatible version, 2 unsupported
        field, 3 unknown container, 4 invalid environment, 5 I/O failure,
        6 cannot decode, 7 invalid config, 11 try again later, 100+ the
        plugin's own).
    :ivar msg: the short message.
    :ivar details: the longer explanation, or ``""``.
    """

    #: The plugin type that failed, if a plugin did.
    plugin: str = ""
    #: After a failed ADD, True when the DEL that undid it succeeded.
    cleaned_up: bool = False
    #: After a failed ADD, the error of the DEL that tried to undo it.
    cleanup_error: BaseException | None = None

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code = code
        self.msg = msg
        self.details = details


def oserror(err: int, what: str, path: str | None = None) -> OSError:
    """Build an ``OSError`` naming *what*, subclassed by errno as Python does.

    ENOENT and ESRCH become :class:`NamespaceNotFound`, EBADF
    :class:`BadFdError`, ENAMETOOLONG, ELOOP and ENOTDIR
    :class:`BadPathError`; every other errno gets
    the builtin subclass (``PermissionError`` for EPERM/EACCES, and so on).
    """
    msg = f"{os.strerror(err)}: {what}"
    if err == _errno.EBADF:
        return BadFdError(err, msg, path) if path else BadFdError(err, msg)
    if err in (_errno.ENAMETOOLONG, _errno.ELOOP, _errno.ENOTDIR):
        return BadPathError(err, msg, path) if path else BadPathError(err, msg)
    if err in (_errno.ENOENT, _errno.ESRCH):
        return NamespaceNotFound(err, msg, path) if path else NamespaceNotFound(err, msg)
    return OSError(err, msg, path) if path else OSError(err, msg)
