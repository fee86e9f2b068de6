"""`Qcow2Backend`: a qcow2 overlay per sandbox over the raw base (``qemu-img create -b base -F raw``), for QEMU.

The overlay starts at a few hundred KiB of metadata whatever its virtual size; the base is only read (QEMU opens
a backing file read-only). The overlay records the base by absolute path, so bases must not move while layers
exist.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from wrenn.agent.disk._common import allocated, check_inputs, discard, run, temporary
from wrenn.agent.disk._errors import DiskCommandFailed, InvalidDiskSize
from wrenn.agent.disk._interface import DiskUsage, Layer
from wrenn.agent.vmm import DiskFormat


async def _info(path: Path, fmt: str = "qcow2") -> dict[str, object]:
    out = await run("qemu-img", "info", "-U", "--output=json", "-f", fmt, str(path))
    try:
        info = json.loads(out)
    except ValueError as exc:
        raise DiskCommandFailed("qemu-img info", f"unreadable output: {out[:200]}") from exc
    assert isinstance(info, dict)
    return info


class Qcow2Backend:
    name = "qcow2"
    format = DiskFormat.QCOW2

    async def create(
        self, base: Path, dest: Path, size_bytes: int, *, base_format: DiskFormat = DiskFormat.RAW
    ) -> Layer:
        """`DiskBackend.create`; beyond the interface, the base may itself be qcow2 (a paused sandbox's frozen disk,
        which clones then stack on), its size then being its virtual size."""
        base = await asyncio.to_thread(base.resolve)
        check_inputs(base, size_bytes if base_format is DiskFormat.RAW else None)
        if base_format is not DiskFormat.RAW:
            virtual = (await _info(base, base_format.value)).get("virtual-size")
            if not isinstance(virtual, int) or size_bytes < virtual:
                raise InvalidDiskSize(f"disk size {size_bytes} is below the base image's {virtual} bytes")
        if await asyncio.to_thread(dest.exists):
            info = await _info(dest)
            if info.get("virtual-size") == size_bytes and info.get("backing-filename") == str(base):
                return Layer(dest, self.format, size_bytes)
            await self.remove(dest)
        tmp = temporary(dest)
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(discard, tmp)
        try:
            await run(
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(base),
                "-F",
                base_format.value,
                str(tmp),
                str(size_bytes),
            )
            await asyncio.to_thread(os.replace, tmp, dest)
        except BaseException:
            await asyncio.to_thread(discard, tmp)
            raise
        return Layer(dest, self.format, size_bytes)

    async def remove(self, dest: Path) -> None:
        await asyncio.to_thread(discard, temporary(dest))
        await asyncio.to_thread(discard, dest)

    async def usage(self, dest: Path) -> DiskUsage:
        info = await _info(dest)
        size = info.get("virtual-size")
        assert isinstance(size, int)
        return DiskUsage(size_bytes=size, allocated_bytes=await asyncio.to_thread(allocated, dest))
