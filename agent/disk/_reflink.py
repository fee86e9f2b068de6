"""`ReflinkBackend`: a raw copy per sandbox that shares the base's blocks (``cp --reflink=always``, the FICLONE
ioctl) on XFS or btrfs, grown to the sandbox's size with ``truncate`` — for VMMs that want raw block devices
(Firecracker) on hosts without device-mapper.

A clone costs metadata only; a block the guest writes is copied then (the filesystem's copy-on-write). Filesystems
without reflink (ext4, tmpfs) fail with `BackendUnsupported` instead of silently making a full copy. `usage` counts
the extents not shared with another file (FIEMAP via ``filefrag -v``; shared extents carry the ``shared`` flag).
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from wrenn.agent.disk._common import check_inputs, discard, run, temporary
from wrenn.agent.disk._errors import BackendUnsupported, DiskCommandFailed
from wrenn.agent.disk._interface import DiskUsage, Layer
from wrenn.agent.vmm import DiskFormat

_EXTENT = re.compile(r"^\s*\d+:\s*\d+\.\.\s*\d+:\s*\d+\.\.\s*\d+:\s*(\d+):?(.*)$")


async def probe(directory: Path) -> bool:
    """Whether `directory`'s filesystem can reflink (clones a one-block file there)."""
    src, dst = directory / ".wrenn-reflink-probe", directory / ".wrenn-reflink-probe.clone"
    try:
        await asyncio.to_thread(src.write_bytes, b"\0" * 4096)
        await run("cp", "--reflink=always", str(src), str(dst))
        return True
    except (OSError, DiskCommandFailed):
        return False
    finally:
        await asyncio.to_thread(discard, src)
        await asyncio.to_thread(discard, dst)


class ReflinkBackend:
    name = "reflink"
    format = DiskFormat.RAW

    async def create(self, base: Path, dest: Path, size_bytes: int) -> Layer:
        check_inputs(base, size_bytes)
        if await asyncio.to_thread(dest.exists):
            if (await asyncio.to_thread(os.stat, dest)).st_size == size_bytes:
                return Layer(dest, self.format, size_bytes)
            await self.remove(dest)
        tmp = temporary(dest)
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(discard, tmp)
        try:
            try:
                await run("cp", "--reflink=always", str(base), str(tmp))
            except DiskCommandFailed as exc:
                if "not supported" in exc.stderr.lower() or "cross-device" in exc.stderr.lower():
                    raise BackendUnsupported(
                        self.name, f"{dest.parent} cannot share blocks with {base} (needs XFS/btrfs, same fs)"
                    ) from exc
                raise
            await asyncio.to_thread(os.truncate, tmp, size_bytes)
            await asyncio.to_thread(os.replace, tmp, dest)
        except BaseException:
            await asyncio.to_thread(discard, tmp)
            raise
        return Layer(dest, self.format, size_bytes)

    async def remove(self, dest: Path) -> None:
        await asyncio.to_thread(discard, temporary(dest))
        await asyncio.to_thread(discard, dest)

    async def usage(self, dest: Path) -> DiskUsage:
        size = (await asyncio.to_thread(os.stat, dest)).st_size
        out = await run("filefrag", "-v", "-b4096", str(dest))
        own = 0
        for line in out.splitlines():
            match = _EXTENT.match(line)
            if match and "shared" not in match.group(2):
                own += int(match.group(1)) * 4096
        return DiskUsage(size_bytes=size, allocated_bytes=own)
