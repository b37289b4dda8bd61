"""Start a program inside several namespaces at once, as ``nsenter`` does.

:func:`popen` and :func:`run` take either a :class:`~nslib.kinds.Target`
(all, or some, namespaces of a process: ``nsenter -a -t PID``) or a mapping
from :class:`~nslib.kinds.NsKind` to a namespace reference
(``{NsKind.NET: handle, NsKind.MNT: "/proc/42/ns/mnt"}``).

How: one C call (``csrc/spawn.c``, the GIL released) clones a child that
shares the caller's memory until it execs, as ``posix_spawn`` does; the
child joins the namespaces, changes root and working directory, sets up
its fds and execs.  Nothing runs Python in the child and there is no
``preexec_fn``, so it is safe in threaded and asyncio programs, and no
thread of the caller ever changes namespace.  The child starts from the
*calling thread's* namespaces: kinds not named are inherited from it.

What ``nsenter`` does, and so does this:

* joins in the order user, cgroup, ipc, uts, net, pid, mnt, time: every
  kind but USER first, then whatever failed, USER first.  So a privileged
  caller enters a container's user namespace last, and a caller that needs
  that namespace's capabilities enters it first;
* with a user namespace, drops supplementary groups and becomes uid and
  gid 0 inside it (``preserve_credentials=True`` keeps them, like
  ``--preserve-credentials``);
* a PID namespace only applies to children, so the program runs in a
  grandchild.  Unlike ``nsenter`` no process is left in between: the
  grandchild is made the caller's own child (``CLONE_PARENT``), so
  ``NsPopen.pid`` is the program's PID and ``wait()`` is its status;
* with a :class:`~nslib.kinds.Target` and every kind (``kinds=None``), a
  kind the kernel lacks is left out, and so is the caller's own user
  namespace, which the kernel refuses to re-enter.  A PID or time
  namespace that is already the caller's is not joined either: joining it
  changes nothing, and a time namespace can only be joined by a child that
  does not share the caller's memory (a full fork, slower).
* The target process is pinned by a pidfd while its namespace files are
  opened, so a PID reused meanwhile is an error, never someone else's
  namespaces; and joining uses the pidfd (``setns(pidfd, ...)``, one call
  for all kinds, Linux 5.8+) with the opened files as the fallback.

The object returned is an :class:`NsPopen`, a real
:class:`subprocess.Popen`: ``wait``, ``poll``, ``communicate``, pipes,
``pass_fds``, ``close_fds``, ``env``, ``start_new_session``,
``process_group``, ``umask`` and ``restore_signals`` behave as there.
``preexec_fn``, ``user``, ``group`` and ``extra_groups`` are refused: they
would need code or libc calls in the child that are not safe there.

A failure in the child before the exec raises in the caller:
:class:`~nslib.NamespaceJoinError` (with ``kind``) for a namespace
that could not be joined, :class:`~nslib.SpawnError` for root, working
directory and the rest, and the usual ``OSError`` subclass (with the
program as ``filename``) when the program cannot be executed.  Every child
that failed is reaped and every fd opened for the call is closed.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from . import _syscalls as sys_
from ._completed import run_with
from ._resolve import Resolved, Tracker, parse, resolve
from .errors import (
    InvalidReference,
    NamespaceJoinError,
    NamespaceNotFound,
    NotANamespace,
    SpawnError,
)
from .handle import NsHandle, check_fd
from .kinds import NsKind, Pidfd, Target
from .reference import NetNamespace, ReferenceType

__all__ = ["NsPopen", "NsRef", "popen", "run"]

#: What a mapping may give for one kind: a handle, a ``Pidfd`` (that
#: process's namespace of the kind), a path, a borrowed fd, or for NET a
#: :class:`~nslib.NetNamespace`.
NsRef = NsHandle | Pidfd | NetNamespace | str | os.PathLike[str] | int
Namespaces = Mapping[NsKind | str, NsRef] | Target
_Argv = str | bytes | os.PathLike[str] | os.PathLike[bytes] | Sequence[Any]
_DirSpec = bool | str | os.PathLike[str] | None


class _Plan:
    """Everything the C call needs, resolved; owns the fds it opened."""

    __slots__ = (
        "creds",
        "cwd_fd",
        "joins",
        "owned",
        "pidfd",
        "pidfd_types",
        "resolved",
        "root_fd",
        "what",
    )

    def __init__(self) -> None:
        self.joins: list[tuple[int, NsKind]] = []
        self.what: dict[NsKind, str] = {}
        self.owned: list[int] = []
        self.resolved: list[Resolved] = []
        self.pidfd: Pidfd | None = None
        self.pidfd_types = 0
        self.root_fd = -1
        self.cwd_fd = -1
        self.creds = False

    def own(self, fd: int) -> int:
        self.owned.append(fd)
        return fd

    def add(self, fd: int, kind: NsKind, what: str) -> None:
        self.joins.append((fd, kind))
        self.what[kind] = what

    def drop(self, kind: NsKind) -> None:
        self.joins = [(fd, k) for fd, k in self.joins if k is not kind]
        self.what.pop(kind, None)

    def close(self) -> None:
        owned, self.owned = self.owned, []
        for fd in owned:
            os.close(fd)
        resolved, self.resolved = self.resolved, []
        for res in resolved:
            res.close()
        pidfd, self.pidfd = self.pidfd, None
        if pidfd is not None:
            pidfd.close()


def _ino(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _skip_noops(plan: _Plan) -> None:
    # Joining the PID or time namespace the child would be born in anyway
    # changes nothing; skipping it saves the second fork (PID) or a full
    # copy of the caller's memory (time).
    for kind, mine in (
        (NsKind.PID, "/proc/thread-self/ns/pid_for_children"),
        (NsKind.TIME, "/proc/thread-self/ns/time_for_children"),
    ):
        for fd, k in plan.joins:
            if k is kind and os.fstat(fd).st_ino == _ino(mine):
                plan.drop(kind)
                plan.pidfd_types &= ~kind.flag
                break


def _open_dir(path: str | bytes, what: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise NamespaceNotFound(e.errno, f"{e.strerror}: {what}", os.fsdecode(path)) from None


def _resolve_target(target: Target, plan: _Plan, root: _DirSpec, cwd: _DirSpec) -> None:
    pid = target.pid
    plan.pidfd = pidfd = Pidfd.open(pid)
    what = f"process {pid}"
    for kind in target.kinds:
        mine = f"/proc/thread-self/ns/{kind.proc_name}"
        if target.all:
            own = _ino(mine)
            if own is None:
                continue  # a kind this kernel does not have
        path = b"/proc/%d/ns/%s" % (pid, kind.proc_name.encode())
        try:
            fd, _ = sys_.open_kind(path, kind.flag, f"the {kind} namespace of {what}")
        except NamespaceNotFound:
            pidfd.alive_check()  # "has exited" says more than a missing file
            raise
        plan.own(fd)
        if target.all and kind is NsKind.USER and os.fstat(fd).st_ino == own:
            continue  # the kernel refuses to re-enter one's own user namespace
        plan.add(fd, kind, what)
    if root is True:
        plan.root_fd = plan.own(_open_dir(f"/proc/{pid}/root", f"the root of {what}"))
    if cwd is True:
        plan.cwd_fd = plan.own(_open_dir(f"/proc/{pid}/cwd", f"the working directory of {what}"))
    # The files were opened by PID: make sure it still named the pinned process.
    pidfd.alive_check()
    plan.pidfd_types = sum(k.flag for _, k in plan.joins)


def _resolve_one(
    kind: NsKind, ref: NsRef, plan: _Plan, tracker: Tracker | None, run_dir: str | None
) -> None:
    # NET goes through the one resolver, so a string means here what it means
    # everywhere (a bare word is a named namespace).  The other kinds take a
    # handle, a pidfd, an fd, or a path (`/...`, `path:`, a path object); a
    # name, `pid:` or `ms:` reference names a network namespace.
    label = f"the {kind} namespace"
    if isinstance(ref, bool):
        raise InvalidReference(f"{label}: expected a namespace reference, not {ref!r}")
    if isinstance(ref, Pidfd):
        what = f"process {ref.pid}"
        path = b"/proc/%d/ns/%s" % (ref.pid, kind.proc_name.encode())
        try:
            fd, _ = sys_.open_kind(path, kind.flag, f"{label} of {what}")
        except NamespaceNotFound:
            ref.alive_check()
            raise
        plan.own(fd)
        ref.alive_check()
        plan.add(fd, kind, what)
    elif kind is NsKind.NET:
        res = resolve(ref, tracker=tracker, run_dir=run_dir)
        plan.resolved.append(res)
        sys_.check_kind(res.fd, kind.flag, res.what)  # a handle of another kind
        plan.add(res.fd, kind, res.what)
    elif isinstance(ref, NsHandle):
        fd = ref.fileno()
        sys_.check_kind(fd, kind.flag, ref.what)
        plan.add(fd, kind, ref.what)
    elif isinstance(ref, int):
        check_fd(ref)
        sys_.check_kind(ref, kind.flag, f"fd {ref}")
        plan.add(ref, kind, f"fd {ref}")
    elif isinstance(ref, str | os.PathLike | NetNamespace):
        file, what = _kind_path(kind, ref)
        fd, _ = sys_.open_kind(sys_.encode_path(file, what), kind.flag, what)
        plan.add(plan.own(fd), kind, what)
    else:
        raise InvalidReference(
            f"{label}: expected an NsHandle, Pidfd, NetNamespace, path or fd, "
            f"not {type(ref).__name__}"
        )


def _kind_path(kind: NsKind, ref: str | os.PathLike[str] | NetNamespace) -> tuple[str, str]:
    """The file of a non-network *kind* that *ref* names, and how to call it."""
    if isinstance(ref, os.PathLike):
        path = os.fsdecode(os.fspath(ref))
        return path, f"path:{path}"
    parsed = parse(ref) if isinstance(ref, str) else ref
    if parsed.type is ReferenceType.FD:
        return parsed.reference, f"path:{parsed.reference}"
    raise NotANamespace(
        f"{parsed} is a network namespace reference, not a {kind} one "
        "(a process's other namespaces: Target(pid, kinds=...))"
    )


def _plan(
    namespaces: Namespaces,
    root: _DirSpec,
    cwd: _DirSpec,
    preserve_credentials: bool,
    tracker: Tracker | None = None,
    run_dir: str | None = None,
) -> _Plan:
    plan = _Plan()
    try:
        if isinstance(namespaces, Target):
            _resolve_target(namespaces, plan, root, cwd)
        elif isinstance(namespaces, Mapping):
            if root is True or cwd is True:
                raise InvalidReference("root=True and cwd=True need a Target (whose root/cwd?)")
            seen: set[NsKind] = set()
            for key, ref in namespaces.items():
                kind = NsKind.parse(key)
                if kind in seen:
                    raise InvalidReference(f"the {kind} namespace is given twice")
                seen.add(kind)
                _resolve_one(kind, ref, plan, tracker, run_dir)
        else:
            raise InvalidReference(
                "expected a Target or a mapping of NsKind to namespace references, "
                f"not {type(namespaces).__name__}"
            )
        if not plan.joins and not isinstance(namespaces, Target):
            raise InvalidReference("no namespace to join")
        if isinstance(root, str | os.PathLike):
            plan.root_fd = plan.own(_open_dir(os.fspath(root), f"root {os.fspath(root)}"))
        _skip_noops(plan)
        plan.creds = not preserve_credentials and any(k is NsKind.USER for _, k in plan.joins)
    except BaseException:
        plan.close()
        raise
    return plan


class NsPopen(subprocess.Popen[Any]):
    """A :class:`subprocess.Popen` whose child was started by :func:`popen`.

    Everything :class:`subprocess.Popen` offers works the same; only the
    way the child is made differs (see the module docstring).  ``pid``
    is the program's own PID as seen from the caller, even inside a PID
    namespace.
    """

    def __init__(self, plan: _Plan, args: _Argv, **kwargs: Any) -> None:
        self._nslib_plan = plan
        super().__init__(args, **kwargs)

    def _execute_child(
        self,
        args: Any,
        executable: Any,
        preexec_fn: Any,
        close_fds: bool,
        pass_fds: Sequence[int],
        cwd: Any,
        env: Any,
        startupinfo: Any,
        creationflags: int,
        shell: bool,
        p2cread: int,
        p2cwrite: int,
        c2pread: int,
        c2pwrite: int,
        errread: int,
        errwrite: int,
        restore_signals: bool,
        gid: Any,
        gids: Any,
        uid: Any,
        umask: int,
        start_new_session: bool,
        process_group: int = -1,
        *_more: Any,
    ) -> None:
        try:
            self._start(
                args, executable, preexec_fn, close_fds, pass_fds, cwd, env, shell,
                (p2cread, c2pwrite, errwrite), restore_signals, (gid, gids, uid),
                umask, start_new_session, process_group,
            )  # fmt: skip
        finally:
            # Popen's own helper (private, stable since 3.7): closes the child's ends.
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)  # type: ignore[attr-defined]

    def _start(
        self,
        args: Any,
        executable: Any,
        preexec_fn: Any,
        close_fds: bool,
        pass_fds: Sequence[int],
        cwd: Any,
        env: Any,
        shell: bool,
        stdio: tuple[int, int, int],
        restore_signals: bool,
        ids: tuple[Any, Any, Any],
        umask: int,
        start_new_session: bool,
        process_group: int,
    ) -> None:
        plan = self._nslib_plan
        if preexec_fn is not None:
            raise TypeError("nslib.spawn runs no Python in the child: preexec_fn is not supported")
        if any(i is not None for i in ids):
            raise TypeError(
                "user, group and extra_groups are not supported by nslib.spawn; "
                "a user namespace gives uid/gid 0 inside it (see preserve_credentials)"
            )
        # The argument handling of subprocess.Popen (POSIX).
        if isinstance(args, str | bytes):
            args = [args]
        elif isinstance(args, os.PathLike):
            if shell:
                raise TypeError("path-like args is not allowed when shell is true")
            args = [args]
        else:
            args = list(args)
        if shell:
            args = ["/bin/sh", "-c", *args]
            if executable:
                args[0] = executable
        if executable is None:
            executable = args[0]
        sys.audit("subprocess.Popen", executable, args, cwd, env)
        orig_executable = executable
        env_list = None
        if env is not None:
            env_list = []
            for k, v in env.items():
                key = os.fsencode(k)
                if b"=" in key:
                    raise ValueError("illegal environment variable name")
                env_list.append(key + b"=" + os.fsencode(v))
        exe = os.fsencode(executable)
        if os.path.dirname(exe):
            exec_paths = [exe]
        else:
            # Searched in the child, so PATH resolves in the new mount namespace.
            exec_paths = [os.path.join(os.fsencode(d), exe) for d in os.get_exec_path(env)]
        argv = [os.fsencode(a) for a in args]
        flags = 0
        if close_fds:
            flags |= sys_.SPAWN_CLOSE_FDS
        if restore_signals:
            flags |= sys_.SPAWN_RESTORE_SIGNALS
        if start_new_session:
            flags |= sys_.SPAWN_SETSID
        if plan.creds:
            flags |= sys_.SPAWN_CREDS
        pidfd = plan.pidfd
        pid, step, kind, err = sys_.spawn(
            argv,
            env_list,
            exec_paths,
            [(fd, k.flag) for fd, k in plan.joins],
            pidfd=pidfd.fileno() if pidfd is not None and plan.pidfd_types else -1,
            pidfd_types=plan.pidfd_types,
            root_fd=plan.root_fd,
            cwd_fd=plan.cwd_fd,
            cwd_path=None if cwd is None else os.fsencode(cwd),
            stdio=stdio,
            keep_fds=[fd for fd in pass_fds if fd >= 0],
            flags=flags,
            pgid=process_group if process_group is not None and process_group >= 0 else -1,
            umask=umask if umask is not None and umask >= 0 else -1,
        )
        if pid < 0:
            raise _child_error(plan, step, kind, err, orig_executable, cwd)
        self.pid = pid
        self._child_created = True


def _child_error(plan: _Plan, step: int, kind: int, err: int, executable: Any, cwd: Any) -> OSError:
    strerror = os.strerror(err) if err else "unknown error"
    if step == sys_.STEP_EXEC:
        return OSError(err, strerror, os.fsdecode(executable))
    if step == sys_.STEP_CWD and cwd is not None:
        return OSError(err, strerror, os.fsdecode(cwd))
    doing = sys_.STEPS.get(step, f"step {step}")
    if step == sys_.STEP_SETNS:
        try:
            nskind: NsKind | None = NsKind(kind)
        except ValueError:
            nskind = None
        name = nskind.proc_name if nskind else hex(kind)
        whose = plan.what.get(nskind, "?") if nskind else "?"
        join = NamespaceJoinError(
            err, f"{strerror}: the child could not join the {name} namespace ({whose})"
        )
        join.kind = nskind
        e: SpawnError = join
    else:
        e = SpawnError(err, f"{strerror}: the child failed {doing}")
    e.step = doing
    return e


def popen(
    namespaces: Namespaces,
    argv: _Argv,
    *,
    root: _DirSpec = None,
    cwd: _DirSpec = None,
    preserve_credentials: bool = False,
    tracker: Tracker | None = None,
    run_dir: str | None = None,
    **popen_kwargs: Any,
) -> NsPopen:
    """Start *argv* inside *namespaces*; return its :class:`NsPopen`.

    :param namespaces: a :class:`~nslib.kinds.Target` (``Target(pid)`` for
        every namespace of *pid*, as ``nsenter -a -t PID``), or a mapping
        from :class:`~nslib.kinds.NsKind` (or its name) to an
        :class:`~nslib.NsHandle`, :class:`~nslib.kinds.Pidfd`, path, fd, or
        for NET a :class:`~nslib.NetNamespace`.  Kinds not named are the
        calling thread's.
    :param root: ``True``: the target's root directory (``nsenter -r``);
        a path: that directory, as the caller sees it (``nsenter -r DIR``).
    :param cwd: ``True``: the target's working directory (``nsenter -w``);
        a path: resolved in the child, after the joins and the root change
        (``nsenter -W DIR``).  Without *cwd*, a child that joined a mount
        namespace starts at its root (the kernel moves it there), else in
        the caller's directory; with *root* alone it keeps the directory
        it had, as ``nsenter`` does.
    :param preserve_credentials: with a user namespace, keep uid, gid and
        groups instead of becoming root in it.
    :param tracker: resolves an ``ms:LABEL`` NET entry.
    :param run_dir: where a named NET entry lives (default ``/run/netns``).
    :param popen_kwargs: :class:`subprocess.Popen` keywords (``stdin``,
        ``stdout``, ``env``, ``pass_fds``, ``text``, ...).

    :raises NamespaceNotFound: the target process, or a namespace file,
        does not exist; the target exited while it was being opened.
    :raises NotANamespace: a reference of another kind (a UTS namespace
        given as NET), or not a namespace at all.
    :raises InvalidReference: a malformed mapping or reference.
    :raises NamespaceJoinError: the child could not join a namespace
        (``.kind`` says which, ``errno`` why).
    :raises SpawnError: the child failed to change root or directory, or to
        set up its fds or credentials.
    :raises OSError: the program could not be executed (``filename`` is it).
    :raises TypeError: ``preexec_fn``, ``user``, ``group`` or ``extra_groups``.
    """
    if popen_kwargs.get("preexec_fn") is not None:
        raise TypeError("nslib.spawn runs no Python in the child: preexec_fn is not supported")
    path_cwd = None if cwd is True or cwd is False else cwd
    plan = _plan(namespaces, root, cwd, preserve_credentials, tracker, run_dir)
    try:
        return NsPopen(plan, argv, cwd=path_cwd, **popen_kwargs)
    finally:
        plan.close()


def run(
    namespaces: Namespaces,
    argv: _Argv,
    *,
    root: _DirSpec = None,
    cwd: _DirSpec = None,
    preserve_credentials: bool = False,
    tracker: Tracker | None = None,
    run_dir: str | None = None,
    input: str | bytes | None = None,
    capture_output: bool = False,
    timeout: float | None = None,
    check: bool = False,
    **popen_kwargs: Any,
) -> subprocess.CompletedProcess[Any]:
    """:func:`subprocess.run`, inside *namespaces* (see :func:`popen`).

    :raises subprocess.CalledProcessError: *check* and a non-zero exit.
    :raises subprocess.TimeoutExpired: the child outlived *timeout* (it is killed).
    """
    return run_with(
        functools.partial(
            popen,
            namespaces,
            argv,
            root=root,
            cwd=cwd,
            preserve_credentials=preserve_credentials,
            tracker=tracker,
            run_dir=run_dir,
        ),
        input,
        capture_output,
        timeout,
        check,
        popen_kwargs,
    )
