"""Podman's events log file, followed directly (the ``file`` events backend).

Podman 4.3 answers its ``/events`` endpoint by polling the same log file
several times a second, which adds about a hundred milliseconds to every
event.  Following the file with inotify sees an event as soon as podman has
written it.  The file is read as untrusted bytes: one JSON object a line,
appended under podman's lock; a line without its newline yet is kept until
it is complete.  When the file grows past ``events_logfile_max_size``,
podman writes its second half to a new file renamed over the old one (or,
across file systems, truncates it and copies that half back); both are
seen, and the copied half is not reported twice.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import json
import os
import select
import socket
import stat
import struct
import threading
import tomllib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, Final

from inotify_simple import INotify
from inotify_simple import flags as _in

from ..._docker_state import parse_time_ns
from ._http import LineStream, socket_path
from .base import HEX_ID, EventStream, SourceEvent

__all__ = ["FileEvents", "events_file_for"]

DEFAULT_TMPDIR: Final = "/run/libpod"
"""Rootful podman's ``tmp_dir`` when containers.conf does not set one."""

_DEFAULT_SOCKET: Final = "/run/podman/podman.sock"
_SYSTEM_CONFS: Final = ("/usr/share/containers/containers.conf", "/etc/containers/containers.conf")
_CONF_DIR: Final = "/etc/containers/containers.conf.d"
_JOURNAL_SOCKET: Final = "/run/systemd/journal/socket"

ACTIONS: Final = frozenset({"start", "died", "remove"})
"""The container statuses reported, as podman's libpod event stream names them."""

_CHUNK: Final = 1 << 16
_MAX_LINE: Final = 1 << 20  # a longer "line" is not podman's: dropped
_REPLAY_SLACK_NS: Final = 10_000_000_000  # event times are taken before podman's lock
_TAIL: Final = 64
_RECENT: Final = 8192  # keys remembered so that a rotation's copied half is not reported again
_SAFETY_POLL_S: Final = 1.0  # look at the file even without an inotify event (a lost watch)


# -- where the file is ---------------------------------------------------------


def _peer_pid(path: str) -> int | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(2.0)
        s.connect(path)
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid = struct.unpack("3i", creds)[0]
    return pid if pid > 0 else None


def _read_proc(pid: int, name: str) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None


def _flag(argv: list[bytes], name: bytes) -> bytes | None:
    value = None
    for i, arg in enumerate(argv):
        if arg == b"--":
            break
        if arg.startswith(name + b"="):
            value = arg[len(name) + 1 :]
        elif arg == name and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _engine_settings(env: Mapping[bytes, bytes]) -> dict[str, Any]:
    """``[engine]`` of the containers.conf files podman reads, later files winning."""
    conf = env.get(b"CONTAINERS_CONF")
    if conf:
        files = [os.fsdecode(conf)]
    else:
        files = [*_SYSTEM_CONFS, *sorted(glob.glob(os.path.join(_CONF_DIR, "*.conf")))]
    out: dict[str, Any] = {}
    for name in files:
        try:
            with open(name, "rb") as f:
                data = tomllib.load(f)
        except (OSError, ValueError):
            continue
        engine = data.get("engine")
        if isinstance(engine, dict):
            out.update(engine)
    return out


def _path_from(argv: list[bytes], env: Mapping[bytes, bytes]) -> str | None:
    engine = _engine_settings(env)
    backend = _flag(argv, b"--events-backend")
    logger = os.fsdecode(backend) if backend else engine.get("events_logger")
    if logger is None:  # podman's default: journald where the journal runs
        logger = "journald" if os.path.exists(_JOURNAL_SOCKET) else "file"
    if logger != "file":
        return None
    path = engine.get("events_logfile_path")
    if isinstance(path, str) and path:
        return path
    tmpdir = _flag(argv, b"--tmpdir")
    tmp = os.fsdecode(tmpdir) if tmpdir else engine.get("tmp_dir")
    if not isinstance(tmp, str) or not tmp:
        tmp = DEFAULT_TMPDIR
    return os.path.join(tmp, "events", "events.log")


def _environ(raw: list[bytes] | None) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for item in raw or ():
        key, sep, value = item.partition(b"=")
        if sep:
            out[key] = value
    return out


def events_file_for(url: str) -> str | None:
    """The events log file of the podman service behind *url*, or None.

    The service answering on the socket (its peer credentials) is asked
    for its command line (``--events-backend``, ``--tmpdir``) and
    environment (``CONTAINERS_CONF``); its containers.conf gives
    ``events_logger``, ``events_logfile_path`` and ``tmp_dir``, else
    rootful podman's default ``/run/libpod/events/events.log``.  When the
    socket is not held by podman itself (systemd socket activation), only
    the default rootful socket is resolved, with this process's
    configuration.  None: podman logs events elsewhere (journald), or the
    service cannot be identified.

    :raises OSError: the socket does not answer.
    """
    path = socket_path(url)
    pid = _peer_pid(path)
    argv = _read_proc(pid, "cmdline") if pid else None
    exe = ""
    if pid:
        with contextlib.suppress(OSError):
            exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    if pid and argv is not None and exe == "podman":
        found = _path_from(argv, _environ(_read_proc(pid, "environ")))
        if found is None:
            return None
        try:  # the service sees its own mount namespace
            same = (
                os.stat(f"/proc/{pid}/ns/mnt").st_ino == os.stat("/proc/thread-self/ns/mnt").st_ino
            )
        except OSError:
            return None
        return found if same else f"/proc/{pid}/root{found}"
    if os.path.realpath(path) != _DEFAULT_SOCKET:
        return None
    return _path_from([], {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()})


# -- reading it ------------------------------------------------------------------


@functools.cache
def _wanted(actions: frozenset[str]) -> tuple[bytes, ...]:
    return tuple(f'"{a}"'.encode() for a in sorted(actions))


def parse_line(
    line: bytes, label_key: str | None, actions: frozenset[str] = ACTIONS
) -> SourceEvent | None:
    """One line of the log as a :class:`SourceEvent`, or None (not one we report).

    :param actions: The container statuses reported.
    """
    # Most lines are "sync" events (podman logs one per inspect): rejected
    # before decoding.  Only a shortcut: the decoded fields decide.
    if not any(w in line for w in _wanted(actions)):
        return None
    try:
        ev = json.loads(line)
    except ValueError:  # also bad UTF-8 (UnicodeDecodeError)
        return None
    if not isinstance(ev, dict) or ev.get("Type") != "container":
        return None
    action = ev.get("Status")
    cid = ev.get("ID")
    if action not in actions or not isinstance(cid, str) or not HEX_ID.fullmatch(cid):
        return None
    if label_key is not None:
        attrs = ev.get("Attributes")
        if not isinstance(attrs, dict) or label_key not in attrs:
            return None
    t = ev.get("Time")
    try:
        time_ns = parse_time_ns(t) if isinstance(t, str) else None
    except ValueError:
        time_ns = None
    return SourceEvent(time_ns, cid, str(action))


def _line_time(line: bytes) -> int | None:
    try:
        ev = json.loads(line)
        return parse_time_ns(ev["Time"]) if isinstance(ev, dict) else None
    except (ValueError, KeyError, TypeError):
        return None


def _replay_offset(fd: int, size: int, since_ns: int) -> int:
    """An offset at or before the first line at *since_ns* (a line start or 0)."""
    lo, hi = 0, size
    while hi - lo > _CHUNK:
        mid = (lo + hi) // 2
        data = os.pread(fd, _CHUNK, mid)
        start = data.find(b"\n") + 1
        end = data.find(b"\n", start)
        t = _line_time(data[start:end]) if start and end > 0 else None
        if t is None:
            break  # not a line we understand: read from lo
        if t < since_ns - _REPLAY_SLACK_NS:
            lo = mid + start
        else:
            hi = mid
    return lo


class FileEvents(EventStream):
    """Container events from podman's events log file, live and since a time.

    :param path: The log file (it may not exist yet: podman creates it with
        its first event; its directory must exist).
    :param since_ns: Report the events from this time on (None: from now).
    :param label_key: When not None, only containers carrying this label key
        (podman logs the container's labels with each event).
    :param guard: An open stream of the podman service; when it ends (the
        service stopped), this stream ends too, so that the tracker resyncs
        once the service answers again.  Closed with this stream.
    :param actions: The container statuses reported (default :data:`ACTIONS`).
    :raises OSError: the directory cannot be watched, or the file exists
        and cannot be read (e.g. ``PermissionError``).
    """

    def __init__(
        self,
        path: str,
        since_ns: int | None,
        label_key: str | None,
        guard: LineStream | None = None,
        *,
        actions: frozenset[str] = ACTIONS,
    ) -> None:
        self.path = path
        self._actions = actions
        self._since = since_ns
        self._label_key = label_key
        self._guard = guard
        self._closed = False
        self._iterating = False
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._pos = 0
        self._buf = b""
        self._tail = b""  # the last bytes before _pos: a file rewritten in place differs
        self._skip_partial = False
        self._newest: int | None = None  # the newest event time reported
        self._floor: int | None = None  # after a rotation: older events were all seen
        self._recent: OrderedDict[tuple[object, ...], None] = OrderedDict()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._inotify: INotify | None = None
        self._guard_thread: threading.Thread | None = None
        try:
            self._inotify = INotify(nonblocking=True)
            self._inotify.add_watch(
                os.path.dirname(path) or ".",
                _in.MODIFY | _in.CREATE | _in.MOVED_TO | _in.DELETE_SELF | _in.MOVE_SELF,
            )
            self._open(first=True)
        except BaseException:
            self._release()
            raise
        if guard is not None:
            self._guard_thread = threading.Thread(
                target=self._watch_guard, name="nslib-podman-guard", daemon=True
            )
            self._guard_thread.start()

    # -- file handling

    def _open(self, *, first: bool) -> bool:
        """Open the file if it exists; True when it is (now) open."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, f"not a regular file: {self.path!r}")
        except BaseException:
            os.close(fd)
            raise
        self._close_file()
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)
        if first and self._since is None:
            self._restart_at(st.st_size)  # live events only
        elif first and self._since is not None:
            self._restart_at(_replay_offset(fd, st.st_size, self._since))
            self._skip_partial = self._pos > 0
        else:  # a new or rewritten file: all of it (what was seen is skipped)
            self._restart_at(0)
        return True

    def _restart_at(self, pos: int) -> None:
        assert self._fd is not None
        if pos == 0 and self._newest is not None:
            self._floor = self._newest - _REPLAY_SLACK_NS
        self._pos = pos
        self._buf = b""
        self._skip_partial = False
        self._tail = os.pread(self._fd, min(pos, _TAIL), pos - min(pos, _TAIL))

    def _rewritten(self) -> bool:
        """The same file, but its bytes before our offset changed (truncated and refilled)."""
        assert self._fd is not None
        tail = self._tail
        return bool(tail) and os.pread(self._fd, len(tail), self._pos - len(tail)) != tail

    def _close_file(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _read_available(self) -> Iterator[SourceEvent]:
        fd = self._fd
        while fd is not None and not self._closed:
            if self._rewritten():
                self._restart_at(0)
            data = os.pread(fd, _CHUNK, self._pos)
            if not data:
                return
            self._pos += len(data)
            self._tail = (self._tail + data)[-_TAIL:]
            buf = self._buf + data
            if self._skip_partial:
                nl = buf.find(b"\n")
                if nl < 0:
                    self._buf = b"" if len(buf) > _MAX_LINE else buf
                    continue
                buf = buf[nl + 1 :]
                self._skip_partial = False
            *lines, rest = buf.split(b"\n")
            if len(rest) > _MAX_LINE:
                rest = b""
                self._skip_partial = True
            self._buf = rest
            for line in lines:
                ev = parse_line(line, self._label_key, self._actions) if line.strip() else None
                if ev is None:
                    continue
                t = ev.time_ns
                if t is not None and (
                    (self._since is not None and t < self._since)
                    or (self._floor is not None and t < self._floor)
                ):
                    continue
                key = (ev.time_ns, ev.container_id, ev.action)
                if key in self._recent:
                    continue  # a rotation copied it into the new file
                self._recent[key] = None
                if len(self._recent) > _RECENT:
                    self._recent.popitem(last=False)
                if t is not None and (self._newest is None or t > self._newest):
                    self._newest = t
                yield ev

    def _replaced(self) -> bool:
        """The path now names another file, or ours shrank below what we read."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # removed: wait for podman to create it again
        if self._fd is None:
            return True
        if (st.st_dev, st.st_ino) != self._ino:
            return True
        return st.st_size < self._pos

    # -- the stream

    def __iter__(self) -> Iterator[SourceEvent]:
        with self._lock:
            if self._closed or self._inotify is None:
                return
            self._iterating = True
            poller = select.poll()
            poller.register(self._inotify.fileno(), select.POLLIN)
            poller.register(self._wake, select.POLLIN)
        try:
            while not self._closed:
                yield from self._read_available()
                if self._closed:
                    return
                if self._replaced():
                    yield from self._read_available()  # what the old file still held
                    if self._open(first=False):
                        continue
                for fd, _ in poller.poll(_SAFETY_POLL_S * 1000):
                    if fd == self._wake:
                        return  # closed, or the service went away
                with contextlib.suppress(OSError):
                    self._inotify.read(timeout=0)
        finally:
            with self._lock:
                self._iterating = False
                self._release()

    def _watch_guard(self) -> None:
        guard = self._guard
        assert guard is not None
        with contextlib.suppress(Exception):
            for _ in guard:
                pass
        self._signal()

    def _signal(self) -> None:
        with self._lock:
            if self._wake >= 0:
                os.eventfd_write(self._wake, 1)

    def close(self) -> None:
        """End the stream; a blocked iteration returns at once.  Idempotent."""
        with self._lock:
            was_closed, self._closed = self._closed, True
            if self._wake >= 0:
                os.eventfd_write(self._wake, 1)
            if not self._iterating:
                self._release()  # else the iteration releases on its way out
        if was_closed:
            return
        if self._guard is not None:
            self._guard.close()
        thread = self._guard_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _release(self) -> None:
        """Close the fds (under the lock, or before any other thread has them)."""
        self._close_file()
        ino, self._inotify = self._inotify, None
        if ino is not None:
            with contextlib.suppress(OSError):
                ino.close()
        wake, self._wake = self._wake, -1
        if wake >= 0:
            os.close(wake)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._release()
