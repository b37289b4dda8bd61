"""Per-thread capability changes through capset(2), for failure injection.

Capabilities are per thread: only the calling thread is affected, and threads
it creates afterwards (the C core's throwaway threads included) inherit its
reduced set.  Only the effective set is changed; the permitted set is kept,
so a dropped capability can be raised again.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

CAP_SYS_ADMIN = 21

_libc = ctypes.CDLL(None, use_errno=True)
_CAP_V3 = 0x20080522  # _LINUX_CAPABILITY_VERSION_3


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def set_effective_cap(cap: int, on: bool) -> None:
    """Raise or drop *cap* in the calling thread's effective set."""
    hdr = _CapHeader(_CAP_V3, 0)  # pid 0: this thread
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(hdr), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    idx, bit = divmod(cap, 32)
    if on:
        data[idx].effective |= 1 << bit
    else:
        data[idx].effective &= ~(1 << bit)
    if _libc.capset(ctypes.byref(hdr), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


@contextlib.contextmanager
def drop_effective(cap: int) -> Iterator[None]:
    """Drop *cap* from the calling thread's effective set; raise it again after."""
    set_effective_cap(cap, False)
    try:
        yield
    finally:
        set_effective_cap(cap, True)
