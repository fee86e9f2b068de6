"""`Qcow2Backend`: a qcow2 overlay per sandbox over the raw base (``qemu-img create -b base -F raw``), for QEMU.

The overlay starts at a few hundred KiB of metadata whatever its virtual size; the base is only read (QEMU opens
a backing file read-only). The overlay records the base by absolute path, so bases must not move while layers
exist.

A fresh overlay depends on nothing but the base's path and format and the virtual size (qcow2 holds no timestamp or
id), so the first layer of a (base file, size) is made by ``qemu-img create`` and its bytes are kept (the non-zero
4 KiB blocks of a few hundred KiB); every later layer of the same base file — same path, inode, size and mtime —
and size is those bytes written to a new sparse file, without a process spawn.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path

from wrenn.agent.disk._common import allocated, check_inputs, discard, run, temporary
from wrenn.agent.disk._errors import BaseImageMissing, DiskCommandFailed, InvalidDiskSize
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


_BLOCK = 4096
_CACHE_LIMIT = 4 * 1024 * 1024
"""A fresh overlay larger than this (it never is: its metadata grows by 8 bytes of L1 per 512 MiB) is not kept."""

_Key = tuple[str, int, int, int, int, str, int]


@dataclass(frozen=True)
class _Blank:
    """The content of a fresh overlay: its non-zero blocks and its length (the rest reads as zeros)."""

    blocks: tuple[tuple[int, bytes], ...]
    length: int

    @classmethod
    def read(cls, path: Path) -> _Blank | None:
        data = path.read_bytes()
        if len(data) > _CACHE_LIMIT:
            return None
        blocks = tuple(
            (offset, data[offset : offset + _BLOCK])
            for offset in range(0, len(data), _BLOCK)
            if data[offset : offset + _BLOCK].count(0) != min(_BLOCK, len(data) - offset)
        )
        return cls(blocks, len(data))

    def place(self, dest: Path) -> bool:
        """Make the layer at `dest` (under its temporary name, then renamed), unless something is there already
        (False: the caller checks and repairs it)."""
        if dest.exists():
            return False
        tmp = temporary(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        discard(tmp)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                for offset, block in self.blocks:
                    os.pwrite(fd, block, offset)
                os.ftruncate(fd, self.length)
            finally:
                os.close(fd)
            os.replace(tmp, dest)
        except BaseException:
            discard(tmp)
            raise
        return True


def _resolve(base: Path) -> tuple[Path, os.stat_result]:
    resolved = base.resolve()
    return resolved, resolved.stat()


def _key(base: Path, stat: os.stat_result, base_format: DiskFormat, size_bytes: int) -> _Key:
    return (str(base), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, base_format.value, size_bytes)


class Qcow2Backend:
    name = "qcow2"
    format = DiskFormat.QCOW2

    def __init__(self) -> None:
        self._blanks: dict[_Key, _Blank] = {}

    async def create(
        self, base: Path, dest: Path, size_bytes: int, *, base_format: DiskFormat = DiskFormat.RAW
    ) -> Layer:
        """`DiskBackend.create`; beyond the interface, the base may itself be qcow2 (a paused sandbox's frozen disk,
        which clones then stack on), its size then being its virtual size."""
        if await asyncio.to_thread(self._place_known, base, dest, size_bytes, base_format):
            return Layer(dest, self.format, size_bytes)  # inputs were checked when the key was first seen
        try:
            base, stat = await asyncio.to_thread(_resolve, base)
        except FileNotFoundError as exc:
            raise BaseImageMissing(f"base image {base} does not exist") from exc
        key = _key(base, stat, base_format, size_bytes)
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
            made = await asyncio.to_thread(_Blank.read, tmp)  # before QEMU ever opens it: still blank
            if made is not None:
                self._blanks[key] = made
            await asyncio.to_thread(os.replace, tmp, dest)
        except BaseException:
            await asyncio.to_thread(discard, tmp)
            raise
        return Layer(dest, self.format, size_bytes)

    def _place_known(self, base: Path, dest: Path, size_bytes: int, base_format: DiskFormat) -> bool:
        """The common case in one worker-thread call (each hop costs ~0.5 ms on a busy host): a base and size seen
        before, nothing at `dest` yet. False sends `create` down the checked path."""
        try:
            resolved, stat = _resolve(base)
        except FileNotFoundError:
            return False
        blank = self._blanks.get(_key(resolved, stat, base_format, size_bytes))
        return blank is not None and blank.place(dest)

    async def remove(self, dest: Path) -> None:
        await asyncio.to_thread(discard, temporary(dest))
        await asyncio.to_thread(discard, dest)

    async def usage(self, dest: Path) -> DiskUsage:
        info = await _info(dest)
        size = info.get("virtual-size")
        assert isinstance(size, int)
        return DiskUsage(size_bytes=size, allocated_bytes=await asyncio.to_thread(allocated, dest))
