"""Errors raised by VMM drivers, each also one of Wrenn's error kinds (`wrenn.protocol.errors`).

    VMMError                    (WrennError, 500) root of every driver error
    ├── VMStateError            (Conflict, 409)     the VM is in the wrong state for the call
    ├── StartFailed             (Unavailable, 503)  the VMM could not be started; nothing is left behind
    ├── AdoptFailed             (NotFound, 404)     no live VMM of ours in that run directory
    ├── SnapshotError           (Internal, 500)     saving or restoring a snapshot failed
    └── ControlError            (Internal, 500)     the VMM's control channel refused or failed a command
        ├── QMPError                                a QMP command failed (QEMU): carries command and reply
        └── FirecrackerAPIError                     an API call failed (Firecracker): carries request,
                                                    status and fault_message

Library errors (`qemu.qmp`, `httpx`, `OSError`) are translated where they happen with ``raise ... from``, so the
original stays attached as ``__cause__``. `message` is safe to log; the API maps the kind, never the details.
"""

from __future__ import annotations

from typing import Any

from wrenn.protocol.errors import Conflict, Internal, NotFound, Unavailable, WrennError


class VMMError(WrennError):
    """Root of every VMM driver error."""


class VMStateError(VMMError, Conflict):
    """A method was called in a state that does not allow it; names the actual and the required states."""

    def __init__(self, vm_id: str, actual: str, required: tuple[str, ...]) -> None:
        super().__init__(f"VM {vm_id} is {actual}, needs to be {' or '.join(required)}")
        self.vm_id = vm_id
        self.actual = actual
        self.required = required


class StartFailed(VMMError, Unavailable):
    """Starting (or restoring) a VM failed. The driver has already removed the process and its sockets.

    `detail` holds what the VMM said (stderr tail, API fault message) when there was anything.
    """

    def __init__(self, vm_id: str, reason: str, detail: str = "") -> None:
        text = f"VM {vm_id} failed to start: {reason}"
        super().__init__(f"{text}: {detail}" if detail else text)
        self.vm_id = vm_id
        self.reason = reason
        self.detail = detail


class AdoptFailed(VMMError, NotFound):
    """`adopt()` found no live VMM of ours in the run directory (no pidfile, dead pid, or another process)."""


class SnapshotError(VMMError, Internal):
    """Saving or restoring a snapshot failed."""


class ControlError(VMMError, Internal):
    """The VMM's control channel (QMP socket, Firecracker API socket) refused or failed a command."""


class QMPError(ControlError):
    """A QMP command failed. `command`/`arguments` are what was sent, `reply` what QEMU answered (or None)."""

    def __init__(self, command: str, arguments: dict[str, Any] | None, reply: object, message: str) -> None:
        super().__init__(f"QMP {command} failed: {message}")
        self.command = command
        self.arguments = arguments
        self.reply = reply


class FirecrackerAPIError(ControlError):
    """A Firecracker API call failed: `http_status` is the HTTP status (0 when there was no answer)."""

    def __init__(self, method: str, path: str, status: int, fault_message: str) -> None:
        super().__init__(f"Firecracker {method} {path} -> {status}: {fault_message}")
        self.method = method
        self.path = path
        self.http_status = status
        self.fault_message = fault_message
