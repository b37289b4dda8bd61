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
import _thread
import errno
import functools
import operator
import os
import queue
import socket
import sys
import threading
import warnings
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, final

from . import _kinds_switch as _kinds
from . import _syscalls as sys_
from ._resolve import NsRef, Resolved, resolve
from .errors import ClosedHandleError, NamespaceRestoreError
from .handle import NsHandle
from .kinds import Target

if TYPE_CHECKING:
    import asyncio

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
_raw_enter_block = sys_.raw_enter_block
_raw_leave = sys_.raw_leave
_raw_depth = sys_.raw_depth
_raw_undo_last = sys_.raw_undo_last
_raw_exit_block = sys_.raw_exit_block
_raw_unwind = sys_.raw_unwind
_raw_serial = sys_.raw_serial
_raw_next_serial = sys_.raw_next_serial
_raw_thread_token = sys_.raw_thread_token
_raw_revert = sys_.raw_revert
_raw_socket_in = sys_.raw_socket_in
_BLOCK = sys_.BLOCK
_SWITCH = sys_.SWITCH
_NULL = sys_.NULL
_NET = sys_.CLONE_NEWNET
_raw_enter_kind = sys_.raw_enter_kind
_THREAD_KINDS = _kinds.THREAD_KINDS
_fd_box = sys_.fd_box
_Socket = socket.socket
_sock_new = socket.socket.__new__
_sock_init: Callable[..., None] = socket.socket.__mro__[1].__init__  # type: ignore[misc]  # _socket.socket's, in C
# asyncio is imported only when used (by run_in_async, or by the caller):
# it costs ~35 ms of every `import nslib`, which a CNI plugin pays per call.
# Without asyncio.events in sys.modules no thread can be running a loop.
_modules_get = sys.modules.get  # the interpreter's module dict itself


def _running_loop() -> asyncio.AbstractEventLoop | None:
    events = _modules_get("asyncio.events")
    if events is None:
        return None
    return events._get_running_loop()  # type: ignore[no-any-return]


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
#   object: a C method that ignores its arguments and calls close();
# * that object's close is map(_EXIT_RESULT.__getitem__, iter(C exit,
#   never)).__next__: each call calls the C core's exit (no arguments, so
#   nothing Python can get wrong) and looks its return code up in a dict,
#   all in C.  Code 0 maps to None, so __exit__ returns None (a true value
#   would swallow the exception leaving the block).
# * Any other code is missing from the dict: its __missing__ (Python, but
#   the thread has been moved back or poisoned by then) raises the error.
#
# The C core keeps which switches are blocks, so the exit needs no state
# from the entered object: one object may be used by several threads, each
# in its own block.


class _ExitResult(dict[int, None]):
    def __missing__(self, rc: int) -> None:
        err = sys_.ffi.errno  # first: the next C call overwrites it
        if rc == sys_.EUNWOUND:
            if sys.exc_info()[1] is not None:
                return None  # an exception skipped the inner revert: let it propagate
            raise RuntimeError(
                "nslib: an entered() block ended while a switch_to() made inside it was "
                "never reverted; the thread was moved back anyway and that switch abandoned"
            )
        sys_.leave_failed(rc, "an entered() block", err)


_EXIT_RESULT = _ExitResult({0: None})
_NEVER = object()


class _Several(tuple[Any, ...]):
    """The references of one ``entered(a, b, ...)``: several, entered as one switch."""

    __slots__ = ()


class _BlockExit(_io._IOBase):
    close = staticmethod(map(_EXIT_RESULT.__getitem__, iter(_raw_exit_block, _NEVER)).__next__)
    closed = True  # so the io finalizer never calls close() on collection


_block_exit = _BlockExit()


def _open_for_enter(ns: NsRef) -> Resolved:
    if type(ns) is NsHandle and ns._fd < 0:
        raise ClosedHandleError(f"cannot switch through a closed handle ({ns.what})")
    res = resolve(ns)
    try:
        _refuse_on_loop(res.what)
    except BaseException:
        res.close()
        raise
    return res


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

    Every kind a thread can enter and leave: an :class:`NsHandle` of
    another kind (``NsHandle.from_pid(pid, kind="uts")``) enters that kind
    only; several references (``entered(net, uts, mnt)``) or a
    :class:`~nslib.Target` (``entered(Target(pid, kinds=["net", "mnt"]))``)
    enter them all as one switch, all or nothing.  NET, UTS, IPC and CGROUP
    are per thread; the first MNT switch gives the thread its own cwd and
    root, and leaving puts both back (see :mod:`nslib._kinds_switch`).
    USER, PID and TIME raise :class:`~nslib.NotSwitchableError`: start a
    process in them with :mod:`nslib.spawn`.

    :raises NamespaceRestoreError: moving back failed; the thread is poisoned.
    :raises ClosedHandleError: *ns* is a closed handle.
    :raises NotANamespace: *ns* is not a network namespace (a reference that
        names no kind means NET).
    :raises NotSwitchableError: a USER, PID or TIME namespace.
    :raises RuntimeError: on an event loop thread.
    """

    __slots__ = ("_ns",)

    def __init__(self, ns: NsRef | Target, *more: NsRef) -> None:
        # One slot: several references are one _Several, so the hot path
        # below tests a single type.
        self._ns: Any = ns if not more else _Several((ns, *more))

    def __enter__(self) -> NsHandle | None:
        ns = self._ns
        if (
            type(ns) is NsHandle
            and ns._nstype == _NET
            and ((ev := _modules_get("asyncio.events")) is None or ev._get_running_loop() is None)
        ):
            # The hot path: a network handle we do not own, one C call.  Every
            # Python operation here costs as much as a syscall in this loop.
            try:
                depth = _raw_enter_block(ns._fd)  # a closed handle's -1 fails in C
            except BaseException:
                # Only the check after that C call can raise here; if it
                # switched, the `with` will not call __exit__.
                _raw_undo_last()
                raise
            if depth > 0:
                return ns
            fd = ns._fd
            if fd < 0:
                raise ClosedHandleError(f"cannot switch through a closed handle ({ns.what})")
            sys_.fail(depth, ns.what, fd=fd)  # reads errno first; no second try
        if type(ns) is NsHandle and ns._fd >= 0 and _running_loop() is None:
            nstype = ns._nstype
            if nstype in _THREAD_KINDS:  # uts, ipc, cgroup, mnt: the same, per kind
                fd = ns._fd
                try:
                    depth = _raw_enter_kind(fd, nstype, _BLOCK, _NULL)
                except BaseException:
                    _raw_undo_last()
                    raise
                if depth > 0:
                    return ns
                sys_.fail_kinds(depth, sys_.ffi.errno, nstype, ns.what)
        if type(ns) is _Several or _kinds.wants(ns):
            return self._enter_kinds()
        res = _open_for_enter(ns)
        given = ns if type(ns) is NsHandle else None
        own = res._box if res.owned else _NULL  # the C switch takes it over
        try:
            depth = _raw_enter(res.fd, _BLOCK, own)
        except BaseException:
            _raw_undo_last()
            raise
        if depth > 0:
            # Nothing that calls a function may come between a successful
            # switch and this return: an interrupt raised there would leave
            # the block switched without a `with` to end it.
            return given
        fd, what = res.fd, res.what
        res.close()
        sys_.fail(depth, what, fd=fd)

    def _enter_kinds(self) -> NsHandle | None:
        # Another kind than net, several namespaces, or a Target.
        ns = self._ns
        items = tuple(ns) if type(ns) is _Several else (ns,)
        given = items[0] if len(items) == 1 and type(items[0]) is NsHandle else None
        what = _kinds.describe(items)
        _refuse_on_loop(what)
        _kinds.enter(items, _BLOCK, what)
        return given  # no call between the switch and here (see above)

    __exit__ = _block_exit.__exit__


class _RevertResult(dict[int, None]):
    """Return codes of the C revert: 0 and 1 (already over) are fine, the rest raise."""

    def __init__(self, revert: Revert) -> None:
        super().__init__({0: None, 1: None})
        self.revert = weakref.ref(revert)
        self.what = revert._what

    def __missing__(self, rc: int) -> None:
        err = sys_.ffi.errno  # first: the next C call overwrites it
        revert = self.revert()
        if revert is None or getattr(revert, "_finalizing", False):
            # Collected on another thread (or out of order): nothing can be
            # done from here; say so as an unclosed file would.
            warnings.warn(
                f"switch_to({self.what}) was never reverted", ResourceWarning, stacklevel=2
            )
            return None
        if rc == sys_.ETHREAD:
            raise RuntimeError(
                f"revert() of the switch to {self.what} must be called on the thread that switched"
            )
        sys_.leave_failed(rc, self.what, err)


def _noop() -> None:
    return None


@final
class Revert(_io._IOBase):
    """Moves the thread back from a :func:`switch_to`.  Idempotent.

    Call it (or leave its ``with`` block) on the thread that switched.  If an
    enclosing :func:`entered` block has already moved the thread back past
    this switch, the switch is gone and calling this is a no-op.

    Interrupt-safe: calling it, leaving its ``with`` block and collecting it
    all reach the C core without running a Python frame first (see the
    comment on entered's exit), so a ``KeyboardInterrupt`` cannot land in
    between; a revert that an interrupt dropped before the caller could
    call it moves the thread back as it is collected, if its switch is still
    the thread's innermost.

    :raises RuntimeError: (when called) on another thread, or out of order
        (an inner switch is still active); nothing changed and it may be
        called again later.
    :raises NamespaceRestoreError: the kernel refused; the thread is poisoned.
    """

    closed = False  # so the io finalizer calls close(): an unreverted switch is reverted

    def __init__(self, what: str) -> None:
        self._what = what
        self._depth = 0  # set by switch_to() once the thread has moved
        self._serial = _raw_next_serial()  # what the enter will be numbered
        token = _raw_thread_token()
        # close() is the revert, C all the way: the leave, then a lookup
        # that maps its return code to None or to the error's raise.
        self.close = map(  # type: ignore[method-assign]
            _RevertResult(self).__getitem__,
            iter(functools.partial(_raw_revert, self._serial, token), _NEVER),
        ).__next__

    __call__ = property(operator.attrgetter("close"))

    @property
    def done(self) -> bool:
        """Whether this switch is over: reverted, or undone by an enclosing block."""
        return self._depth == 0 or _raw_serial(self._depth) != self._serial

    def __repr__(self) -> str:
        return f"<Revert {self._what} {'done' if self.done else 'active'}>"


def switch_to(ns: NsRef | Target, *more: NsRef) -> Revert:
    """Move the calling thread into *ns*; return the callable that moves it back.

    The ``SwitchToNamespace`` of the Ligato vpp-agent's namespace plugin:
    the caller must call the returned :class:`Revert` (or use it as a
    context manager).  Reverts must happen innermost first and on the same
    thread.  *ns* (and *more*) are any references :func:`entered` takes,
    of every kind it takes; several are one switch, reverted as one.

    :raises NamespaceRestoreError: the thread is poisoned.
    :raises NotSwitchableError: a USER, PID or TIME namespace.
    """
    if more or _kinds.wants(ns):
        return _switch_kinds((ns, *more))
    res = resolve(ns)  # type: ignore[arg-type]
    try:
        _refuse_on_loop(res.what)
        # Made before the switch (it knows the number the switch will get),
        # so no call can be interrupted between the switch and its undoer.
        revert = Revert(res.what)
        own = res._box if res.owned else _NULL  # the C switch takes it over
        try:
            depth = _raw_enter(res.fd, _SWITCH, own)
        except BaseException:
            _raw_undo_last()  # an interrupt as the C call returned: undo that switch
            raise
        if depth < 0:
            revert.close = _noop  # type: ignore[method-assign]  # its number was never used: it must undo nothing
            sys_.fail(depth, res.what, fd=res.fd)
        revert._depth = depth
    except BaseException:
        res.close()
        raise
    return revert


def _switch_kinds(items: tuple[Any, ...]) -> Revert:
    what = _kinds.describe(items)
    _refuse_on_loop(what)
    revert = Revert(what)  # made before the switch: see switch_to
    try:
        depth = _kinds.enter(items, _SWITCH, what)
    except BaseException:
        revert.close = _noop  # type: ignore[method-assign]  # its number was never used
        raise
    revert._depth = depth
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

    def start(self, body: Callable[[], None]) -> None:
        """Run *body* on a new thread, which owns the fd from then on.

        A bare thread: ``threading.Thread.start`` can be interrupted half
        way (registered, never started, unjoinable for ever); this is one C
        call, after which the thread runs whatever happens to the caller.
        """
        try:
            _thread.start_new_thread(body, ())
        except Exception:
            self.res.close()  # never ran: nobody else will close it
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

    done = _thread.allocate_lock()
    done.acquire()

    def run() -> None:
        try:
            body()
        finally:
            done.release()

    target.start(run)
    done.acquire()  # an interrupt here leaves the thread to finish and clean up alone
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

    target.start(body)
    import asyncio  # here, not at the top: see _running_loop

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
        self._done = _thread.allocate_lock()
        self._done.acquire()
        # The worker must not keep the executor alive: an executor that an
        # interrupt dropped before anyone held it stops its worker when
        # collected (SimpleQueue.put is C: nothing to interrupt there).
        weakref.finalize(self, self._queue.put, _STOP)
        # A bare lock, not a Future: Condition.wait can be interrupted half
        # way and then fails with its own RuntimeError instead.
        ready = _thread.allocate_lock()
        ready.acquire()
        joined: list[BaseException | None] = []
        work = functools.partial(
            _pinned_work, self._queue, self._what, target, ready, joined, self._done
        )
        target.start(work)
        try:
            ready.acquire()
            if joined[0] is not None:
                raise joined[0]
        except BaseException:
            # The join failed (or we were interrupted): stop the worker.
            self._shutdown = True
            self._queue.put(_STOP)
            raise

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
            with self._done:  # released when the worker ends
                pass

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "running"
        return f"<PinnedExecutor {self._what} {state}>"


def _pinned_work(
    queue_: queue.SimpleQueue[Any],
    what: str,
    target: _Owned,
    ready: Any,
    joined: list[BaseException | None],
    done: Any,
) -> None:
    try:
        try:
            target.join()
        except BaseException as e:
            joined.append(e)
            return
        finally:
            if not joined:
                joined.append(None)
            ready.release()
        _pinned_loop(queue_, what)
    finally:
        done.release()


def _pinned_loop(queue_: queue.SimpleQueue[Any], what: str) -> None:
    while True:
        item = queue_.get()
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
                    f"the pinned worker for {what} is no longer in its namespace "
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
            task_error, error = error, _move_back(what)
            if task_error is not None:
                error.__cause__ = task_error  # keep the task's own failure
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)
        del fut, result, error


def _move_back(what: str) -> BaseException:
    # The task left a switch_to() open.  The worker belongs in its
    # namespace, so undo it (the task's revert becomes a no-op) and fail
    # the task, as an entered() block does.
    if _raw_unwind(1) < 0:
        err = sys_.ffi.errno
        return NamespaceRestoreError(
            err,
            f"{os.strerror(err)}: a task left the pinned worker for {what} switched "
            "and it cannot move back; the worker is poisoned",
        )
    return RuntimeError(
        f"a task left the pinned worker for {what} inside a switch_to() it never "
        "reverted; the worker was moved back and the task failed"
    )


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
