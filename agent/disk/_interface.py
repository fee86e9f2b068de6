"""The `DiskBackend` interface — a specification every backend follows and tests/agent/disk/test_conformance.py
checks.

Vocabulary
    base      A read-only image file (raw ext4) shared by every sandbox of a template. Backends never write it,
              never change its mtime, and never hold it open after `create` returns (dm-snapshot keeps a read-only
              loop device on it while its layers exist).
    layer     A sandbox's disk: the base's content plus the sandbox's writes, kept apart from the base. The VMM
              opens `Layer.path` in `Layer.format` (qcow2 or raw).
    size      The virtual size of a layer in bytes: what the guest sees. Never smaller than the base; the part
              beyond the base reads as zeros (the guest grows its filesystem if it wants the room).
    usage     What a layer costs the host: `allocated_bytes`, the bytes it holds that the base does not share.

Lifecycle
    create(base, dest, size) → Layer     the layer exists at `dest` (or under a name derived from it)
    usage(dest) → DiskUsage               any time while it exists
    remove(dest)                          afterwards nothing of the layer is left (files, devices, mappings)

Guarantees
    - Sparse: a fresh layer allocates a small, size-independent amount (metadata), not the base's or the size's.
    - Idempotent: `create` of an existing layer with the same base and size returns it unchanged; a half-made
      layer (crash mid-create) is never visible at `dest` (made under a temporary name, then renamed) and a
      leftover temporary is replaced. `remove` of a missing layer is a no-op.
    - Errors: `BaseImageMissing` for a missing base, `InvalidDiskSize` for a size below the base's,
      `BackendUnsupported` where the host cannot run the backend — all before anything is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wrenn.agent.vmm import DiskFormat


@dataclass(frozen=True)
class Layer:
    path: Path
    """What the VMM opens (a file, or a device node for dm-snapshot)."""
    format: DiskFormat
    size_bytes: int


@dataclass(frozen=True)
class DiskUsage:
    size_bytes: int
    """Virtual size (what the guest sees)."""
    allocated_bytes: int
    """Host bytes the layer holds on its own (not shared with the base)."""


class DiskBackend(Protocol):
    """A way to give each sandbox its own copy-on-write disk over a shared base image."""

    name: str
    format: DiskFormat

    async def create(self, base: Path, dest: Path, size_bytes: int) -> Layer: ...

    async def remove(self, dest: Path) -> None: ...

    async def usage(self, dest: Path) -> DiskUsage: ...
