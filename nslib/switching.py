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

import _io
import asyncio
import errno
import operator
import os
import queue
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar, final

from . import _syscalls as sys_
from ._resolve import NsRef, Resolved, resolve
from .errors import ClosedHandleError, NamespaceRestoreError
from .handle import NsHandle

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
_raw_undo_last = sys_.raw_undo_last
_raw_exit_block = sys_.raw_exit_block
_raw_unwind = sys_.raw_unwind
_raw_serial = sys_.raw_serial
_raw_socket_in = sys_.raw_socket_in
_BLOCK = sys_.BLOCK
_SWITCH = sys_.SWITCH
_NULL = sys_.NULL
_fd_box = sys_.fd_box
_Socket = socket.socket
_sock_new = socket.socket.__new__
_sock_init: Callable[..., None] = socket.socket.__mro__[1].__init__  # type: ignore[misc]  # _socket.socket's, in C
_running_loop = asyncio._get_running_loop


def _resolve(ns: NsRef) -> tuple[int, Resolved | None, str]:
    """``(fd, owner to close or None, description)``: the old private form.

    Kept for :mod:`nslib.netlink` until it calls :func:`nslib._resolve.resolve`.
    """
    res = resolve(ns)
    return res.fd, res if res.owned else None, res.what


def _refuse_on_loop(what: str) -> None:
    if _running_loop() is not None:
        raise RuntimeError(
            f"refusing to switch the asyncio event loop's thread into {what}: every "
            "coroutine would run there; use `await nslib.run_in_async(ns, fn)`"
        )


# -- ending an entered() block without running a Python frame first -----------
#
# CPython checks for pending signals when a Python function starts (and
# after every C call), so a KeyboardInterrupt can be raised on the first
# line of any __exit__ written in Python, before it has moved the thread
# back; the `with` statement does not call __exit__ again.  So entered's
# __exit__ is C all the way to the C core's exit call:
#
# * entered.__exit__ is _io._IOBase.__exit__ bound to one module-level
#   object; that C method calls its object's close();
# * close is a property whose getter is C (operator.attrgetter) and returns
#   the calling thread's generator's __next__;
# * resuming a generator suspended inside ``yield from`` skips the signal
#   check (only a fresh frame and a plain ``yield`` check), and the first
#   thing it then does is the C call that ends the block.
#
# The generator then reports a failure by raising, which propagates out of
# the `with` like any __exit__ error.  The C core keeps which switches are
# blocks, so the exit needs no state from the entered object: one object
# may be used by several threads, each in its own block.


def _block_exits() -> Iterator[None]:
    while True:
        yield from (None,)  # resumed by _ThreadExits.next: see above
        rc = _raw_exit_block()
        if rc < 0:
            _block_exit_failed(rc)


def _block_exit_failed(rc: int) -> None:
    err = sys_.ffi.errno  # first: the next C call overwrites it
    _thread_exits.renew()  # this generator ends with the raise below
    if rc == sys_.EUNWOUND:
        raise RuntimeError(
            "nslib: an entered() block ended while a switch_to() made inside it was "
            "never reverted; the thread was moved back anyway and that switch abandoned"
        )
    sys_.leave_failed(rc, "an entered() block", err)


class _ThreadExits(threading.local):
    gen: Iterator[None]
    next: Callable[[], None]

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        gen = _block_exits()
        next(gen)  # run to the first suspension
        self.gen = gen
        self.next = gen.__next__


_thread_exits = _ThreadExits()


class _BlockExit(_io._IOBase):
    threads = _thread_exits
    close = property(operator.attrgetter("threads.next"))
    closed = True  # so the io finalizer never calls close() on collection


_block_exit = _BlockExit()


def _exits_ready() -> bool:
    # A generator that raised (a failed exit) or was interrupted between two
    # blocks is finished; make a new one before switching, never after.
    return _thread_exits.gen.gi_suspended  # type: ignore[attr-defined,no-any-return]


@final
class entered:
    """Run the ``with`` body with the calling thread inside *ns*, then move back.

    *ns* is any namespace reference (see :mod:`nslib._resolve`): an
    :class:`NsHandle`, a :class:`NetNamespace`, a reference string (a bare
    word is a *named* namespace, ``/...`` a path), a path object or an int
    fd.  Nesting works; the thread is moved back on every exit, including
    exceptions and ``KeyboardInterrupt``.  A handle or fd costs no open (a
    thread opens its home namespace once, on its first switch, and a nested
    switch opens the current one to return to); a reference is opened once
    and closed when the block ends.  ``__enter__`` returns the handle given
    (``None`` for any other reference).

    The state of a block lives in the C core, per thread: one ``entered``
    object may be used by several threads at once, and nested in itself.

    Interrupt-safe: a ``KeyboardInterrupt`` (or any exception a signal
    handler raises) at any point leaves the thread where it was before the
    block, and is what propagates.

    Refused on a thread running an asyncio event loop.

    If the block ends while a :func:`switch_to` made inside it is still
    open, the thread is moved back to where it was before the block anyway,
    that inner switch is abandoned (its revert becomes a no-op) and, unless
    an exception is already leaving the block, ``RuntimeError`` reports the
    bug.

    :raises NamespaceRestoreError: moving back failed; the thread is poisoned.
    :raises ClosedHandleError: *ns* is a closed handle.
    :raises NotANamespace: *ns* is not a network namespace.
    :raises RuntimeError: on an event loop thread.
    """

    __slots__ = ("_ns",)

    def __init__(self, ns: NsRef) -> None:
        self._ns = ns

    def __enter__(self) -> NsHandle | None:
        ns = self._ns
        if type(ns) is NsHandle:
            # The hot path: a handle we do not own, no open, one C call.
            fd = ns._fd
            if fd >= 0 and _running_loop() is None and _thread_exits.gen.gi_suspended:  # type: ignore[attr-defined]
                try:
                    depth = _raw_enter(fd, _BLOCK, _NULL)
                except BaseException:
                    # Only the check after that C call can raise here; if
                    # it switched, the `with` will not call __exit__.
                    _raw_undo_last()
                    raise
                if depth > 0:
                    return ns
                sys_.fail(depth, ns.what, fd=fd)  # reads errno first; no second try
        return self._enter_slow()

    def _enter_slow(self) -> NsHandle | None:
        ns = self._ns
        if type(ns) is NsHandle and ns._fd < 0:
            raise ClosedHandleError(f"cannot switch through a closed handle ({ns.what})")
        with resolve(ns) as res:
            _refuse_on_loop(res.what)
            if not _exits_ready():
                _thread_exits.renew()
            own = res._box if res.owned else _NULL  # the C switch takes it over
            try:
                depth = _raw_enter(res.fd, _BLOCK, own)
            except BaseException:
                _raw_undo_last()
                raise
            if depth < 0:
                sys_.fail(depth, res.what, fd=res.fd)
        return ns if type(ns) is NsHandle else None

    __exit__ = _block_exit.__exit__


@final
class Revert:
    """Moves the thread back from a :func:`switch_to`.  Idempotent.

    Call it (or leave its ``with`` block) on the thread that switched.  If an
    enclosing :func:`entered` block has already moved the thread back past
    this switch, the switch is gone and calling this is a no-op.  A revert
    collected while its switch is still the thread's innermost (an
    interrupt dropped it) moves the thread back, with a ``ResourceWarning``.
    """

    __slots__ = ("_depth", "_serial", "_thread", "_what")

    def __init__(self, what: str) -> None:
        self._depth = 0  # set by switch_to() once the thread has moved
        self._serial = 0  # which switch at that depth is ours
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
        if _raw_serial(depth) != serial:
            self._depth = 0  # already undone (by this revert, or by an enclosing block)
            return
        rc = _raw_leave(depth, serial)  # one C call; whether it ran, C knows
        if rc < 0:
            if rc != sys_.EORDER:
                err = sys_.ffi.errno
                self._depth = 0  # over, if badly: the thread is poisoned
                sys_.leave_failed(rc, self._what, err)
            sys_.leave_failed(rc, self._what)
        self._depth = 0

    def __enter__(self) -> Revert:
        return self

    def __exit__(self, *exc: object) -> None:
        self()

    def __del__(self) -> None:
        depth = getattr(self, "_depth", 0)
        if not depth or threading.get_ident() != self._thread:
            if depth:
                warnings.warn(
                    f"switch_to({self._what}) was never reverted", ResourceWarning, stacklevel=2
                )
            return
        if _raw_serial(depth) != self._serial:
            return  # its switch was already undone
        moved = _raw_depth() == depth and _raw_leave(depth, self._serial) == 0
        warnings.warn(
            f"switch_to({self._what}) was never reverted"
            + ("; the thread was moved back as its revert was collected" if moved else ""),
            ResourceWarning,
            stacklevel=2,
        )


def switch_to(ns: NsRef) -> Revert:
    """Move the calling thread into *ns*; return the callable that moves it back.

    The ``SwitchToNamespace`` of the Ligato vpp-agent's namespace plugin:
    the caller must call the returned :class:`Revert` (or use it as a
    context manager).  Reverts must happen innermost first and on the same
    thread.  *ns* is any reference :func:`entered` takes.

    :raises NamespaceRestoreError: the thread is poisoned.
    """
    res = resolve(ns)
    try:
        _refuse_on_loop(res.what)
        # Made before the switch, so no call can be interrupted between the
        # switch and the object that undoes it.
        revert = Revert(res.what)
        own = res._box if res.owned else _NULL  # the C switch takes it over
        try:
            depth = _raw_enter(res.fd, _SWITCH, own)
            serial = _raw_serial(depth) if depth > 0 else 0
        except BaseException:
            _raw_undo_last()  # an interrupt as a C call returned: undo that switch
            raise
        if depth < 0:
            sys_.fail(depth, res.what, fd=res.fd)
        revert._depth = depth
        revert._serial = serial
    except BaseException:
        res.close()
        raise
    return revert


def switch_depth() -> int:
    """How many nslib switches the calling thread is currently inside."""
    return sys_.depth()


def thread_poisoned() -> bool:
    """Whether the calling thread is poisoned by a failed restore."""
    return sys_.poisoned()


class _Owned:
    """A namespace fd a worker thread owns, so the caller may close theirs."""

    def __init__(self, ns: NsRef) -> None:
        res = resolve(ns)
        if not res.owned:
            if type(ns) is not NsHandle:
                sys_.check_netns(res.fd, res.what)  # a handle was checked when made
            box = _fd_box()
            sys_.dup_into(box, res.fd, res.what)
            res._box, res.fd = box, box[0]
        self.res = res
        self.what = res.what

    def join(self) -> None:
        """Move the calling (fresh) thread into the namespace; close the fd.

        Once joined, the thread itself keeps the namespace alive.
        """
        try:
            sys_.join(self.res.fd, self.what)
        finally:
            self.res.close()

    def start(self, thread: threading.Thread) -> None:
        """Start *thread*, which owns the fd from then on."""
        try:
            thread.start()
        except BaseException:
            if thread.ident is None:  # never ran: nobody else will close it
                self.res.close()
            raise


def run_in(ns: NsRef, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
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


async def run_in_async(ns: NsRef, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
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

    def __init__(self, ns: NsRef) -> None:
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


def pinned(ns: NsRef) -> PinnedExecutor:
    """An :class:`~concurrent.futures.Executor` whose one worker lives in *ns*."""
    return PinnedExecutor(ns)


def socket_in(
    ns: NsRef,
    family: int = socket.AF_INET,
    type: int = socket.SOCK_STREAM,
    proto: int = 0,
) -> socket.socket:
    """A close-on-exec ``socket.socket`` created inside *ns*, without forking.

    The C core joins, calls ``socket(2)`` and moves back in one call, so no
    Python code runs in the foreign namespace.  The socket stays bound to
    *ns* for its whole life, whatever thread uses it.  *ns* is any
    reference :func:`entered` takes.
    """
    box = _fd_box()  # owns the socket from the moment C makes it
    if isinstance(ns, NsHandle) and ns._fd >= 0:
        # The hot path: a handle we do not own, one C call.
        fd = ns._fd
        rc = _raw_socket_in(fd, family, type, proto, box)
        if rc < 0:
            sys_.socket_in_failed(rc, fd, family, type, proto, ns.what)
    else:
        with resolve(ns) as res:
            sys_.socket_in_into(box, res.fd, family, type, proto, res.what)
    return _socket_from(box, family, type, proto)


def _socket_from(box: Any, family: int, type: int, proto: int) -> socket.socket:
    # socket.socket(..., fileno=fd) runs Python (its __init__) before the C
    # part takes the fd, so an interrupt could land with the fd owned by
    # both the box and the socket (a double close) or by neither (a leak).
    # Build it by hand instead: the fd leaves the box and enters the socket
    # with no point in between where an interrupt can be raised.
    sock = _sock_new(_Socket)
    sock._io_refs = 0  # type: ignore[attr-defined]  # what socket.socket.__init__ sets
    sock._closed = False  # type: ignore[attr-defined]
    fd = box[0]
    box[0] = -1
    try:
        _sock_init(sock, family, type, proto, fd)
    except BaseException:
        if sock.fileno() < 0:  # the socket never took it
            os.close(fd)
        raise
    return sock
