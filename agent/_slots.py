"""Slot allocator: small integers that the network derives deterministic names and addresses from."""

from __future__ import annotations

from wrenn.protocol.errors import Exhausted


class SlotAllocator:
    """Hands out the lowest free slot in ``[1, size]``; `claim` re-marks slots known from persisted state."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._used: set[int] = set()

    def allocate(self) -> int:
        for slot in range(1, self._size + 1):
            if slot not in self._used:
                self._used.add(slot)
                return slot
        raise Exhausted(f"all {self._size} network slots of this host are in use")

    def claim(self, slot: int) -> None:
        self._used.add(slot)

    def free(self, slot: int) -> None:
        self._used.discard(slot)

    @property
    def used(self) -> frozenset[int]:
        return frozenset(self._used)
