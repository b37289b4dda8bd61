"""Pure state of the microservice tracker: who holds which label, and what changed.

No docker and no I/O here: :class:`LabelTable` is fed the truth about
containers (from ``inspect``) and answers with the changes a user must hear
about.  Keeping it pure makes the rules (winner choice, STOPPED before
RESTARTED, CONFLICT) testable without a daemon and keeps the tracker module
about threads and the daemon only.
"""

from __future__ import annotations

import calendar
import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

__all__ = [
    "Change",
    "EventKind",
    "LabelTable",
    "instance_key",
    "label_from",
    "label_of",
    "parse_time_ns",
    "rank",
]


class EventKind(enum.Enum):
    """What happened to a microservice label."""

    #: A container starts holding the label: a first start, a new container,
    #: or another claimant taking over.
    STARTED = "started"
    #: The container that held the label last holds it again, as a new
    #: instance (new PID, new namespace).  Always preceded by STOPPED.
    RESTARTED = "restarted"
    #: No running container holds the label any more.
    STOPPED = "stopped"
    #: Two or more running containers claim the label; the event names the
    #: winner and lists every claimant.
    CONFLICT = "conflict"


class Instance(Protocol):
    """What the table needs to know about a running container."""

    @property
    def label(self) -> str: ...
    @property
    def container_id(self) -> str: ...
    @property
    def pid(self) -> int: ...
    @property
    def created_ns(self) -> int: ...
    @property
    def started_at_ns(self) -> int: ...


T = TypeVar("T", bound=Instance)


def rank(x: Instance) -> tuple[int, int, str]:
    """Sort key of a claimant: the greatest one wins the label.

    Newest ``Created`` first; ties (same nanosecond) go to the latest
    ``StartedAt``, then to the greater container ID, so the choice is total
    and the same in every process.
    """
    return (x.created_ns, x.started_at_ns, x.container_id)


def instance_key(x: Instance) -> tuple[str, int, int]:
    """Identity of one *run* of a container.

    A restarted container keeps its ID but gets a new PID and ``StartedAt``
    (and a new namespace); namespace inode numbers are recycled, so they are
    not part of the identity.
    """
    return (x.container_id, x.pid, x.started_at_ns)


@dataclass(frozen=True, slots=True)
class Change(Generic[T]):
    """One user-visible change.

    *subject* is the new holder (STARTED, RESTARTED, CONFLICT) or the one
    that stopped (STOPPED); *claimants* lists every running claimant, winner
    first, for CONFLICT and is empty otherwise.
    """

    kind: EventKind
    label: str
    subject: T
    claimants: tuple[T, ...] = ()


class LabelTable(Generic[T]):
    """Running labelled containers, the winner of each label, and the diff logic.

    Not thread-safe: the tracker's worker is its only writer and readers
    hold the tracker's lock.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, T] = {}
        self._by_label: dict[str, dict[str, T]] = {}
        self._winners: dict[str, T] = {}
        self._claim_keys: dict[str, frozenset[tuple[str, int, int]]] = {}
        # label -> ID of the container whose stop emptied the label, so that
        # its next start is a RESTARTED rather than a STARTED.
        self._last_holder: dict[str, str] = {}

    # -- reading ------------------------------------------------------------

    def winners(self) -> dict[str, T]:
        """A copy of the label -> winner map."""
        return dict(self._winners)

    def winner(self, label: str) -> T | None:
        """The container holding *label*, or None."""
        return self._winners.get(label)

    def claimants(self, label: str) -> tuple[T, ...]:
        """Every running claimant of *label*, winner first."""
        return tuple(sorted(self._by_label.get(label, {}).values(), key=rank, reverse=True))

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, container_id: str) -> T | None:
        """The running instance of container *container_id*, or None."""
        return self._by_id.get(container_id)

    def instances(self) -> list[T]:
        """Every running labelled container known (winners and other claimants)."""
        return list(self._by_id.values())

    def ids(self) -> set[str]:
        """IDs of all running labelled containers known."""
        return set(self._by_id)

    # -- writing ------------------------------------------------------------

    def update(self, truth: Mapping[str, T | None]) -> list[Change[T]]:
        """Apply fresh facts: container ID -> its running instance, or None.

        None means "not running, not labelled, or gone".  Applied in two
        phases so that a container seen as a *new* instance (it died and
        came back between two looks) is reported as STOPPED then RESTARTED,
        with any takeover by another claimant in between, exactly as if
        both events had been seen one at a time.
        """
        touched: set[str] = set()
        for cid, new in truth.items():
            old = self._by_id.get(cid)
            if old is not None and (
                new is None or instance_key(old) != instance_key(new) or old.label != new.label
            ):
                self._remove(old)
                touched.add(old.label)
        changes = self._settle(touched)
        touched = set()
        for cid, new in truth.items():
            if new is not None and self._by_id.get(cid) != new:
                old = self._by_id.get(cid)
                if old is not None:  # same instance, other details (e.g. name)
                    self._remove(old)
                self._add(new)
                touched.add(new.label)
        changes += self._settle(touched)
        return changes

    def replace(self, running: Mapping[str, T]) -> list[Change[T]]:
        """Make *running* the complete truth (a resync): forget everything else."""
        truth: dict[str, T | None] = {cid: None for cid in self._by_id if cid not in running}
        truth.update(running)
        return self.update(truth)

    def forget(self, ids: Iterable[str]) -> None:
        """Containers that no longer exist at all: drop their RESTARTED memory."""
        gone = set(ids)
        for label in [lb for lb, cid in self._last_holder.items() if cid in gone]:
            del self._last_holder[label]

    # -- internals ----------------------------------------------------------

    def _add(self, x: T) -> None:
        self._by_id[x.container_id] = x
        self._by_label.setdefault(x.label, {})[x.container_id] = x

    def _remove(self, x: T) -> None:
        del self._by_id[x.container_id]
        claim = self._by_label[x.label]
        del claim[x.container_id]
        if not claim:
            del self._by_label[x.label]

    def _settle(self, labels: set[str]) -> list[Change[T]]:
        out: list[Change[T]] = []
        for label in sorted(labels):
            claim = self.claimants(label)
            prev = self._winners.get(label)
            new = claim[0] if claim else None
            if new is None:
                if prev is not None:
                    del self._winners[label]
                    self._last_holder[label] = prev.container_id
                    out.append(Change(EventKind.STOPPED, label, prev))
                self._claim_keys.pop(label, None)
                continue
            if prev is None:
                again = self._last_holder.pop(label, None) == new.container_id
                out.append(Change(EventKind.RESTARTED if again else EventKind.STARTED, label, new))
            elif instance_key(prev) != instance_key(new):
                # A new run of the *same* container cannot get here: update()
                # removes the old run and settles its label (STOPPED) before it
                # adds the new one, so prev is then None (RESTARTED above).
                assert prev.container_id != new.container_id, (prev, new)
                out.append(Change(EventKind.STARTED, label, new))
            self._winners[label] = new
            keys = frozenset(instance_key(c) for c in claim)
            if len(claim) >= 2 and keys != self._claim_keys.get(label):
                out.append(Change(EventKind.CONFLICT, label, new, claim))
            self._claim_keys[label] = keys
        return out


# -- reading docker's answers ---------------------------------------------------

_TIME_RE = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)\Z"
)


def parse_time_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time with up to 9 fraction digits.

    Docker writes ``Created``/``StartedAt`` with Go's ``RFC3339Nano``, which
    drops trailing zeros of the fraction; ``datetime`` would lose the last
    three digits, which decide between two containers created in one
    microsecond.

    :raises ValueError: *text* is not such a time.
    """
    m = _TIME_RE.match(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    frac = (m.group(7) or "").ljust(9, "0")
    secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    tz = m.group(8)
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        secs -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return secs * 1_000_000_000 + int(frac)


def label_from(
    env: Iterable[str],
    labels: Mapping[str, str] | None,
    label_env: str | None,
    label_key: str | None,
) -> str | None:
    """The microservice label of a container given its environment and labels, or None.

    The environment variable wins over the label when both are set (the env
    var is what the Ligato agent reads); the last assignment of the variable
    wins, as in the process.  An empty value is no label.
    """
    if label_env:
        prefix = label_env + "="
        found = None
        for item in env:
            if item.startswith(prefix):
                found = item[len(prefix) :]
        if found:
            return str(found)
    if label_key:
        value = (labels or {}).get(label_key)
        if value:
            return str(value)
    return None


def label_of(info: Mapping[str, Any], label_env: str | None, label_key: str | None) -> str | None:
    """The microservice label of an inspected docker (or podman) container, or None.

    See :func:`label_from`.
    """
    config = info.get("Config") or {}
    return label_from(config.get("Env") or (), config.get("Labels"), label_env, label_key)
