"""Processes inside a namespace: :func:`popen` and :func:`run`, ``ip netns exec`` style.

How a child gets into the namespace without the parent ever moving: a
child made by ``fork``/``vfork``/``clone`` inherits the network and mount
namespaces of the *thread* that created it.  So each call starts a
throwaway thread, moves that thread (and only it) into the target, calls
:class:`subprocess.Popen` from it, and lets it exit.  No ``preexec_fn``, no
hand-made fork of the Python process, and no thread of the caller ever
leaves its namespace, so it is safe in threaded and asyncio programs.

With ``etc=True`` (the default) the child also gets ``ip netns exec``
semantics, prepared on the throwaway thread before the spawn:

* a private mount namespace (``unshare(CLONE_NEWNS)`` on the thread, which
  the kernel allows because it also unshares that thread's filesystem
  information only), with ``/`` made a recursive slave so nothing propagates
  back to the host;
* ``/sys`` detached and a fresh sysfs mounted, so ``/sys/class/net`` shows
  the target's interfaces (read-only when the old one was read-only);
* for a *named* namespace, each entry of ``/etc/netns/NAME/`` bind-mounted
  over ``/etc/<entry>`` (``resolv.conf`` is the usual one).

Every child gets its own mount namespace, as with ``ip netns exec``; nothing
is cached between calls, so a change under ``/etc/netns/NAME`` shows in the
next child.

``/etc`` symlinks: ``mount(2)`` follows a symlink at the target, so when
``/etc/resolv.conf`` is a symlink (systemd-resolved's ``stub-resolv.conf``)
the bind lands on the file it points to, *inside the child's private mount
namespace only*; the host never sees it.  This is what ``ip netns exec``
does too.  Two consequences worth knowing: a dangling symlink cannot be
bound over (the bind fails and is reported), and if the host later
*replaces* the target file by renaming a new one over it (systemd-resolved
does), the kernel detaches the bind in the child, which then sees the
host's file.  A long-running child on such a host should not rely on the
bind lasting past the host's next rewrite.

A bind that fails is a warning, as in iproute2: it is logged on the
``nslib.process`` logger (after the child has started; for :func:`execvp`
just before the exec), and the child runs.
iproute2's VRF reset is not done.
"""

from __future__ import annotations

import _thread
import contextlib
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeGuard

from . import _syscalls as sys_
from ._completed import run_with
from ._resolve import NsRef, Resolved, Tracker, parse, resolve
from .errors import DockerUnavailableError
from .reference import NetNamespace, ReferenceType

if TYPE_CHECKING:
    from .spawn import Namespaces


def _several(ref: object) -> TypeGuard[Namespaces]:
    # A Target or {NsKind: ref}: several namespaces, nsenter style (nslib.spawn).
    from collections.abc import Mapping

    from .kinds import Target

    return isinstance(ref, Target | Mapping)


__all__ = [
    "ETC_NETNS_DIR",
    "MICROSERVICE_SYNC_TIMEOUT",
    "execvp",
    "parse_reference",
    "popen",
    "run",
]

#: Where ``ip netns exec`` looks for per-namespace ``/etc`` files.
ETC_NETNS_DIR = "/etc/netns"

log = logging.getLogger("nslib.process")

_Argv = str | bytes | os.PathLike[str] | os.PathLike[bytes] | Sequence[Any]


def parse_reference(text: str) -> NetNamespace:
    """A reference string, by the rule every nslib call uses.

    ``/...`` is a path; ``name:``, ``pid:``, ``path:`` and ``ms:`` mean what
    they say; any other string is the name of a named namespace.

    :raises InvalidReference: a malformed reference.
    """
    return parse(text)


def _is_microservice(ref: NsRef) -> bool:
    if isinstance(ref, str):
        return ref.startswith("ms:")
    return isinstance(ref, NetNamespace) and ref.type == ReferenceType.MICROSERVICE


def _open_target(ref: NsRef, tracker: Tracker | None, run_dir: str | None) -> Resolved:
    if tracker is None and _is_microservice(ref):
        return _open_with_call_tracker(ref)
    return resolve(ref, tracker=tracker, run_dir=run_dir)


#: How long a call-scoped tracker waits for its first sync with docker.
MICROSERVICE_SYNC_TIMEOUT = 10.0


def _open_with_call_tracker(ref: NsRef) -> Resolved:
    # No tracker given: a short-lived one for this call, stopped before return.
    from .microservice import MicroserviceTracker

    tracker = MicroserviceTracker()
    tracker.start()
    try:
        wait_synced(tracker, MICROSERVICE_SYNC_TIMEOUT)
        return resolve(ref, tracker=tracker, timeout=0)
    finally:
        tracker.stop()


def wait_synced(tracker: Any, timeout: float) -> None:
    """Wait for a fresh tracker's first sync; fail fast if docker refuses.

    A long-lived tracker rides out a daemon that is down; a call-scoped one
    should not make its caller wait: the first failed connection attempt
    raises.

    :raises DockerUnavailableError: the daemon could not be reached, or the
        first sync did not finish within *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    while not tracker.wait_in_sync(0.05):
        health = tracker.health()
        if health.last_error and not health.connected:
            raise DockerUnavailableError(f"docker daemon not reachable: {health.last_error}")
        if time.monotonic() >= deadline:
            why = health.last_error or "no answer"
            raise DockerUnavailableError(
                f"docker daemon not reachable: no sync within {timeout:g} s ({why})"
            )


def _bind_etc(name: str) -> list[str]:
    """Bind ``/etc/netns/NAME/*`` over ``/etc/*`` (on the prepared thread).

    Returns the failures as messages; they are warnings, as in iproute2.
    """
    src_dir = os.path.join(ETC_NETNS_DIR, name)
    try:
        entries = sorted(os.listdir(src_dir))  # never lists '.' or '..'
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        return [f"cannot read {src_dir}: {e.strerror}"]
    problems = []
    for entry in entries:
        src = os.path.join(src_dir, entry)
        dst = os.path.join("/etc", entry)
        try:
            sys_.mount(
                os.fsencode(src), os.fsencode(dst), b"none", sys_.MS_BIND, f"bind {src} -> {dst}"
            )
        except OSError as e:
            why = os.strerror(e.errno) if e.errno else str(e)
            problems.append(f"bind {src} -> {dst} failed: {why}")
    return problems


def _spawn(target: Resolved, etc: bool, launch: Any, *, replaces: bool = False) -> Any:
    """Call ``launch()`` from a throwaway thread that joined *target*; return its result.

    *replaces*: ``launch`` execs, so bind problems are logged before it (from
    the thread), since nothing runs after a successful exec.
    """
    done = _thread.allocate_lock()
    done.acquire()
    box: list[Any] = []  # [Popen or exception, bind problems]

    def body() -> None:
        problems: list[str] = []
        try:
            if etc:
                sys_.prepare_exec(target.fd, target.what)
                if target.name is not None:
                    problems = _bind_etc(target.name)
                    if replaces:
                        _report(problems, target)
                        problems = []
            else:
                sys_.join(target.fd, target.what)
            box.append(launch())
        except BaseException as e:
            box.append(e)
        finally:
            box.append(problems)
            done.release()
            # The thread exits here; its mount namespace lives on in the child.

    # A bare thread: it is born, works and dies inside this call, so the
    # bookkeeping of threading.Thread would only add latency to every spawn.
    _thread.start_new_thread(body, ())
    try:
        done.acquire()
    except BaseException:
        _abandon(done, box)
        raise
    result, problems = box
    if isinstance(result, BaseException):
        raise result
    _report(problems, target)
    return result


def _report(problems: list[str], target: Resolved) -> None:
    for problem in problems:
        log.warning("%s (namespace %s)", problem, target.what)


def _abandon(done: Any, box: list[Any]) -> None:
    # Interrupted while the thread works (Ctrl-C): wait for it, then reap any
    # child it made, so nothing outlives the call unowned.  The thread fills
    # *box* before it releases *done*, and the interrupt may land just after
    # our acquire already took that release: so wait on *box*, not the lock.
    while len(box) < 2:
        try:
            done.acquire(timeout=0.05)
        except BaseException:  # a second Ctrl-C must not leak the child
            continue
    if box and isinstance(box[0], subprocess.Popen):
        proc = box[0]
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def popen(
    ref: NsRef | Namespaces,
    argv: _Argv,
    *,
    etc: bool = True,
    tracker: Tracker | None = None,
    run_dir: str | None = None,
    **popen_kwargs: Any,
) -> subprocess.Popen[Any]:
    """Start *argv* inside the namespace *ref*; return its :class:`subprocess.Popen`.

    *ref* may be an :class:`~nslib.NsHandle`, a :class:`~nslib.NetNamespace`,
    a reference string (``blue``, ``name:blue``, ``pid:42``, ``path:/p``,
    ``ms:web``, ``/a/path``; see :func:`parse_reference`), a path object
    or an int fd.  Named references resolve
    in *run_dir* (default ``/run/netns``).  ``ms:LABEL`` resolves through
    *tracker*; without one, a :class:`~nslib.MicroserviceTracker` is started
    for the call (waiting up to :data:`MICROSERVICE_SYNC_TIMEOUT` seconds) and stopped.

    With *etc* (the default) the child gets ``ip netns exec`` semantics: a
    private mount namespace, a fresh ``/sys`` and, for a named namespace, the
    ``/etc/netns/NAME/*`` bind mounts (see the module docstring, including
    what happens with symlinks).  With ``etc=False`` it only joins the
    network namespace: cheaper, and the child shares the host's mounts (its
    ``/sys/class/net`` then shows the *host's* interfaces).

    The calling thread never changes namespace; *popen_kwargs* go to
    :class:`subprocess.Popen` unchanged.  Needs CAP_SYS_ADMIN.

    :raises NamespaceNotFound: the namespace, process or name does not exist.
    :raises InvalidReference: a malformed reference.
    :raises UnavailableMicroserviceError: no running container holds the label.
    :raises PermissionError: not allowed to join the namespace or to mount.
    :raises OSError: what :class:`subprocess.Popen` raises (a missing program
        is a :class:`FileNotFoundError`).

    *ref* may also be a :class:`~nslib.Target` or a mapping from
    :class:`~nslib.NsKind` to references, for several namespaces at once as
    ``nsenter`` does: that is :func:`nslib.spawn.popen` (*etc* does not
    apply; *tracker* and *run_dir* serve its NET entry; its ``root``,
    ``cwd`` and ``preserve_credentials`` may be given here).
    """
    if _several(ref):
        from .spawn import popen as spawn_popen

        return spawn_popen(ref, argv, tracker=tracker, run_dir=run_dir, **popen_kwargs)
    target = _open_target(ref, tracker, run_dir)  # type: ignore[arg-type]
    try:
        proc: subprocess.Popen[Any] = _spawn(
            target, etc, lambda: subprocess.Popen(argv, **popen_kwargs)
        )
        return proc
    finally:
        target.close()


def run(
    ref: NsRef | Namespaces,
    argv: _Argv,
    *,
    etc: bool = True,
    tracker: Tracker | None = None,
    run_dir: str | None = None,
    input: str | bytes | None = None,
    capture_output: bool = False,
    timeout: float | None = None,
    check: bool = False,
    **popen_kwargs: Any,
) -> subprocess.CompletedProcess[Any]:
    """:func:`subprocess.run`, inside the namespace *ref*.

    Same arguments and behaviour as :func:`subprocess.run` (*input*,
    *capture_output*, *timeout*, *check*, and any :class:`subprocess.Popen`
    keyword), plus the namespace arguments of :func:`popen`.  On timeout the
    child is killed and :class:`subprocess.TimeoutExpired` raised.

    :raises subprocess.CalledProcessError: *check* is true and the child
        exited non-zero.
    :raises subprocess.TimeoutExpired: the child outlived *timeout*.
    """
    return run_with(
        functools.partial(popen, ref, argv, etc=etc, tracker=tracker, run_dir=run_dir),
        input,
        capture_output,
        timeout,
        check,
        popen_kwargs,
    )


def execvp(
    ref: NsRef,
    argv: Sequence[str],
    *,
    etc: bool = True,
    tracker: Tracker | None = None,
    run_dir: str | None = None,
    env: dict[str, str] | None = None,
) -> NoReturn:
    """Replace this process by *argv* run inside *ref*, as ``ip netns exec`` does.

    The namespace work happens on a throwaway thread, which then calls
    ``execvp(3)``: the kernel ends every other thread and the process keeps
    its PID, its stdio and the thread's namespaces.  Standard streams are
    flushed first, and SIGPIPE/SIGXFSZ are reset to their defaults (Python
    ignores them) so the new program behaves as it would from a shell.  Call
    it from the main thread.  Returns only by raising.

    :param env: the new environment (default: this process's).
    :raises OSError: ``exec`` failed (``FileNotFoundError`` for a missing
        program); its ``filename`` is then ``argv[0]``, which tells it apart
        from a namespace error.  This process is unchanged.
    :raises PermissionError: joining the namespace was refused.
    :raises NamespaceNotFound: the namespace does not exist.
    """
    if not argv:
        raise ValueError("execvp needs a program to run")
    args = [os.fspath(a) for a in argv]
    target = _open_target(ref, tracker, run_dir)
    try:
        saved = {}
        for name in ("SIGPIPE", "SIGXFSZ"):
            signum = getattr(signal, name, None)
            if signum is not None:
                saved[signum] = signal.signal(signum, signal.SIG_DFL)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()

        def launch() -> None:
            try:
                if env is None:
                    os.execvp(args[0], args)
                else:
                    os.execvpe(args[0], args, env)
            except OSError as e:  # name the program, so callers can tell it apart
                raise OSError(e.errno, e.strerror, args[0]) from None

        try:
            _spawn(target, etc, launch, replaces=True)
        finally:  # exec failed: put things back
            for signum, handler in saved.items():
                signal.signal(signum, handler)
    finally:
        target.close()
    raise AssertionError("unreachable: exec returned")  # pragma: no cover
