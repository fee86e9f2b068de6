"""Firecracker driver: the ``firecracker`` binary configured over its HTTP API on a Unix socket."""

from wrenn.agent.vmm.firecracker._api import FirecrackerAPI
from wrenn.agent.vmm.firecracker._driver import (
    API_SOCKET,
    CONSOLE_LOG,
    PIDFILE,
    VMM_LOG,
    FirecrackerDriver,
    FirecrackerVM,
    boot_calls,
)

__all__ = [
    "API_SOCKET",
    "CONSOLE_LOG",
    "PIDFILE",
    "VMM_LOG",
    "FirecrackerAPI",
    "FirecrackerDriver",
    "FirecrackerVM",
    "boot_calls",
]
