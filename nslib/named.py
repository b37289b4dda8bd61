"""Named network namespaces, compatible with ``ip netns`` and fork-free.

A named namespace is a bind mount of a namespace file onto an empty
*placeholder* file in a run directory (``/run/netns`` by default, which
``/var/run/netns`` also reaches).  Everything here interoperates with
iproute2 in both directions: ``ip netns list`` / ``exec`` / ``del`` see the
namespaces made here, and :func:`delete` or
:meth:`~nslib.handle.NsHandle.from_name` accept the ones ``ip netns add``
made.  Nothing forks and the calling thread never changes namespace.

Every function takes ``run_dir=`` (default :data:`~nslib.names.DEFAULT_RUN_DIR`)
so tests and sandboxes can use a private directory.  Names are checked with
iproute2's rules (:func:`~nslib.names.validate_name`) before anything touches
the filesystem, and no lookup ever creates anything.

Concurrency (threads and processes, nslib and ``ip`` alike):

- a name is reserved by creating its placeholder with ``O_CREAT|O_EXCL``, so
  exactly one creator can win it;
- the creator binds the namespace onto *its own* placeholder through the fd
  it holds (``/proc/thread-self/fd/N``), never through the path, so a
  placeholder that was removed and re-created meanwhile is never mounted
  twice;
- while a creation is in progress the creator holds ``flock(LOCK_EX)`` on
  the placeholder, which :func:`stale` and :func:`repair` respect;
- :func:`delete` only ever removes a *mounted* name, so it cannot destroy a
  creation in progress.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import errno
import fcntl
import functools
import itertools
import operator
import os
import stat
from dataclasses import dataclass
from typing import Any

from . import _syscalls as sys_

# nsids (ip netns set / list-id): each call says which namespace's table it means.
from ._nsid import NsidTaken, list_ids, nsid, set_nsid
from ._procfs import MountInfo, nsfs_dev, read_mountinfo
from ._propagation import warn_if_private
from .errors import InvalidReference, NamespaceExists, NamespaceNotFound, NotANamespace, oserror
from .handle import NsHandle, _from_box
from .names import validate_name, validate_run_dir

__all__ = [
    "NsidTaken",
    "RunDirStatus",
    "attach",
    "create",
    "delete",
    "exists",
    "identify",
    "list",
    "list_ids",
    "nsid",
    "pids",
    "repair",
    "run_dir_status",
    "set_nsid",
    "stale",
]

_O_PLACEHOLDER = os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_O_TMPFILE = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_O_PEEK = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_O_VERIFY = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def _dir(run_dir: str | None) -> str:
    # Refuses '', '/', /proc, /sys, /dev (and below) before anything is touched.
    return validate_run_dir(run_dir)


def _fd_path(fd: int) -> bytes:
    # A magic link to exactly the file the fd holds, usable from any thread.
    return b"/proc/thread-self/fd/%d" % fd


def _described(e: OSError, what: str, path: str) -> OSError:
    """*e* as a new error (same errno) naming *what* and the real *path*; the caller raises it."""
    return oserror(e.errno or errno.EIO, what, path)


# -- interrupts -------------------------------------------------------------
#
# CPython raises a pending KeyboardInterrupt (any signal handler's exception)
# only between bytecodes: at a function's start, on a backward jump, and as a
# call returns, *before* its result is stored.  ``fd = os.open(...)`` can
# therefore lose the fd, and a cleanup of two steps can stop after the first.
# Two tools close such windows here:
#
# - every fd lives in an fd box (:func:`~nslib._syscalls.fd_box`, a C ``int``
#   that closes what it holds when collected) from the moment it exists: the C
#   core writes into the box itself, and :func:`_open_into` chains ``os.open``
#   and the store through ``map`` so that both run as C, with no bytecode
#   between them;
# - two syscalls that must not be separated (unmount, then unlink) run back to
#   back in one C-level chain (:func:`_back_to_back`).

_drain: Any = functools.partial(collections.deque, maxlen=0)  # consumes an iterator in C
_AT0 = (0,)


def _open_into(box: Any, path: str | bytes, flags: int, dir_fd: int | None = None) -> None:
    """``os.open(path, flags, 0, dir_fd=dir_fd)`` straight into *box*.

    ``map`` calls ``os.open`` and the box's ``__setitem__`` from C, so the
    interrupt check that follows a call comes only once the box owns the fd.
    """
    opener = os.open if dir_fd is None else functools.partial(os.open, dir_fd=dir_fd)
    _drain(map(box.__setitem__, _AT0, map(opener, (path,), (flags,), _AT0)))


def _back_to_back(*steps: Any) -> builtins.list[Any]:
    """Call *steps* in order with no bytecode, so no interrupt, between them.

    Each step is a C callable (bound with :func:`functools.partial`).  The
    chain stops before the next step once one returns something true (a C
    shim's -1) and drops that result, or when one raises (which propagates).
    Returns the results of the steps that succeeded, so its length says how
    far the chain went; an exception comes from the step that raised, all
    steps before it having succeeded.
    """
    done: builtins.list[Any] = []
    # list.extend keeps what it appended even when the iterator raises.
    done.extend(itertools.takewhile(operator.not_, map(operator.call, steps)))
    return done


# -- the run directory ------------------------------------------------------


def _prepare_run_dir(run_dir: str) -> None:
    """Make *run_dir* exist and be a shared mount point, as ``ip netns add`` does.

    iproute2's order: mkdir; ``flock(LOCK_EX)`` on the directory (parallel
    first-time setups once stacked bind mounts until machines hung, Debian
    bug 949235); then make it ``MS_SHARED|MS_REC``, and if that fails with
    EINVAL (not a mount point yet) bind it onto itself with ``MS_BIND|MS_REC``
    (recursive, so mounts already inside stay visible) and retry.

    One step goes beyond the iproute2 6.1 installed here: right after our own
    self-bind, the new mount is made ``MS_PRIVATE`` before the retry makes it
    shared.  A bind of a shared mount joins its parent's peer group, and
    then every namespace mount inside propagates to the parent as well and
    appears twice (newer iproute2 does the same to get a peer group of its
    own).  It is only done to a mount made a moment ago under the lock:
    making an existing run directory private would cut off whatever mount
    namespaces receive propagation from it.

    The lock covers only this setup, as in iproute2: the placeholder's
    ``O_EXCL`` is what makes a name unique, so creations of different names
    never wait for each other.
    """
    raw = os.fsencode(run_dir)
    what = f"setting up the run directory {run_dir}"
    try:
        os.mkdir(run_dir, 0o755)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(run_dir, 0o755, exist_ok=True)
    except OSError as e:
        raise _described(e, f"cannot create the run directory {run_dir}", run_dir) from None
    box = sys_.fd_box()
    try:
        _open_into(box, run_dir, _O_DIR)
    except OSError as e:
        raise _described(e, f"cannot open the run directory {run_dir}", run_dir) from None
    try:
        with contextlib.suppress(OSError):  # as iproute2: proceed unlocked
            fcntl.flock(box[0], fcntl.LOCK_EX)
        made = False
        while True:
            try:
                sys_.mount(b"", raw, b"none", sys_.MS_SHARED | sys_.MS_REC, what)
                return
            except OSError as e:
                if e.errno != errno.EINVAL or made:
                    raise
            sys_.mount(raw, raw, b"none", sys_.MS_BIND | sys_.MS_REC, what)
            made = True
            sys_.mount(b"", raw, b"none", sys_.MS_PRIVATE, what)
    finally:
        sys_.close_box(box)  # also drops the flock


def _ready(facts: tuple[bool, int, int] | None) -> bool:
    if facts is None:
        return False
    root, peer, parent_peer = facts
    return root and peer != 0 and peer != parent_peer


def _ensure_run_dir(run_dir: str) -> None:
    """Skip :func:`_prepare_run_dir` when its work is provably done already.

    Repeating iproute2's dance on every create costs an open, two flocks and
    an ``MS_SHARED|MS_REC`` mount call whose kernel walk grows with the
    number of namespaces mounted inside (measured: ~12 us empty, ~45 us with
    1,000 names), and it serialises concurrent creators on the lock.  One
    statx + statmount call (O(1), ~2 us, no lock, nothing cached that could
    go stale) tells whether the directory already is a shared mount point in
    a peer group of its own; then the dance would change nothing.  Anything
    else, including a half-finished setup by another process (still a peer
    of its parent) or a kernel without statmount, takes the locked path.
    """
    try:
        facts = sys_.mount_peers(os.fsencode(run_dir), f"run directory {run_dir}")
    except OSError:
        facts = None  # missing, say: the full setup creates it or reports why not
    if not _ready(facts):
        _prepare_run_dir(run_dir)


# -- creating ---------------------------------------------------------------


def _taken(name: str, path: str, run_dir: str) -> NamespaceExists:
    """The error for a name that exists, saying what is in the way."""
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is not None and st.st_dev != nsfs_dev() and stat.S_ISREG(st.st_mode):
        why = _unmounted(name, path)
        if "stale" in why:
            return NamespaceExists(
                errno.EEXIST,
                f"named namespace {name!r} exists in {run_dir} as a stale placeholder "
                f"(nothing is mounted on {path}); `nslib repair {name}` "
                f"(nslib.named.repair) removes it, then create it again",
                path,
            )
        return NamespaceExists(errno.EEXIST, f"{why}; pick another name or wait", path)
    return NamespaceExists(
        errno.EEXIST, f"named namespace {name!r} exists already in {run_dir}", path
    )


class _Work:
    """The fds of one creation, each in an fd box from the moment it exists.

    An interrupt anywhere leaks none of them: whatever a box still holds is
    closed when it is collected, and :meth:`close` closes them all.
    """

    __slots__ = ("dfd", "lock", "named", "new")

    def __init__(self) -> None:
        box = sys_.fd_box
        self.dfd = box()  # O_PATH of the run directory
        self.lock = box()  # our placeholder, holding the flock (unnamed at first)
        self.named = box()  # the placeholder opened by its name: the bind target
        self.new = box()  # a namespace made for create()

    def close(self) -> None:
        close = sys_.close_box
        close(self.named)
        close(self.new)
        close(self.lock)  # drops the flock: after the others, the name is settled
        close(self.dfd)


def _reserve(name: str, path: str, run_dir: str, work: _Work) -> None:
    """Create the placeholder *name* in *work.dfd*, exclusively and already flock-marked.

    The file is made unnamed (``O_TMPFILE``) and locked first, then linked
    into place, which fails if the name exists: nobody can ever see our
    placeholder unlocked and take a creation in progress for a stale one.
    A filesystem without ``O_TMPFILE`` gets ``O_CREAT|O_EXCL`` then the lock.
    *work.lock* holds our file before it has a name, so :func:`_abandon`
    always knows which file is ours.
    """
    try:
        _open_into(work.dfd, os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise _described(e, f"cannot open the run directory {run_dir}", run_dir) from None
    dfd = work.dfd[0]
    try:
        _open_into(work.lock, ".", _O_TMPFILE, dfd)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise _described(e, f"cannot create the placeholder for {name!r}", path) from None
        _reserve_plain(name, path, run_dir, work)
        return
    lock = work.lock[0]
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # nobody else has this file yet: never blocks
        # dst_dir_fd makes Python use linkat(AT_SYMLINK_FOLLOW): the magic
        # link is followed to the unnamed file, which gets its name here.
        os.link(_fd_path(lock), name, dst_dir_fd=dfd)
    except FileExistsError:
        raise _taken(name, path, run_dir) from None
    except OSError as e:
        raise _described(e, f"cannot create the placeholder for {name!r}", path) from None
    # A mount needs the named dentry, not the unnamed one the fd was born
    # with: open the name, and make sure it still is our file.
    with contextlib.suppress(OSError):
        _open_into(work.named, name, _O_PEEK, dfd)
    if work.named[0] < 0 or _ino(work.named[0]) != _ino(lock):
        raise NamespaceNotFound(
            errno.ENOENT, f"the placeholder of {name!r} was removed while it was made", path
        )


def _ino(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def _reserve_plain(name: str, path: str, run_dir: str, work: _Work) -> None:
    try:
        _open_into(work.lock, name, _O_PLACEHOLDER, work.dfd[0])
    except FileExistsError:
        raise _taken(name, path, run_dir) from None
    except OSError as e:
        raise _described(e, f"cannot create the placeholder for {name!r}", path) from None
    # Marks "creation in progress" for stale()/repair().  Blocking: if
    # repair() is looking at this very file, wait; it will have removed it
    # and the bind then fails cleanly with ENOENT.
    fcntl.flock(work.lock[0], fcntl.LOCK_EX)


def _abandon(work: _Work, base: str, ns: tuple[int, int] | None) -> None:
    """Undo a creation that failed or was interrupted; idempotent.

    If the namespace *ns* (its identity) is mounted on the name now, it was
    us (binding onto our placeholder needs our fd): unmount it.  Then remove
    the placeholder if it is still the file *work.lock* holds; someone may
    have removed ours and made a new one, which is left alone.  The fds are
    closed by the caller.
    """
    if work.lock[0] < 0 or work.dfd[0] < 0:
        return  # no placeholder was made
    dfd = work.dfd[0]
    mine = _ino(work.lock[0])
    try:
        st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
    except OSError:
        return  # never named, or already gone
    if ns is not None and (st.st_dev, st.st_ino) == ns:
        top = sys_.fd_box()
        try:
            _open_into(top, base, _O_VERIFY, dfd)
            sys_.umount2(_fd_path(top[0]), sys_.MNT_DETACH, f"undoing {base}")
        except OSError:
            pass
        finally:
            sys_.close_box(top)
        try:
            st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            return
    if (st.st_dev, st.st_ino) == mine:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(base, dir_fd=dfd)


def _bind(ns_fd: int, placeholder_fd: int, name: str, path: str) -> None:
    what = f"binding namespace {name!r} onto {path}"
    try:
        sys_.mount(_fd_path(ns_fd), _fd_path(placeholder_fd), b"none", sys_.MS_BIND, what)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise NamespaceNotFound(
                errno.ENOENT,
                f"the placeholder of {name!r} was removed while it was being bound",
                path,
            ) from None
        raise _described(e, what, path) from None


def _name_onto(name: str, run_dir: str, source: NsHandle | None) -> NsHandle | None:
    """Reserve *name* and bind a namespace onto it; leave nothing on failure.

    With *source* (owned by the caller, never closed here) that namespace is
    named.  Without, a new namespace is made only once the name is reserved
    (iproute2's order), and its handle is returned.

    Interrupts: the undo is armed before the placeholder can exist, and it
    finds out what was made from the kernel (is our file linked, is our
    namespace mounted), so a ``KeyboardInterrupt`` raised anywhere up to the
    handle's construction leaves nothing: no placeholder, no mount, no fd.
    The undo is retried if a second interrupt strikes it.
    """
    path = os.path.join(run_dir, name)
    _ensure_run_dir(run_dir)
    work = _Work()
    ns: tuple[int, int] | None = None  # set before the bind: what the undo may unmount
    try:
        try:
            _reserve(name, path, run_dir, work)
            if source is None:
                # unshare(CLONE_NEWNET) on a throwaway thread, straight into
                # a box; its fd is what gets bound, so the handle returned is
                # exactly the namespace created even if another thread
                # deletes the name before we return.
                sys_.new_netns_into(work.new)
                ns_fd = work.new[0]
            else:
                ns_fd = source.fileno()
            ns = _ino(ns_fd)
            target = work.named[0] if work.named[0] >= 0 else work.lock[0]
            _bind(ns_fd, target, name, path)
            if source is None:
                return _from_box(work.new, f"name:{name}")
            return None
        except BaseException:
            _undo(work, name, ns)
            raise
    finally:
        work.close()


def _undo(work: _Work, base: str, ns: tuple[int, int] | None) -> None:
    """:func:`_abandon`, finished even if an interrupt strikes it (a few times)."""
    for _ in range(8):
        try:
            _abandon(work, base, ns)
            return
        except KeyboardInterrupt:
            continue  # the original exception propagates; finish undoing first
        except OSError:
            return  # best effort: the original error is what the caller needs


def create(name: str, *, run_dir: str | None = None) -> NsHandle:
    """Create the named network namespace *name*, like ``ip netns add``.

    iproute2's sequence: make the run directory, lock it, make it a shared
    mount (binding it onto itself the first time), create the placeholder
    with ``O_CREAT|O_EXCL``, ``unshare(CLONE_NEWNET)`` on a throwaway thread
    (never the caller's, never a forked process) and bind that namespace
    onto the placeholder.  On any failure nothing is left behind: no
    placeholder, no mount, and the calling thread never moved.  The run
    directory's own self-bind, once made, stays (it is set-up, as with
    ``ip``).  As with ``ip``, the empty placeholder is visible (an inotify
    IN_CREATE) a moment before the namespace is mounted on it; a watcher
    that opens it at once may get :class:`~nslib.errors.NotANamespace` and
    should retry.

    Ctrl-C is safe: a ``KeyboardInterrupt`` (or any exception a signal
    handler raises) anywhere inside create undoes it, and every fd is owned
    from the moment it exists.  CPython leaves one window that no library
    can close: it raises a pending interrupt as a call *returns*, before the
    caller stores the result.  An interrupt that arrives once the namespace
    is bound, while create finishes or returns, therefore leaves the name
    complete (exactly as an interrupt right after the call would) and the
    handle is closed by the garbage collector; :func:`delete` removes the
    name.  An interrupt never leaves a placeholder without its namespace.
    (The first create in a new run directory also sets the directory up;
    an interrupt between that set-up's mounts leaves a working run
    directory that may share its parent's peer group; see
    :func:`run_dir_status`.)

    :returns: a handle on the new namespace (close it; it keeps the
        namespace alive even after :func:`delete`).
    :raises InvalidName: *name* is not a valid ``ip netns`` name.
    :raises NamespaceExists: the name is taken (also a ``FileExistsError``);
        the existing namespace is untouched.
    :raises PermissionError: no CAP_SYS_ADMIN.
    :raises OSError: the run directory cannot be set up (read-only, ...).

    Warns (``RuntimeWarning``) when this process runs in a mount namespace
    of its own whose run directory does not propagate mounts to and from
    the host's (a container or DaemonSet without ``rshared``): the name
    then exists only here (``nslib ls`` says so too).
    """
    validate_name(name)
    d = _dir(run_dir)
    made = _name_onto(name, d, None)
    assert made is not None
    try:
        warn_if_private(d)  # a run dir the host never sees: say so (cached, ~14 us)
    except BaseException:  # warnings turned into errors: the handle must not leak
        made.close()
        raise
    return made


def attach(name: str, pid: int | NsHandle, *, run_dir: str | None = None) -> None:
    """Name an existing namespace, like ``ip netns attach NAME PID``.

    *pid* is a process (its main thread's namespace) or an open
    :class:`~nslib.handle.NsHandle`.  The namespace is pinned by an fd
    before it is bound, so a PID that exits or is reused meanwhile can never
    bind the wrong namespace.  Failure hygiene is that of :func:`create`.

    :raises InvalidName: *name* is not a valid ``ip netns`` name.
    :raises NamespaceExists: the name is taken.
    :raises NamespaceNotFound: no process *pid*.
    :raises PermissionError: no CAP_SYS_ADMIN.
    """
    validate_name(name)
    d = _dir(run_dir)
    if isinstance(pid, NsHandle):
        _name_onto(name, d, pid)
        return
    with NsHandle.from_pid(pid) as h:
        _name_onto(name, d, h)


# -- deleting ---------------------------------------------------------------


def _mnt_id(fd: int) -> int | None:
    """The id of the mount *fd* is on (one ``statx``; ``None`` if the kernel does not say)."""
    try:
        return sys_.stat_mount(b"", dirfd=fd)[2]
    except OSError:
        return None


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a regular file"


def _verified(box: Any, dfd: int, name: str, path: str) -> None:
    """An ``O_PATH`` fd of ``RUN_DIR/NAME`` into *box*, checked to be a mounted network namespace.

    Never follows a symlink.  Anything else raises and is left untouched
    (*box* then still holds the fd; the caller closes it).
    """
    try:
        _open_into(box, name, _O_VERIFY, dfd)
    except (FileNotFoundError, NotADirectoryError):
        raise NamespaceNotFound(errno.ENOENT, f"no named namespace {name!r}", path) from None
    except OSError as e:
        raise _described(e, f"cannot open {path}", path) from None
    fd = box[0]
    st = os.fstat(fd)
    if st.st_dev != nsfs_dev():
        if stat.S_ISREG(st.st_mode):
            raise NamespaceNotFound(errno.ENOENT, _unmounted(name, path), path)
        raise NotANamespace(f"{path} is {_kind(st.st_mode)}, not a named namespace; left untouched")
    # An O_PATH fd cannot be asked its namespace type: reopen the very file.
    check = sys_.fd_box()
    try:
        sys_.open_netns_into(check, _fd_path(fd), f"{path} (left untouched)")
    finally:
        sys_.close_box(check)
    mine, parent = _mnt_id(fd), _mnt_id(dfd)
    if mine is None or mine == parent:
        raise NotANamespace(f"{path} is not a mount point of its own; left untouched")


def _unmounted(name: str, path: str) -> str:
    """Why the placeholder at *path* has no namespace: being created, or stale."""
    box = sys_.fd_box()
    try:
        _open_into(box, path, _O_PEEK)
        busy = _creating(box[0])
    except OSError:
        busy = False
    finally:
        sys_.close_box(box)
    if busy:
        return f"{name!r} is being created right now ({path} is not mounted yet)"
    return (
        f"{path} has no namespace mounted on it: a stale placeholder; "
        f"`nslib repair {name}` (nslib.named.repair) removes it"
    )


def _pinned_by(path: str) -> str:
    """Which mount namespaces (and a process in each) have a mount at *path*."""
    real = os.fsencode(
        os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    )
    found = []
    seen: set[int] = set()
    try:
        own = os.stat("/proc/thread-self/ns/mnt").st_ino
        seen.add(own)
        if any(m.mount_point == real for m in read_mountinfo()):
            found.append(f"this thread's mount namespace mnt:[{own}]")
    except OSError:
        pass
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ino = os.stat(f"/proc/{entry}/ns/mnt").st_ino
            if ino in seen:
                continue
            seen.add(ino)
            if any(m.mount_point == real for m in read_mountinfo(f"/proc/{entry}/mountinfo")):
                with open(f"/proc/{entry}/comm", "rb") as f:
                    comm = f.read().strip().decode("utf-8", "backslashreplace")
                found.append(f"mount namespace mnt:[{ino}] (pid {entry}, {comm!r})")
        except OSError:
            continue
    if not found:
        return "no mount namespace that could be inspected has a mount there"
    return "mounted there in " + "; ".join(found)


def _busy(e: OSError, what: str, path: str) -> OSError:
    if e.errno != errno.EBUSY:
        return _described(e, what, path)
    return OSError(errno.EBUSY, f"{os.strerror(errno.EBUSY)}: {what}: {_pinned_by(path)}", path)


def delete(name: str, *, run_dir: str | None = None) -> None:
    """Delete the named namespace *name*, like ``ip netns del``.

    Checks before it acts: ``RUN_DIR/NAME`` is opened without following
    symlinks and must be an nsfs mount point of a *network* namespace; only
    then is that very mount detached (through the verified fd, so a file
    swapped in meanwhile is never unmounted) and the placeholder unlinked.
    A symlink, a directory, another filesystem's mount or another kind of
    namespace is refused and left exactly as it was.

    Only the *name* goes away: the namespace itself lives on while anything
    holds it, as the kernel does for any namespace, e.g. an open
    :class:`~nslib.handle.NsHandle` (including the one :func:`create`
    returned), a process or thread inside it, or a socket made in it.  Its
    interfaces and routes stay until the last holder is gone.

    A placeholder with nothing mounted on it (a stale one, or one whose
    :func:`create` is still in progress) is not a namespace: it raises
    :class:`~nslib.errors.NamespaceNotFound` and is left alone; see
    :func:`stale` and :func:`repair`.

    Ctrl-C is safe: the unmount and the unlink run back to back in one
    C-level chain, with no Python bytecode between them, so a
    ``KeyboardInterrupt`` finds the name either whole (before) or gone
    (after), never a stale placeholder; every fd is owned from the moment
    it exists.

    :raises InvalidName: *name* is not a valid ``ip netns`` name.
    :raises InvalidReference: *run_dir* is refused (see
        :func:`~nslib.names.validate_run_dir`).
    :raises NamespaceNotFound: no namespace of that name (also a
        ``FileNotFoundError``).
    :raises NotANamespace: ``RUN_DIR/NAME`` is something else (untouched).
    :raises OSError: ``EBUSY`` when the placeholder stays a mount point;
        the message names the mount namespaces (and a process in each) that
        pin it.
    :raises PermissionError: no CAP_SYS_ADMIN.
    """
    validate_name(name)
    d = _dir(run_dir)
    path = os.path.join(d, name)
    what = f"deleting named namespace {name!r}"
    dfd, top = sys_.fd_box(), sys_.fd_box()
    try:
        try:
            _open_into(dfd, d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise NamespaceNotFound(
                errno.ENOENT, f"no named namespace {name!r} in {d}", path
            ) from None
        _verified(top, dfd[0], name, path)
        for _ in range(16):  # each pass peels one namespace mount stacked on the name
            try:
                # Exactly the mount verified above (whatever the path names
                # now), then the placeholder under it: back to back, so an
                # interrupt finds the name either whole or gone.
                done = _back_to_back(
                    functools.partial(sys_.raw_umount2, _fd_path(top[0]), sys_.MNT_DETACH),
                    functools.partial(os.unlink, name, dir_fd=dfd[0]),
                )
            except FileNotFoundError:
                return  # removed by someone else after our unmount
            except IsADirectoryError:
                return  # not a placeholder of ours to remove
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise _busy(e, f"cannot remove the placeholder of {name!r}", path) from None
                # Still a mount point: another namespace stacked below, or
                # another mount namespace's mount held it.
                sys_.close_box(top)
                try:
                    _verified(top, dfd[0], name, path)
                except (NamespaceNotFound, NotANamespace):
                    raise _busy(e, f"cannot remove the placeholder of {name!r}", path) from None
                continue
            if not done:  # the unmount failed (its errno is still cffi's)
                try:
                    sys_.fail(-1, what, path)
                except OSError as e:
                    if e.errno == errno.EINVAL:  # unmounted by someone else meanwhile
                        raise NamespaceNotFound(
                            errno.ENOENT, f"no named namespace {name!r} in {d}", path
                        ) from None
                    raise _busy(e, what, path) from None
            return
        raise OSError(errno.EBUSY, f"{path} stays busy: too many mounts stacked on it", path)
    finally:
        sys_.close_box(top)
        sys_.close_box(dfd)


# -- looking up -------------------------------------------------------------


def exists(name: str, *, run_dir: str | None = None) -> bool:
    """Whether *name* is a live named network namespace.

    ``False`` for a stale placeholder (which still blocks :func:`create`;
    :func:`repair` removes it).  Creates nothing.

    :raises InvalidName: *name* is not a valid ``ip netns`` name.
    """
    validate_name(name)
    path = os.path.join(_dir(run_dir), name)
    box = sys_.fd_box()
    try:
        sys_.open_netns_into(box, os.fsencode(path), f"name:{name}")
    except (NamespaceNotFound, NotANamespace, NotADirectoryError):
        return False
    finally:
        sys_.close_box(box)
    return True


def list(*, run_dir: str | None = None) -> builtins.list[str]:
    """Every name in the run directory, sorted.

    ``ip netns list`` prints them in directory order; sorting makes the
    result stable.  Like ``ip``, this includes stale placeholders (see
    :func:`stale`).  A missing run directory is an empty list.
    """
    d = _dir(run_dir)
    try:
        return sorted(os.listdir(d))
    except FileNotFoundError:
        return []


def _scan(run_dir: str, *, follow: bool) -> builtins.list[tuple[str, os.stat_result]]:
    """``(name, stat)`` of every entry; entries that vanish are skipped."""
    box = sys_.fd_box()
    try:
        _open_into(box, run_dir, _O_DIR)
    except FileNotFoundError:
        return []
    out = []
    try:
        with os.scandir(box[0]) as it:
            for entry in it:
                try:
                    out.append((entry.name, entry.stat(follow_symlinks=follow)))
                except OSError:
                    continue
    finally:
        sys_.close_box(box)
    return out


def identify(pid_or_handle: int | NsHandle, *, run_dir: str | None = None) -> builtins.list[str]:
    """Every name bound to the namespace of a process or handle, sorted.

    Like ``ip netns identify`` (which prints only one): namespaces are
    compared by ``(st_dev, st_ino)``.  An ``int`` means that process's main
    thread; for a thread pass ``NsHandle.from_thread(...)`` or
    ``NsHandle.current()``.  An empty list means the namespace has no name.

    :raises NamespaceNotFound: no process *pid*.
    """
    if isinstance(pid_or_handle, NsHandle):
        key = pid_or_handle.ns_id
    else:
        pid = pid_or_handle
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise InvalidReference(f"pid must be a positive int or an NsHandle, not {pid!r}")
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except FileNotFoundError:
            raise NamespaceNotFound(errno.ESRCH, f"no process {pid}") from None
        key = (st.st_dev, st.st_ino)
    return sorted(n for n, st in _scan(_dir(run_dir), follow=True) if (st.st_dev, st.st_ino) == key)


def pids(name: str, *, run_dir: str | None = None) -> builtins.list[int]:
    """Every process with at least one thread inside the named namespace, sorted.

    Unlike ``ip netns pids``, which looks only at each process's main
    thread, every thread (``/proc/*/task/*/ns/net``) counts, so a process
    whose worker thread sits in the namespace is listed too.  Processes that
    exit meanwhile or cannot be inspected (EACCES) are skipped.  Open fds
    and sockets also keep a namespace alive but are not looked for.

    :raises NamespaceNotFound: no such name.
    :raises NotANamespace: a stale placeholder.
    """
    validate_name(name)
    path = os.path.join(_dir(run_dir), name)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise NamespaceNotFound(errno.ENOENT, f"no named namespace {name!r}", path) from None
    if st.st_dev != nsfs_dev():
        raise NotANamespace(f"{path} is a stale placeholder, not a mounted namespace")
    key = (st.st_dev, st.st_ino)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            s = os.stat(f"/proc/{entry}/ns/net")
            if (s.st_dev, s.st_ino) == key:
                found.append(int(entry))
                continue
        except OSError:
            pass  # exited, unreadable, or a zombie leader: look at its threads
        try:
            tids = os.listdir(f"/proc/{entry}/task")
        except OSError:
            continue
        for tid in tids:
            if tid == entry:
                continue
            try:
                s = os.stat(f"/proc/{entry}/task/{tid}/ns/net")
            except OSError:
                continue
            if (s.st_dev, s.st_ino) == key:
                found.append(int(entry))
                break
    return sorted(found)


# -- stale placeholders -----------------------------------------------------


def _creating(fd: int) -> bool:
    """Whether a create() holds the placeholder open (its flock)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def stale(*, run_dir: str | None = None) -> builtins.list[str]:
    """Names whose placeholder has no namespace mounted on it, sorted.

    Such a file is left when a mount disappears behind ``ip``'s back (a
    container's private mount namespace, a manual ``umount``, a crashed
    tool).  It blocks :func:`create` of that name and cannot be opened.
    Placeholders whose :func:`create` is still in progress are not listed.
    """
    d = _dir(run_dir)
    nsfs = nsfs_dev()
    out = []
    for n, st in _scan(d, follow=False):
        if st.st_dev == nsfs or not stat.S_ISREG(st.st_mode):
            continue
        box = sys_.fd_box()
        try:
            _open_into(box, os.path.join(d, n), _O_PEEK)
            if not _creating(box[0]):
                out.append(n)
        except OSError:
            continue
        finally:
            sys_.close_box(box)
    return sorted(out)


def repair(name: str, *, run_dir: str | None = None) -> None:
    """Remove the stale placeholder *name* (see :func:`stale`).

    Refuses anything that is not stale, so it can never delete a namespace.

    :raises InvalidName: *name* is not a valid ``ip netns`` name.
    :raises NamespaceNotFound: no such name.
    :raises NamespaceExists: *name* is a healthy mounted namespace (use
        :func:`delete`), or its :func:`create` is in progress.
    :raises InvalidReference: the entry is not a placeholder file
        (a directory or a symlink, which nslib and ``ip`` never make).
    """
    validate_name(name)
    d = _dir(run_dir)
    path = os.path.join(d, name)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise NamespaceNotFound(errno.ENOENT, f"no named namespace {name!r} in {d}", path) from None
    if st.st_dev == nsfs_dev():
        raise NamespaceExists(
            errno.EEXIST,
            f"{name!r} is a mounted namespace, not a stale placeholder (delete() removes it)",
            path,
        )
    if not stat.S_ISREG(st.st_mode):
        raise InvalidReference(f"{path} is not a placeholder file; refusing to remove it")
    box = sys_.fd_box()
    try:
        try:
            _open_into(box, path, _O_PEEK)
        except FileNotFoundError:
            raise NamespaceNotFound(
                errno.ENOENT, f"no named namespace {name!r} in {d}", path
            ) from None
        fd = box[0]
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NamespaceExists(
                errno.EEXIST, f"{name!r} is being created right now; not stale", path
            ) from None
        # Under the lock, check that the path is still this unmounted file.
        mine = os.fstat(fd)
        try:
            now = os.lstat(path)
        except FileNotFoundError:
            return  # someone else repaired it
        if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            raise NamespaceExists(
                errno.EEXIST, f"{name!r} changed while being repaired; not stale", path
            )
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise NamespaceExists(
                    errno.EEXIST, f"{path} is a mount point; not stale", path
                ) from None
            raise _described(e, f"cannot remove the stale placeholder {name!r}", path) from None
    finally:
        sys_.close_box(box)


# -- diagnostics ------------------------------------------------------------


@dataclass(frozen=True)
class RunDirStatus:
    """How a run directory is mounted (see :func:`run_dir_status`)."""

    path: str
    #: The directory exists.
    exists: bool
    #: It is a mount point of its own (ip's self-bind has been made).
    mount_point: bool
    #: Its peer group when shared, else ``None``.
    peer_group: int | None
    #: The peer group of the mount it sits on, when that is shared.
    parent_peer_group: int | None

    @property
    def shared(self) -> bool:
        """Mounts made inside propagate to other mount namespaces."""
        return self.peer_group is not None

    @property
    def own_peer_group(self) -> bool:
        """Shared, and not a peer of its parent (else each mount shows twice)."""
        return self.shared and self.peer_group != self.parent_peer_group

    @property
    def ready(self) -> bool:
        """:func:`create` will not need to touch the run directory's mounts."""
        return self.mount_point and self.own_peer_group

    @property
    def problems(self) -> tuple[str, ...]:
        """Human-readable findings; empty when all is well."""
        if not self.exists:
            return ("does not exist yet: the first create() makes it",)
        if not self.mount_point:
            return ("not a mount point yet: the first create() binds it onto itself",)
        out = []
        if not self.shared:
            out.append(
                "not a shared mount: namespaces named here will not be visible "
                "in other mount namespaces (containers, ip netns exec)"
            )
        elif not self.own_peer_group:
            out.append(
                f"shares peer group {self.peer_group} with its parent mount: each "
                "namespace mount also appears on the parent (an older ip netns made it)"
            )
        return tuple(out)


def run_dir_status(run_dir: str | None = None) -> RunDirStatus:
    """Diagnose the run directory's mount: whether it exists and is shared.

    O(1) with statmount(2) (Linux 6.8+); older kernels fall back to reading
    ``/proc/thread-self/mountinfo``.  Changes nothing.
    """
    d = _dir(run_dir)
    real = os.path.realpath(d)
    if not os.path.isdir(real):
        return RunDirStatus(d, False, False, None, None)
    facts = sys_.mount_peers(os.fsencode(real), f"run directory {d}")
    if facts is not None:
        root, group, parent_group = facts
        if not root:
            return RunDirStatus(d, True, False, None, None)
        return RunDirStatus(d, True, True, group or None, parent_group or None)
    # Kernels before 6.8: the same facts from mountinfo, O(mounts).
    entries: dict[int, MountInfo] = {}
    top: int | None = None
    want = os.fsencode(real)
    for m in read_mountinfo():
        entries[m.mount_id] = m
        if m.mount_point == want:
            top = m.mount_id  # later lines are mounted on top of earlier ones
    if top is None:
        return RunDirStatus(d, True, False, None, None)
    mine = entries[top]
    parent_peer = entries[mine.parent_id].shared_peer if mine.parent_id in entries else None
    return RunDirStatus(d, True, True, mine.shared_peer, parent_peer)
