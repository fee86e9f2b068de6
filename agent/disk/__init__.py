"""Sandbox disks: a read-only base image plus a sparse copy-on-write layer per sandbox, behind `DiskBackend`
(the specification is `_interface`'s docstring; tests/agent/disk/test_conformance.py checks every backend).

    backend = await detect_backend("qemu", layer_dir)            # Qcow2Backend / DmSnapshotBackend / ReflinkBackend
    layer = await backend.create(base, layer_dir / f"{sandbox_id}.qcow2", size_bytes)
    VMConfig(rootfs=layer.path, rootfs_format=layer.format, ...)
    await backend.usage(layer.path); await backend.remove(layer.path)

Errors (tree in `_errors`): `DiskError` and its kinds.
"""

from wrenn.agent.disk._detect import detect_backend
from wrenn.agent.disk._dmsnap import DmSnapshotBackend
from wrenn.agent.disk._errors import (
    BackendUnsupported,
    BaseImageMissing,
    DiskCommandFailed,
    DiskError,
    InvalidDiskSize,
)
from wrenn.agent.disk._interface import DiskBackend, DiskUsage, Layer
from wrenn.agent.disk._qcow2 import Qcow2Backend
from wrenn.agent.disk._reflink import ReflinkBackend

__all__ = [
    "BackendUnsupported",
    "BaseImageMissing",
    "DiskBackend",
    "DiskCommandFailed",
    "DiskError",
    "DiskUsage",
    "DmSnapshotBackend",
    "InvalidDiskSize",
    "Layer",
    "Qcow2Backend",
    "ReflinkBackend",
    "detect_backend",
]
