"""Whether the run directory propagates mounts to and from the host (private).

A named namespace is a bind mount in the run directory (``/run/netns``).
An agent in its own mount namespace (a Kubernetes DaemonSet, a container)
shares names with the host only if that directory's mount is in a peer
group the host's mount namespace also has: then a name made by either side
appears on the other.  The commonest mistake is a ``hostPath`` volume
without ``mountPropagation: Bidirectional`` (``rshared``): the agent's names
never reach the host, and, without even ``HostToContainer``, the host's
never reach the agent.  :func:`run_dir_propagation` says which case holds,
from ``mountinfo`` alone (bytes, through :mod:`nslib._procfs`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ._procfs import MountInfo, read_mountinfo

__all__ = ["Propagation", "run_dir_propagation", "run_dir_propagation_cached", "warn_if_private"]


@dataclass(frozen=True, slots=True)
class Propagation:
    """How the run directory's mount relates to the host's mount namespace."""

    run_dir: str
    mount_point: bytes | None
    """The mount that holds the run directory (None: unknown)."""
    same_namespace: bool
    """This thread shares the host's (PID 1's) mount namespace: nothing to check."""
    to_host: bool
    """Mounts made here appear on the host."""
    from_host: bool
    """Mounts made on the host appear here."""
    known: bool = True
    """False when PID 1's mounts could not be read (then both flags are guesses: True)."""

    @property
    def ok(self) -> bool:
        """Names are shared both ways."""
        return self.same_namespace or (self.to_host and self.from_host)

    def message(self) -> str:
        """One line for a warning or ``nslib ls``; empty when all is well."""
        if self.ok:
            return ""
        if not self.to_host and not self.from_host:
            what = "neither to nor from the host"
        elif not self.to_host:
            what = "not to the host (it only receives the host's)"
        else:
            what = "not from the host"
        return (
            f"run directory {self.run_dir} propagates mounts {what}: this process runs in "
            "its own mount namespace and the directory is not a shared mount of the host's "
            "(mount it with rshared / mountPropagation: Bidirectional)"
        )


def _ns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _holding_mount(mounts: list[MountInfo], path: bytes) -> MountInfo | None:
    best: MountInfo | None = None
    for m in mounts:  # file order: a later mount on the same point is on top
        mp = m.mount_point
        holds = path == mp or path.startswith(mp.rstrip(b"/") + b"/") or mp == b"/"
        if holds and (best is None or len(mp) >= len(best.mount_point)):
            best = m
    return best


def run_dir_propagation(run_dir: str = "/run/netns") -> Propagation:
    """Check whether *run_dir* shares mounts with the host's mount namespace.

    "The host" is PID 1's mount namespace (read from ``/proc/1``: run in the
    host's PID namespace, as a tracker must).  A run directory that does not
    exist yet is judged by the mount that would hold it.
    """
    mine = _ns_id("/proc/thread-self/ns/mnt")
    host_ns = _ns_id("/proc/1/ns/mnt")
    if mine is not None and mine == host_ns:
        return Propagation(run_dir, None, True, True, True)
    path = os.path.realpath(run_dir)
    while not os.path.exists(path) and path != "/":
        path = os.path.dirname(path)
    try:
        m = _holding_mount(read_mountinfo("/proc/thread-self/mountinfo"), os.fsencode(path))
        host_mounts = read_mountinfo("/proc/1/mountinfo")
    except OSError:
        return Propagation(run_dir, None, False, True, True, known=False)
    if m is None:
        return Propagation(run_dir, None, False, True, True, known=False)
    # Mount IDs are unique system-wide and a new mount namespace copies every
    # mount under a new ID, so a shared ID means a shared namespace (this
    # also works where PID 1's ns/mnt is unreadable, as in some sandboxes).
    if any(h.mount_id == m.mount_id for h in host_mounts):
        return Propagation(run_dir, m.mount_point, True, True, True)
    host_groups = {h.shared_peer for h in host_mounts if h.shared_peer is not None}
    to_host = m.shared_peer is not None and m.shared_peer in host_groups
    from_host = to_host or (m.master_peer is not None and m.master_peer in host_groups)
    return Propagation(run_dir, m.mount_point, False, to_host, from_host)


_CACHE_SIZE = 64
_cache: dict[tuple[object, ...], Propagation] = {}


def run_dir_propagation_cached(run_dir: str) -> Propagation:
    """:func:`run_dir_propagation`, remembered while nothing it depends on changes.

    The full check reads two ``mountinfo`` files (~0.6 ms here, more on a
    busy host); this is called on every :func:`nslib.named.create`.  The
    answer is kept per (this thread's mount namespace, run directory, the
    directory's mount's peer groups): remounting, re-sharing or making the
    directory private or a slave gives its mount a new peer group, and
    entering another mount namespace changes the first part, so a stale
    answer is never used.  The key costs one ``readlink`` and one ``statx`` +
    ``statmount`` (~9 µs here).
    """
    from . import _syscalls as sys_

    path = run_dir
    while True:  # a directory not made yet: the mount that would hold it
        try:
            peers = sys_.mount_peers(os.fsencode(path), f"run directory {run_dir}")
            break
        except FileNotFoundError:
            parent = os.path.dirname(path.rstrip("/")) or "/"
            if parent == path:
                peers = None
                break
            path = parent
        except OSError:
            peers = None
            break
    if peers is None:  # unknown (no statmount, or no directory): do not cache
        return run_dir_propagation(run_dir)
    try:  # readlink ("mnt:[ino]") costs half of a stat on /proc
        mnt_ns = os.readlink("/proc/thread-self/ns/mnt")
    except OSError:
        return run_dir_propagation(run_dir)
    key = (mnt_ns, run_dir, path, peers)
    hit = _cache.get(key)
    if hit is None:
        hit = run_dir_propagation(run_dir)
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[key] = hit
    return hit


def warn_if_private(run_dir: str, stacklevel: int = 3) -> None:
    """Warn (``RuntimeWarning``) when *run_dir* does not share names with the host."""
    p = run_dir_propagation_cached(run_dir)
    if not p.ok:
        import warnings

        warnings.warn(p.message(), RuntimeWarning, stacklevel=stacklevel)
