"""Entering a named network namespace with the calling thread only (``setns(2)``), for the network steps (netlink
sockets and TAP ioctls made inside belong to the namespace) and for the VMM drivers (a process spawned from a
thread inside is born there, without an ``ip netns exec`` wrapper).

The rest of the process stays where it is. The thread is always moved back; when that fails, `leave` raises: a
thread left in the wrong namespace would poison the pool it came from, so it must not go on quietly.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def enter(name: str) -> int:
    """Move the calling thread into namespace `name`; returns an fd of the namespace it was in, for `leave`."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
    except BaseException:
        os.close(own)
        raise
    return own


def leave(own: int) -> None:
    """Move the calling thread back to the namespace `enter` returned (and close that fd)."""
    try:
        _setns(own)
    finally:
        os.close(own)


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with the calling thread inside namespace `name` (`OSError` when it cannot be entered)."""
    own = enter(name)
    try:
        yield
    finally:
        leave(own)
