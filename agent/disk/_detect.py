"""`detect_backend`: the copy-on-write backend for a VMM driver and a layer directory.

``qemu`` reads qcow2, so it always gets `Qcow2Backend`. Drivers that need raw block devices (``firecracker``) get
`DmSnapshotBackend` where device-mapper exists, else `ReflinkBackend` where the directory's filesystem can reflink,
else `BackendUnsupported` naming both reasons — never a silent full copy.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from wrenn.agent.disk import _dmsnap, _reflink
from wrenn.agent.disk._dmsnap import DmSnapshotBackend
from wrenn.agent.disk._errors import BackendUnsupported
from wrenn.agent.disk._interface import DiskBackend
from wrenn.agent.disk._qcow2 import Qcow2Backend
from wrenn.agent.disk._reflink import ReflinkBackend


async def detect_backend(driver: str, directory: Path) -> DiskBackend:
    if driver in ("qemu", "fake"):
        return Qcow2Backend()
    dm_missing = _dmsnap.available()
    if dm_missing is None:
        return DmSnapshotBackend()
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    if await _reflink.probe(directory):
        return ReflinkBackend()
    raise BackendUnsupported("raw copy-on-write", f"{dm_missing}; and {directory} cannot reflink (not XFS/btrfs)")
