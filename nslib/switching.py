"""Moving code into a namespace: the calling thread, a fresh one, or a pinned one.

The rules (namespaces are per *thread*):

* :func:`entered` and :func:`switch_to` move only the calling thread, and
  always move it back.  Use them on threads you own.  Never use them on
  shared pool threads (asyncio's default executor, a web server's workers):
  a thread that is switched while it runs someone else's task would run that
  task in the wrong namespace, and any thread it starts is born there.
* :func:`run_in` runs a function on a fresh thread that dies afterwards;
  :func:`pinned` gives an executor whose single worker lives in the
  namespace; :func:`run_in_async` is the asyncio form and never touches the
  event loop's thread.
* If a thread cannot be moved back (the kernel refused), it is *poisoned*:
  :class:`~nslib.NamespaceRestoreError` is raised and every later switch on
  that thread raises it too.  Let such a thread finish.
* Threads started while a thread is switched are born in the foreign
  namespace (the kernel copies it).  Start threads before switching, or use
  :func:`run_in` / :func:`pinned`, whose threads join their target
  explicitly whoever starts them.
* Do not ``yield`` or ``await`` inside :func:`entered`: the switch belongs to
  the thread, not to the generator or coroutine.
* nslib remembers each thread's home namespace (one fd per thread, closed
  when the thread exits).  Moves made through nslib (``join``, ``unshare``,
  ``setns`` in :mod:`nslib._syscalls`) update it; a thread moved for good
  behind nslib's back (another library's setns) must not use nslib switches
  afterwards, as they would move it back to its old home.
"""

from __future__ import annotations

import asyncio
import errno
import os
import queue
import socket
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar, final

from . import _syscalls as sys_
from .errors import (
    ClosedHandleError,
    InvalidReference,
    NamespaceNotFound,
    NamespaceRestoreError,
)
from .handle import NsHandle
from .reference import NetNamespace, NsLike, open_namespace

__all__ = [
    "PinnedExecutor",
    "Revert",
    "entered",
    "pinned",
    "run_in",
    "run_in_async",
    "socket_in",
    "switch_depth",
    "switch_to",
    "thread_poisoned",
]

P = ParamSpec("P")
T = TypeVar("T")

_raw_enter = sys_.raw_enter
_raw_leave = sys_.raw_leave
_raw_depth = sys_.raw_depth
_raw_last_enter = sys_.raw_last_enter
_raw_unwind = sys_.raw_unwind
_raw_serial = sys_.raw_serial
_raw_socket_in = sys_.raw_socket_in
_Socket = socket.socket
_running_loop = asyncio._get_running_loop
_FD_MAX = 2**31 - 1


def _undo_interrupted_enter() -> None:
    # An asynchronous exception (KeyboardInterrupt from a signal handler) is
    # raised as soon as a C call returns, before Python stores its result.
    # If that call was a successful enter, the switch is still the innermost:
    # undo it, so the exception leaves the thread where it was.
    last = _raw_last_enter()
    if last > 0 and last == _raw_depth():
        _raw_leave(last)


def _resolve(ns: NsLike) -> tuple[int, NsHandle | None, str]:
    """``(fd, handle we opened and must close, description)`` for any ns-like."""
    if type(ns) is NsHandle:
        return ns.fileno(), None, ns.what
    if isinstance(ns, NetNamespace):
        h = open_namespace(ns)
        return h.fileno(), h, str(ns)
    if isinstance(ns, int) and not isinstance(ns, bool):
        if not 0 <= ns <= _FD_MAX:
            raise OSError(errno.EBADF, f"{os.strerror(errno.EBADF)}: fd {ns}")
        return ns, None, f"fd {ns}"
    if isinstance(ns, str | os.PathLike):
        try:
            h = NsHandle.from_path(ns)
        except NamespaceNotFound as e:
            if isinstance(ns, str) and "/" not in ns:
                # A bare word is a *path* here; NetNamespace.parse reads it as a name.
                raise NamespaceNotFound(
                    e.errno,
                    f"{e.strerror}; for the named namespace, pass NetNamespace.named({ns!r})",
                    e.filename,
                ) from None
            raise
        return h.fileno(), h, h.what
    raise InvalidReference(
        f"expected an NsHandle, NetNamespace, path or fd, not {type(ns).__name__}"
    )


def _refuse_on_loop(what: str) -> None:
    if _running_loop() is not None:
        raise RuntimeError(
            f"refusing to switch the asyncio event loop's thread into {what}: every "
            "coroutine would run there; use `await nslib.run_in_async(ns, fn)`"
        )


@final
class entered:
    """Run the ``with`` body with the calling thread inside *ns*, then move back.

    *ns* may be an :class:`NsHandle`, a :class:`NetNamespace`, a path or an
    int fd.  Nesting works; the thread is moved back on every exit, including
    exceptions and ``KeyboardInterrupt``.  A handle or fd costs no open
    (a thread opens its home namespace once, on its first switch, and a
    nested switch opens the current one to return to); a reference or path
    is opened once and closed on exit.  ``__enter__``
    returns the handle used (``None`` for a bare fd).

    Refused on a thread running an asyncio event loop.

    An asynchronous exception (``KeyboardInterrupt`` from a signal) that
    arrives while the thread is being switched in is handled: the switch is
    undone before the exception propagates.  Python gives no way to close the
    last window, between the end of the body and the start of ``__exit__``;
    a signal landing exactly there leaves the thread switched (``switch_depth()``
    then says so).

    If the block ends while a :func:`switch_to` made inside it is still
    open, the thread is moved back to where it was before the block anyway,
    that inner switch is abandoned (its revert becomes a no-op) and
    ``RuntimeError`` reports the bug.

    :raises NamespaceRestoreError: moving back failed; the thread is poisoned.
    :raises ClosedHandleError: *ns* is a closed handle.
    :raises NotANamespace: *ns* is not a network namespace.
    :raises RuntimeError: on an event loop thread, or the object is already
        active.
    """

    __slots__ = ("_depth", "_ns", "_own", "_what")

    def __init__(self, ns: NsLike) -> None:
        self._ns = ns
        self._own: NsHandle | None = None
        self._depth = 0

    def __enter__(self) -> NsHandle | None:
        ns = self._ns
        if type(ns) is NsHandle and not self._depth:
            # The hot path: a handle we do not own, no open, one C call.
            fd = ns._fd
            if fd >= 0 and _running_loop() is None:
                try:
                    depth = _raw_enter(fd)
                except BaseException:
                    _undo_interrupted_enter()
                    raise
                if depth > 0:
                    self._depth = depth
                    return ns
                sys_.fail(depth, ns.what, fd=fd)  # reads errno first; no second try
        return self._enter_slow()

    def _enter_slow(self) -> NsHandle | None:
        if self._depth:
            raise RuntimeError("this entered() is already active; make a new one to nest")
        ns = self._ns
        if type(ns) is NsHandle:
            if ns._fd < 0:
                raise ClosedHandleError(f"cannot switch through a closed handle ({ns.what})")
            fd, self._what = ns._fd, ns.what
            handle: NsHandle | None = ns
        else:
            fd, self._own, self._what = _resolve(ns)
            handle = self._own
        try:
            _refuse_on_loop(self._what)
            try:
                depth = _raw_enter(fd)
            except BaseException:
                _undo_interrupted_enter()
                raise
            if depth < 0:
                sys_.fail(depth, self._what, fd=fd)
        except BaseException:
            self._drop()
            raise
        self._depth = depth
        return handle

    def __exit__(self, typ: object, val: object, tb: object) -> None:
        # Three named parameters, not *exc: no tuple to build on the hot path.
        depth, self._depth = self._depth, 0
        try:
            rc = _raw_leave(depth)
            if rc < 0:
                if rc == sys_.EORDER and 0 < depth < _raw_depth():
                    self._unwind(depth)
                sys_.leave_failed(rc, self._describe())  # reads errno first
        finally:
            if self._own is not None:
                self._drop()

    def _unwind(self, depth: int) -> None:
        # The block ends while a switch_to() made inside it is still open.
        # A `with` block must not leave the thread elsewhere: move it back
        # to where it was before this block, abandoning the inner switch
        # (its revert becomes a no-op), and report the bug.
        what = self._describe()
        if _raw_unwind(depth) < 0:
            sys_.leave_failed(-1, what)
        raise RuntimeError(
            f"nslib: the entered({what}) block ended while a switch_to() made inside it "
            "was never reverted; the thread was moved back anyway and that switch abandoned"
        )

    def _describe(self) -> str:
        ns = self._ns
        return ns.what if type(ns) is NsHandle else getattr(self, "_what", "?")

    def _drop(self) -> None:
        own, self._own = self._own, None
        if own is not None:
            own.close()


@final
class Revert:
    """Moves the thread back from a :func:`switch_to`.  Idempotent.

    Call it (or leave its ``with`` block) on the thread that switched.  If an
    enclosing :func:`entered` block has already moved the thread back past
    this switch, the switch is gone and calling this is a no-op.
    """

    __slots__ = ("_depth", "_own", "_serial", "_thread", "_what")

    def __init__(self, own: NsHandle | None, what: str) -> None:
        self._depth = 0  # set by switch_to() once the thread has moved
        self._serial = 0  # which switch at that depth is ours
        self._own = own
        self._what = what
        self._thread = threading.get_ident()

    @property
    def done(self) -> bool:
        """Whether this switch is over: reverted, or undone by an enclosing block."""
        return self._depth == 0 or _raw_serial(self._depth) != self._serial

    def __call__(self) -> None:
        """Move the thread back (a no-op the second time).

        :raises RuntimeError: called on another thread, or out of order (an
            inner switch is still active); nothing changed and it may be
            called again later.
        :raises NamespaceRestoreError: the kernel refused; the thread is
            poisoned.
        """
        depth = self._depth
        if not depth:
            return
        if threading.get_ident() != self._thread:
            raise RuntimeError(
                f"revert() of the switch to {self._what} must be called on the thread that switched"
            )
        serial = self._serial
        self._depth = 0
        if _raw_serial(depth) != serial:
            self._close_own()  # already undone by an enclosing entered() block
            return
        try:
            rc = _raw_leave(depth)
        except BaseException:
            # Interrupted after the C call: it left unless it refused.
            if _raw_serial(depth) == serial:
                self._depth = depth
            else:
                self._close_own()
            raise
        if rc == sys_.EORDER:
            self._depth = depth  # nothing changed; may be retried
            sys_.leave_failed(rc, self._what)
        err = sys_.ffi.errno if rc < 0 else 0
        self._close_own()
        if rc < 0:
            sys_.leave_failed(rc, self._what, err)

    def _close_own(self) -> None:
        own, self._own = self._own, None
        if own is not None:
            own.close()

    def __enter__(self) -> Revert:
        return self

    def __exit__(self, *exc: object) -> None:
        self()

    def __del__(self) -> None:
        depth = getattr(self, "_depth", 0)
        if depth:
            if threading.get_ident() == self._thread and _raw_serial(depth) != self._serial:
                return  # its switch was already undone by an enclosing block
            warnings.warn(
                f"switch_to({self._what}) was never reverted", ResourceWarning, stacklevel=2
            )


def switch_to(ns: NsLike) -> Revert:
    """Move the calling thread into *ns*; return the callable that moves it back.

    The seed's ``SwitchToNamespace``: the caller must call the returned
    :class:`Revert` (or use it as a context manager).  Reverts must happen
    innermost first and on the same thread.

    :raises NamespaceRestoreError: the thread is poisoned.
    """
    fd, own, what = _resolve(ns)
    try:
        _refuse_on_loop(what)
        # Made before the switch, so no call can be interrupted between the
        # switch and the object that undoes it.
        revert = Revert(own, what)
        try:
            depth = _raw_enter(fd)
            serial = _raw_serial(depth) if depth > 0 else 0
        except BaseException:
            _undo_interrupted_enter()
            raise
        if depth < 0:
            sys_.fail(depth, what, fd=fd)
    except BaseException:
        if own is not None:
            own.close()
        raise
    revert._depth, revert._serial = depth, serial
    return revert


def switch_depth() -> int:
    """How many nslib switches the calling thread is currently inside."""
    return sys_.depth()


def thread_poisoned() -> bool:
    """Whether the calling thread is poisoned by a failed restore."""
    return sys_.poisoned()


class _Owned:
    """A resolved namespace that a worker thread may outlive the caller's use of."""

    def __init__(self, ns: NsLike) -> None:
        fd, own, self.what = _resolve(ns)
        # A dup, so the caller may close its handle while the worker runs.
        if own is not None:
            self.handle = own
        elif type(ns) is NsHandle:
            self.handle = ns.dup()  # already checked: no second fstatfs+ioctl
        else:
            self.handle = NsHandle.from_fd(fd)

    def join(self) -> None:
        """Move the calling (fresh) thread into the namespace; close the handle.

        Once joined, the thread itself keeps the namespace alive.
        """
        try:
            sys_.join(self.handle.fileno(), self.what)
        finally:
            self.handle.close()

    def start(self, thread: threading.Thread) -> None:
        """Start *thread*, which owns the handle from then on."""
        try:
            thread.start()
        except BaseException:
            if thread.ident is None:  # never ran: nobody else will close it
                self.handle.close()
            raise


def run_in(ns: NsLike, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` on a fresh thread inside *ns*; return its result.

    The thread dies afterwards, so nothing needs restoring and the caller
    never moves.  Exceptions from *fn* propagate.
    """
    target = _Owned(ns)
    box: list[Any] = []

    def body() -> None:
        try:
            target.join()
            box.append((True, fn(*args, **kwargs)))
        except BaseException as e:
            box.append((False, e))

    t = threading.Thread(target=body, name=f"nslib-run-in {target.what}", daemon=True)
    target.start(t)
    t.join()
    ok, value = box[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


async def run_in_async(ns: NsLike, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Await ``fn(*args, **kwargs)`` run on a fresh thread inside *ns*.

    The event loop's thread never switches.  Cancelling the await does not
    stop *fn*; its result is then dropped.
    """
    target = _Owned(ns)
    fut: Future[T] = Future()

    def body() -> None:
        try:
            target.join()
            result = fn(*args, **kwargs)
        except BaseException as e:
            fut.set_exception(e)
        else:
            fut.set_result(result)

    target.start(threading.Thread(target=body, name=f"nslib-run-in {target.what}", daemon=True))
    return await asyncio.wrap_future(fut)


_STOP = object()


class PinnedExecutor(Executor):
    """An executor with one worker thread that lives inside a namespace.

    The worker joins the namespace before the constructor returns (a join
    error is raised there) and stays until :meth:`shutdown`.  It holds its
    own handle, so the caller may close theirs.
    """

    def __init__(self, ns: NsLike) -> None:
        target = _Owned(ns)
        self._what = target.what
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._shutdown = False
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._work, args=(target, ready), name=f"nslib-pinned {target.what}", daemon=True
        )
        target.start(self._thread)
        try:
            ready.result()
        except BaseException:
            # The join failed (or we were interrupted): stop the worker.
            self._shutdown = True
            self._queue.put(_STOP)
            self._thread.join()
            raise

    def _work(self, target: _Owned, ready: Future[None]) -> None:
        try:
            target.join()
        except BaseException as e:
            ready.set_exception(e)
            return
        ready.set_result(None)
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            fut, fn, args, kwargs = item
            del item
            if not fut.set_running_or_notify_cancel():
                continue
            # A task whose switch failed to move back has left the worker in
            # the wrong namespace: run nothing more there.
            if sys_.poisoned():
                fut.set_exception(
                    NamespaceRestoreError(
                        errno.EIO,
                        f"the pinned worker for {self._what} is no longer in its namespace "
                        "(an earlier task failed to switch back)",
                    )
                )
                continue
            try:
                result, error = fn(*args, **kwargs), None
            except BaseException as e:
                result, error = None, e
            del fn, args, kwargs
            if _raw_depth():
                task_error, error = error, self._move_back()
                if task_error is not None:
                    error.__cause__ = task_error  # keep the task's own failure
            if error is None:
                fut.set_result(result)
            else:
                fut.set_exception(error)
            del fut, result, error

    def _move_back(self) -> BaseException:
        # The task left a switch_to() open.  The worker belongs in its
        # namespace, so undo it (the task's revert becomes a no-op) and fail
        # the task, as an entered() block does.
        if _raw_unwind(1) < 0:
            err = sys_.ffi.errno
            return NamespaceRestoreError(
                err,
                f"{os.strerror(err)}: a task left the pinned worker for {self._what} switched "
                "and it cannot move back; the worker is poisoned",
            )
        return RuntimeError(
            f"a task left the pinned worker for {self._what} inside a switch_to() it never "
            "reverted; the worker was moved back and the task failed"
        )

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` on the pinned worker."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a PinnedExecutor after shutdown")
            fut: Future[T] = Future()
            self._queue.put((fut, fn, args, kwargs))
            return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the worker once queued work is done (or cancelled)."""
        with self._lock:
            if not self._shutdown:
                self._shutdown = True
                if cancel_futures:
                    while True:
                        try:
                            item = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if item is not _STOP:
                            item[0].cancel()
                self._queue.put(_STOP)
        if wait:
            self._thread.join()

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "running"
        return f"<PinnedExecutor {self._what} {state}>"


def pinned(ns: NsLike) -> PinnedExecutor:
    """An :class:`~concurrent.futures.Executor` whose one worker lives in *ns*."""
    return PinnedExecutor(ns)


def socket_in(
    ns: NsLike,
    family: int = socket.AF_INET,
    type: int = socket.SOCK_STREAM,
    proto: int = 0,
) -> socket.socket:
    """A close-on-exec ``socket.socket`` created inside *ns*, without forking.

    The C core joins, calls ``socket(2)`` and moves back in one call, so no
    Python code runs in the foreign namespace.  The socket stays bound to
    *ns* for its whole life, whatever thread uses it.
    """
    if isinstance(ns, NsHandle) and ns._fd >= 0:
        # The hot path: a handle we do not own, one C call.
        fd = ns._fd
        sock = _raw_socket_in(fd, family, type, proto)
        if sock < 0:
            sys_.socket_in_failed(sock, fd, family, type, proto, ns.what)
    else:
        fd, own, what = _resolve(ns)
        try:
            sock = sys_.socket_in(fd, family, type, proto, what)
        finally:
            if own is not None:
                own.close()
    try:
        return _Socket(family, type, proto, sock)
    except BaseException:
        os.close(sock)
        raise
