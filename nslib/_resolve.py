"""The one resolver: any namespace reference nslib accepts, to an fd.

Every public call that takes a namespace (:func:`~nslib.entered`,
:func:`~nslib.switch_to`, :func:`~nslib.socket_in`, :func:`~nslib.run_in`,
:func:`~nslib.pinned`, :func:`~nslib.popen`, :mod:`nslib.netlink`,
:class:`~nslib.NsPlugin`, :func:`~nslib.open_namespace`) resolves it here,
by one rule:

* an :class:`~nslib.NsHandle`: its fd, borrowed;
* an ``int``: that fd, borrowed (checked to be a network namespace where it
  is used);
* an ``os.PathLike``: a path;
* a ``str`` that starts with ``/``: a path;
* a ``str`` with a prefix :meth:`NetNamespace.parse` knows (``name:``,
  ``pid:``, ``path:``, ``ms:``): what the prefix says;
* any other ``str``: the name of a named namespace, as ``ip netns`` and
  pyroute2 read it (``"blue"`` is ``name:blue``);
* a :class:`~nslib.NetNamespace`: what it says.

What the resolver opens it owns, in an fd box (see
:func:`nslib._syscalls.fd_box`), so that an interrupt at any point leaves
every fd with an owner; :meth:`Resolved.close` closes it.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any, Protocol, TypeAlias, final

from . import _syscalls as sys_
from .errors import (
    ClosedHandleError,
    DockerUnavailableError,
    InvalidReference,
    UnavailableMicroserviceError,
)
from .handle import NsHandle, check_fd, open_name_into, open_path_into, open_pid_into
from .reference import _PREFIX, NetNamespace, ReferenceType

__all__ = ["NsRef", "Resolved", "Tracker", "resolve"]

NsRef: TypeAlias = "NsHandle | NetNamespace | str | os.PathLike[str] | int"
"""Anything that names a network namespace (``int``: an fd the caller keeps)."""


class Tracker(Protocol):
    """What resolves a microservice label (:class:`~nslib.MicroserviceTracker` does).

    ``get`` returns an object whose ``open_namespace()`` gives a new
    :class:`~nslib.NsHandle`, or ``None`` when no running container holds
    the label.  *timeout* bounds the wait for the tracker's first sync.
    """

    def get(self, label: str, timeout: float | None = ...) -> Any: ...


@final
class Resolved:
    """A resolved reference: an fd, what it was called, and who closes it.

    ``fd`` stays valid until :meth:`close` (idempotent), which closes only
    what the resolver opened; a borrowed fd (a handle's, a bare int) is left
    alone.  A context manager.
    """

    __slots__ = ("_box", "fd", "name", "what")

    def __init__(self, what: str, name: str | None = None) -> None:
        self.fd = -1
        self.what = what
        self.name = name
        self._box: Any = None

    @property
    def owned(self) -> bool:
        """Whether the fd was opened by the resolver (and is closed by :meth:`close`)."""
        return self._box is not None and self._box[0] >= 0

    def close(self) -> None:
        """Close the fd if the resolver opened it.  Idempotent."""
        box = self._box
        if box is not None:
            sys_.close_box(box)  # one C call: closed and forgotten together
        self.fd = -1

    def __enter__(self) -> Resolved:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "owned" if self.owned else "borrowed" if self.fd >= 0 else "closed"
        return f"<Resolved fd={self.fd} {state} ({self.what})>"


def parse(text: str) -> NetNamespace:
    """A reference string, by the one rule (see the module docstring).

    :raises InvalidReference: a malformed reference (``InvalidName`` for a bad name).
    """
    if not isinstance(text, str):
        raise InvalidReference(f"reference must be a str, not {type(text).__name__}")
    if text.startswith("/"):
        return NetNamespace.path(text)
    kind, sep, _ = text.partition(":")
    if sep and kind in _PREFIX:
        return NetNamespace.parse(text)
    if "/" in text:
        raise InvalidReference(
            f"{text!r} is neither a namespace name (names have no '/') nor an absolute "
            f"path; for a relative path say path:{text}"
        )
    return NetNamespace.named(text)


def resolve(
    ref: NsRef,
    *,
    tracker: Tracker | None = None,
    run_dir: str | None = None,
    timeout: float | None = None,
) -> Resolved:
    """Resolve *ref* to an fd (see the module docstring for the rule).

    Never creates a namespace.  The caller closes the result.

    :param tracker: resolves ``ms:`` references.
    :param run_dir: where named namespaces live (default ``/run/netns``).
    :param timeout: how long a microservice lookup may wait for the
        tracker's first sync (the tracker's default when ``None``).
    :raises NamespaceNotFound: the process, file or named namespace is missing.
    :raises NotANamespace: the file is not a network namespace.
    :raises InvalidReference: a malformed or UNDEFINED reference, or a type
        nslib does not take.
    :raises ClosedHandleError: a closed :class:`~nslib.NsHandle`.
    :raises BadFdError: an int that cannot be an fd (EBADF).
    :raises UnavailableMicroserviceError: no tracker, no running container
        holds the label, or the tracker never reached docker (its
        :class:`~nslib.DockerUnavailableError` chained).
    """
    if type(ref) is NsHandle:
        res = Resolved(ref.what)
        if ref._fd < 0:
            raise ClosedHandleError(f"namespace handle is closed ({ref.what})")
        res.fd = ref._fd
        return res
    if isinstance(ref, int) and not isinstance(ref, bool):
        check_fd(ref)
        res = Resolved(f"fd {ref}")
        res.fd = ref
        return res
    if isinstance(ref, str):
        ref = parse(ref)
    elif isinstance(ref, os.PathLike):
        ref = NetNamespace.path(_fspath(ref))
    if not isinstance(ref, NetNamespace):
        raise InvalidReference(
            "expected an NsHandle, NetNamespace, reference string, path or fd, "
            f"not {type(ref).__name__}"
        )
    return _open(ref, tracker, run_dir, timeout)


def _fspath(path: os.PathLike[str]) -> str:
    raw = os.fspath(path)
    if isinstance(raw, bytes):
        try:
            return os.fsdecode(raw)
        except UnicodeDecodeError:  # pragma: no cover - fsdecode uses surrogateescape
            raise InvalidReference(f"path cannot be decoded: {raw!r}") from None
    return raw


def _open(
    ref: NetNamespace, tracker: Tracker | None, run_dir: str | None, timeout: float | None
) -> Resolved:
    t = ref.type
    what = str(ref)
    res = Resolved(what, ref.reference if t == ReferenceType.NSID else None)
    box = res._box = sys_.fd_box()  # the box owns whatever is opened below
    if t == ReferenceType.NSID:
        open_name_into(box, ref.reference, run_dir, what)
    elif t == ReferenceType.PID:
        open_pid_into(box, int(ref.reference), what)
    elif t == ReferenceType.FD:
        if not ref.reference:
            raise InvalidReference("empty path reference")
        open_path_into(box, ref.reference, what)
    elif t == ReferenceType.MICROSERVICE:
        _open_microservice(box, ref, tracker, timeout)
    else:
        raise InvalidReference(f"cannot open an {ref} reference")
    res.fd = box[0]
    return res


def _open_microservice(
    box: Any, ref: NetNamespace, tracker: Tracker | None, timeout: float | None
) -> None:
    if tracker is None:
        raise UnavailableMicroserviceError(
            f"{ref}: resolving a microservice needs a tracker (tracker=MicroserviceTracker())"
        )
    try:
        ms = tracker.get(ref.reference) if timeout is None else tracker.get(ref.reference, timeout)
    except DockerUnavailableError as e:
        # To the caller the microservice is unavailable; why (docker never
        # reached) stays in the chained cause.
        raise UnavailableMicroserviceError(f"{ref}: {e}") from e
    if ms is None:
        raise UnavailableMicroserviceError(f"{ref}: no running container holds this label")
    adopt(box, ms.open_namespace())


def adopt(box: Any, handle: NsHandle) -> None:
    """Move *handle*'s fd into *box* (the handle ends up closed)."""
    box[0] = handle._fd  # two plain statements: no interrupt can fall between them
    handle._fd = -1
