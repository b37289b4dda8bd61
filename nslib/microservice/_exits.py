"""Process exits of the tracked runs, from the kernel (pidfds), not from the runtime."""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from .. import _syscalls as sys_
from ..errors import NamespaceNotFound
from .model import runs_in_container

_JOIN_TIMEOUT: Final = 2.0


@dataclass(frozen=True, slots=True)
class Exited:
    """The process of a tracked run ended (its pidfd became readable)."""

    container_id: str
    pid: int
    time_ns: int


class ExitWatcher:
    """Watches the processes of the tracked runs through pidfds (one epoll thread).

    A process's end is known the moment it happens, from the kernel, even
    when the runtime's daemon is down or wedged and sends no event.
    """

    def __init__(self, on_exit: Callable[[Exited], None]) -> None:
        self._on_exit = on_exit
        self._ep = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._ep.register(self._wake_r, select.EPOLLIN)
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, int], int] = {}  # (cid, pid) -> pidfd
        self._by_fd: dict[int, tuple[str, int]] = {}
        self._pid_of: dict[str, int] = {}  # cid -> its watched pid (one run each)
        self._closed = False
        self.thread = threading.Thread(target=self._main, name="nslib-ms-pidfd", daemon=True)

    def track(self, runs: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
        """Watch exactly *runs* (``(container ID, pid)``); return those already gone."""
        want = set(runs)
        gone: list[tuple[str, int]] = []
        with self._lock:
            if self._closed:
                return []
            for key in [k for k in self._by_key if k not in want]:
                self._drop(key)
            for key in want - self._by_key.keys():
                self._add(key, gone)
        return gone

    def update(self, runs: Mapping[str, int | None]) -> list[tuple[str, int]]:
        """For each container in *runs*, watch exactly its run with that pid (None: none).

        The others stay as they are; returns the runs already gone.
        """
        gone: list[tuple[str, int]] = []
        with self._lock:
            if self._closed:
                return []
            for cid, pid in runs.items():
                old = self._pid_of.get(cid)
                if old is not None and old != pid:
                    self._drop((cid, old))
                if pid is not None and old != pid:
                    self._add((cid, pid), gone)
        return gone

    def _add(self, key: tuple[str, int], gone: list[tuple[str, int]]) -> None:
        try:
            fd = sys_.pidfd_open(key[1])
        except NamespaceNotFound:
            gone.append(key)
            return
        except OSError:
            return  # no pidfds here: the daemon's events still tell
        # The PID may have been reused between the runtime's answer and
        # pidfd_open: the process must be the container's.
        if not runs_in_container(key[1], key[0]):
            os.close(fd)
            gone.append(key)
            return
        old = self._pid_of.get(key[0])
        if old is not None:  # one run per container: a newer one replaces it
            self._drop((key[0], old))
        self._by_key[key] = fd
        self._by_fd[fd] = key
        self._pid_of[key[0]] = key[1]
        self._ep.register(fd, select.EPOLLIN)

    def _drop(self, key: tuple[str, int]) -> None:
        fd = self._by_key.pop(key)
        del self._by_fd[fd]
        if self._pid_of.get(key[0]) == key[1]:
            del self._pid_of[key[0]]
        with contextlib.suppress(OSError):
            self._ep.unregister(fd)
        os.close(fd)

    def _main(self) -> None:
        while True:
            try:
                ready = self._ep.poll()
            except InterruptedError:
                continue
            except (OSError, ValueError):  # closed under us
                return
            exited: list[Exited] = []
            with self._lock:
                if self._closed:
                    return
                for fd, _mask in ready:
                    key = self._by_fd.get(fd)
                    if key is not None:
                        self._drop(key)
                        exited.append(Exited(key[0], key[1], time.time_ns()))
            for ev in exited:
                self._on_exit(ev)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for key in list(self._by_key):
                self._drop(key)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(_JOIN_TIMEOUT)
        self._ep.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
