"""Writing key material to disk: atomic replacement, private keys never readable by anyone but the owner."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_private", "write_public"]


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # O_EXCL + the final mode at creation: the key is never on disk with wider permissions, even for an instant.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # umask may have narrowed the mode given to open()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_private(path: Path, data: bytes) -> None:
    """Write a private key (mode 0600), replacing any previous file atomically."""
    _write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Write a certificate or CRL (mode 0644), replacing any previous file atomically."""
    _write_atomic(path, data, 0o644)
