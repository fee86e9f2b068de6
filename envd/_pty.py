"""Pseudo-terminals for PTY processes: open one with a size, resize it, make it the child's controlling tty."""

from __future__ import annotations

import fcntl
import os
import struct
import termios


def open_pty(cols: int, rows: int, owner_uid: int | None) -> tuple[int, int]:
    """A (master, slave) pair sized cols x rows; the slave is given to `owner_uid` so `tty`, `mesg` work."""
    master, slave = os.openpty()
    try:
        resize(master, cols, rows)
        if owner_uid is not None and os.geteuid() == 0:
            os.fchown(slave, owner_uid, -1)
        os.set_blocking(master, False)
    except OSError:
        os.close(master)
        os.close(slave)
        raise
    return master, slave


def resize(master: int, cols: int, rows: int) -> None:
    """TIOCSWINSZ on the master; the kernel sends SIGWINCH to the terminal's foreground process group."""
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", max(rows, 1), max(cols, 1), 0, 0))


def become_controlling_tty() -> None:
    """preexec_fn of a PTY child (runs after setsid): stdin, the slave, becomes its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
