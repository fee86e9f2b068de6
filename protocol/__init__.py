"""Contracts shared by Wrenn's components: error kinds and the host-agent wire models.

The control plane (`wrenn.api`) and the host agent (`wrenn.agent`) never import each other; this package is the
only thing they share. It holds data shapes and error kinds, never behaviour.
"""

from wrenn.protocol.errors import (
    Conflict,
    Exhausted,
    Forbidden,
    Internal,
    Invalid,
    NotFound,
    Unauthenticated,
    Unavailable,
    WrennError,
    error_for_status,
)

__all__ = [
    "Conflict",
    "Exhausted",
    "Forbidden",
    "Internal",
    "Invalid",
    "NotFound",
    "Unauthenticated",
    "Unavailable",
    "WrennError",
    "error_for_status",
]
