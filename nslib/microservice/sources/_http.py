"""A small HTTP/1.1 client over a unix socket (podman's API), standard library only."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

__all__ = ["HTTPError", "UnixHTTP", "socket_path"]


class HTTPError(OSError):
    """The server answered with a status other than 2xx."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def socket_path(url: str) -> str:
    """The filesystem path of a ``unix://`` URL (a bare path is accepted too).

    :raises ValueError: another scheme.
    """
    if url.startswith("unix://"):
        path = url[len("unix://") :]
    elif url.startswith("/"):
        path = url
    else:
        raise ValueError(f"only unix:// sockets are supported, not {url!r}")
    if not path or "\0" in path:
        raise ValueError(f"not a socket path: {url!r}")
    return path


class _Conn(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.settimeout(self.timeout)
            s.connect(self._path)
        except BaseException:
            s.close()
            raise
        self.sock = s


def _message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    if isinstance(data, dict):
        return str(data.get("message") or data.get("cause") or data)[:200]
    return str(data)[:200]


_IDLE_MAX = 8  # kept-alive connections at most (one per calling thread at a time)


class UnixHTTP:
    """Requests to one unix socket: kept-alive connections for calls, one per stream.

    Calls from several threads run at once, each on a connection of its own.
    """

    def __init__(self, url: str, timeout: float) -> None:
        self.path = socket_path(url)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._idle: list[_Conn] = []
        self._closed = False  # after close(), calls still work but keep nothing open

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """``GET path`` and decode the JSON answer.

        :raises HTTPError: a non-2xx status.
        :raises OSError: no connection (e.g. ``FileNotFoundError``).
        """
        url = _url(path, params)
        for attempt in (0, 1):
            conn = None
            if not attempt:  # the retry takes a new one: the others may be stale too
                with self._lock:
                    conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = _Conn(self.path, self.timeout)
            try:
                conn.request("GET", url, headers={"Host": "d"})
                resp = conn.getresponse()
                body = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if attempt:
                    raise
                continue  # a kept-alive connection the server closed: once more
            except BaseException:
                conn.close()
                raise
            if resp.will_close:
                conn.close()
            else:
                with self._lock:
                    keep = not self._closed and len(self._idle) < _IDLE_MAX
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    conn.close()
            break
        if not 200 <= resp.status < 300:
            raise HTTPError(resp.status, _message(body))
        return json.loads(body)

    def stream_lines(self, path: str, params: Mapping[str, Any] | None = None) -> LineStream:
        """``GET path`` and return its body as a stream of lines (for events).

        :raises HTTPError: a non-2xx status.
        """
        conn = _Conn(self.path, self.timeout)
        try:
            conn.request("GET", _url(path, params), headers={"Host": "d"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise HTTPError(resp.status, _message(resp.read()))
            if conn.sock is not None:
                conn.sock.settimeout(None)  # an idle event stream is silent for ever
        except BaseException:
            conn.close()
            raise
        return LineStream(conn, resp)

    def close(self) -> None:
        """Close the kept-alive connections (a call in flight keeps its own until it ends)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class LineStream:
    """The lines of a streamed response; :meth:`close` from any thread ends the iteration."""

    def __init__(self, conn: _Conn, resp: http.client.HTTPResponse) -> None:
        self._conn = conn
        self._resp = resp
        self._sock = conn.sock
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                line = self._resp.readline()
            except Exception:
                if self._closed:  # close() tore the response down under us
                    return
                raise
            if not line:
                return
            if line.strip():
                yield line

    def close(self) -> None:
        """Shut the socket down (a blocked reader returns at once) and close it."""
        self._closed = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self._conn.close()


def _url(path: str, params: Mapping[str, Any] | None) -> str:
    url = quote(path, safe="/:@-._~")
    if params:
        url += "?" + urlencode({k: v for k, v in params.items() if v is not None})
    return url
