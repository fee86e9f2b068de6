"""`SlotAllocator`: hands out slot numbers to sandboxes and persists who holds which.

The state file is a JSON object ``{"<slot>": "<owner>"}`` written atomically (temporary file, fsync, rename), so
an agent killed at any point finds either the old or the new assignment after a restart. Allocation picks the lowest
free slot; allocating for an owner that already holds a slot returns that slot (idempotent).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from wrenn.agent.network._errors import HostCommandFailed, SlotsExhausted


class SlotAllocator:
    """Slots ``0..capacity-1``, persisted in `path` (None: in memory only)."""

    def __init__(self, capacity: int, path: Path | None = None) -> None:
        self._capacity = capacity
        self._path = path
        self._lock = threading.Lock()
        self._owners: dict[int, str] = {}
        if path is not None and path.exists():
            try:
                raw = json.loads(path.read_text())
                self._owners = {int(slot): str(owner) for slot, owner in raw.items()}
            except (OSError, ValueError) as exc:
                raise HostCommandFailed("reading the slot file", f"{path}: {exc}") from exc

    def allocate(self, owner: str) -> int:
        """The slot `owner` holds, or the lowest free one (then persisted)."""
        with self._lock:
            for slot, holder in self._owners.items():
                if holder == owner:
                    return slot
            free = next((s for s in range(self._capacity) if s not in self._owners), None)
            if free is None:
                raise SlotsExhausted(f"all {self._capacity} network slots are taken")
            self._owners[free] = owner
            self._save()
            return free

    def release(self, slot: int) -> None:
        """Free `slot` (no-op when it is free)."""
        with self._lock:
            if self._owners.pop(slot, None) is not None:
                self._save()

    def owners(self) -> dict[int, str]:
        """A copy of the slot → owner map."""
        with self._lock:
            return dict(self._owners)

    def _save(self) -> None:
        if self._path is None:
            return
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("w") as f:
                json.dump({str(k): v for k, v in sorted(self._owners.items())}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
        except OSError as exc:
            raise HostCommandFailed("writing the slot file", f"{self._path}: {exc}") from exc
