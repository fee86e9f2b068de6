"""Errors of the disk backends, each also one of Wrenn's error kinds (`wrenn.protocol.errors`).

    DiskError                   (WrennError, 500)   root of every disk error
    ├── BaseImageMissing        (NotFound, 404)     the read-only base image does not exist
    ├── InvalidDiskSize         (Invalid, 400)      the size is smaller than the base image (layers never shrink)
    ├── BackendUnsupported      (Unavailable, 503)  the host or filesystem cannot run this backend (no reflink,
    │                                               no device-mapper); `reason` says what is missing
    └── DiskCommandFailed       (Internal, 500)     qemu-img, cp, truncate, losetup or dmsetup failed; carries the
                                                    command and its stderr

``OSError`` and failed commands are translated where they happen with ``raise ... from``.
"""

from __future__ import annotations

from wrenn.protocol.errors import Internal, Invalid, NotFound, Unavailable, WrennError


class DiskError(WrennError):
    """Root of every disk error."""


class BaseImageMissing(DiskError, NotFound):
    """The base image given to `create` does not exist."""


class InvalidDiskSize(DiskError, Invalid):
    """The requested size is smaller than the base image."""


class BackendUnsupported(DiskError, Unavailable):
    """This backend cannot work here (filesystem without reflink, host without device-mapper)."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"disk backend {backend} unsupported: {reason}")
        self.backend = backend
        self.reason = reason


class DiskCommandFailed(DiskError, Internal):
    """A host command failed; `command` and `stderr` say which and what it printed."""

    def __init__(self, command: str, stderr: str) -> None:
        super().__init__(f"{command} failed: {stderr}")
        self.command = command
        self.stderr = stderr
