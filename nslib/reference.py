"""``NetNamespace``: a namespace *reference* (type plus value), as in the Ligato vpp-agent.

A reference is a value; resolving it (:func:`open_namespace`) gives an
:class:`~nslib.handle.NsHandle`.
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import InvalidReference
from .handle import NsHandle
from .names import validate_name

if TYPE_CHECKING:
    from ._resolve import Resolved, Tracker

__all__ = ["NetNamespace", "ReferenceType", "open_namespace"]


class ReferenceType(enum.IntEnum):
    """How a :class:`NetNamespace` names its namespace (values as in the seed)."""

    UNDEFINED = 0
    #: A *named* namespace (``ip netns`` bind mount), not a kernel nsid.
    NSID = 1
    PID = 2
    #: A *file path* (``/proc/<pid>/task/<tid>/ns/net``, a bind mount), not an fd.
    FD = 3
    MICROSERVICE = 4


_PREFIX = {
    "name": ReferenceType.NSID,
    "pid": ReferenceType.PID,
    "path": ReferenceType.FD,
    "ms": ReferenceType.MICROSERVICE,
    "undefined": ReferenceType.UNDEFINED,
}
_PREFIX_OF = {v: k for k, v in _PREFIX.items()}
_PID_RE = re.compile(r"[1-9][0-9]*")


@dataclass(frozen=True, slots=True)
class NetNamespace:
    """A reference to a network namespace: a :class:`ReferenceType` plus a value.

    Build one with :meth:`named`, :meth:`pid`, :meth:`path`, :meth:`thread`,
    :meth:`microservice` or :meth:`parse`; ``str()`` gives back the form
    :meth:`parse` reads (``name:blue``, ``pid:42``, ``path:/p``, ``ms:web``,
    ``undefined:``).
    """

    type: ReferenceType
    reference: str = ""

    def __post_init__(self) -> None:
        t, ref = self.type, self.reference
        if type(t) is not ReferenceType:
            # Accept the vpp-agent's plain ints, but store the enum (for str()).
            try:
                t = ReferenceType(t)
            except (ValueError, TypeError):
                raise InvalidReference(f"unknown reference type {t!r}") from None
            object.__setattr__(self, "type", t)
        if not isinstance(ref, str):
            raise InvalidReference(f"reference must be a str, not {type(ref).__name__}")
        if "\0" in ref:
            raise InvalidReference(f"reference contains a NUL byte: {ref!r}")
        if t == ReferenceType.NSID:
            validate_name(ref)
        elif t == ReferenceType.PID:
            if not _PID_RE.fullmatch(ref):
                raise InvalidReference(f"pid must be a positive decimal integer, not {ref!r}")
        elif t == ReferenceType.MICROSERVICE:
            if not ref:
                raise InvalidReference("microservice label is empty")
        elif t == ReferenceType.UNDEFINED:
            if ref:
                raise InvalidReference(f"an UNDEFINED reference carries no value: {ref!r}")
        elif not ref:  # FD
            pass  # the vpp-agent's default namespace: NsPlugin resolves it, open_namespace refuses
        else:
            try:
                os.fsencode(ref)
            except UnicodeEncodeError:
                raise InvalidReference(f"path cannot be encoded as a file name: {ref!r}") from None

    @classmethod
    def named(cls, name: str) -> NetNamespace:
        """A named namespace, as ``ip netns`` names it."""
        return cls(ReferenceType.NSID, name)

    @classmethod
    def pid(cls, pid: int) -> NetNamespace:
        """The namespace of process *pid*."""
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise InvalidReference(f"pid must be a positive int, not {pid!r}")
        return cls(ReferenceType.PID, str(pid))

    @classmethod
    def path(cls, path: str | os.PathLike[str]) -> NetNamespace:
        """A namespace file path (the vpp-agent's FD type)."""
        path = os.fspath(path)
        if not path:
            raise InvalidReference("path reference is empty")
        return cls(ReferenceType.FD, path)

    @classmethod
    def thread(cls, pid: int, tid: int) -> NetNamespace:
        """The namespace of thread *tid* of process *pid*."""
        for v, n in ((pid, "pid"), (tid, "tid")):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InvalidReference(f"{n} must be a positive int, not {v!r}")
        return cls(ReferenceType.FD, f"/proc/{pid}/task/{tid}/ns/net")

    @classmethod
    def microservice(cls, label: str) -> NetNamespace:
        """The namespace of the container running microservice *label*."""
        return cls(ReferenceType.MICROSERVICE, label)

    @classmethod
    def parse(cls, text: str) -> NetNamespace:
        """Parse ``name:N``, ``pid:P``, ``path:F``, ``ms:L``, ``undefined:``, or a bare name.

        The inverse of ``str()``: ``parse(str(ref)) == ref`` for every valid
        reference.  A bare string is a name, so ``parse("blue")`` equals
        ``parse("name:blue")``.

        :raises InvalidReference: anything else, including an empty value
            after ``name:``, ``pid:``, ``path:`` or ``ms:`` (``InvalidName``
            for bad names); the message quotes *text*.
        """
        if not isinstance(text, str):
            raise InvalidReference(f"reference must be a str, not {type(text).__name__}")
        kind, sep, value = text.partition(":")
        if sep and kind in _PREFIX:
            if not value and kind != "undefined":
                raise InvalidReference(f"empty {kind}: reference {text!r}")
            try:
                return cls(_PREFIX[kind], value)
            except InvalidReference as e:  # say what the user gave, not just the value
                raise type(e)(f"invalid reference {text!r}: {e}") from None
        if sep:
            raise InvalidReference(
                f"unknown reference kind {kind!r} in {text!r}; "
                "use name:, pid:, path:, ms: or undefined: (or a bare name)"
            )
        return cls(ReferenceType.NSID, text)

    def __str__(self) -> str:
        return f"{_PREFIX_OF[self.type]}:{self.reference}"


NsLike = NsHandle | NetNamespace | str | os.PathLike[str] | int
"""The old name of :data:`nslib._resolve.NsRef`."""


def open_namespace(
    ref: NetNamespace | str,
    *,
    tracker: Tracker | None = None,
    run_dir: str | None = None,
    timeout: float | None = None,
) -> NsHandle:
    """Resolve *ref* to a new :class:`NsHandle` (the caller closes it).

    *ref* is a :class:`NetNamespace` or a reference string, read by the rule
    every nslib call uses (``/...`` a path, ``name:``/``pid:``/``path:``/
    ``ms:`` what they say, any other string a name).  Never creates a
    namespace.  A MICROSERVICE reference needs *tracker* (a
    :class:`~nslib.MicroserviceTracker`).

    :raises NamespaceNotFound: the process, file or named namespace is missing.
    :raises UnavailableMicroserviceError: no running container holds the
        label, there is no *tracker*, or the tracker has never been in sync
        with docker (its :class:`~nslib.DockerUnavailableError` is the
        ``__cause__``, as :class:`~nslib.NsPlugin` does).
    :raises InvalidReference: an UNDEFINED or malformed reference.
    """
    from ._resolve import resolve

    if not isinstance(ref, NetNamespace | str):
        raise InvalidReference(
            f"expected a NetNamespace or a reference string, not {type(ref).__name__}"
        )
    with resolve(ref, tracker=tracker, run_dir=run_dir, timeout=timeout) as res:
        return handle_from(res)


def handle_from(res: Resolved) -> NsHandle:
    """A new :class:`NsHandle` that takes over the fd *res* opened."""
    from .handle import _from_box

    return _from_box(res._box, res.what)
