"""Time and identity sources the control plane reads through, so tests can replace them.

`Clock` is "now, timezone-aware UTC"; `Ids` makes row ids and E2B-style short ids. Both are handed to
`create_app` and reach every module through `Deps`.
"""

from __future__ import annotations

import secrets
import string
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]

_ALPHABET = string.ascii_lowercase + string.digits


def utc_now() -> datetime:
    return datetime.now(UTC)


class Ids:
    """Random identifiers. Subclass (or pass another object with these methods) for deterministic tests."""

    def uuid(self) -> uuid.UUID:
        return uuid.uuid4()

    def short(self, length: int = 20) -> str:
        """A lowercase alphanumeric id like E2B's sandbox ids."""
        return "".join(secrets.choice(_ALPHABET) for _ in range(length))
