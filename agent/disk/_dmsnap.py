"""`DmSnapshotBackend`: a device-mapper snapshot per sandbox, for raw block devices (Firecracker) on hosts with
device-mapper (``/dev/mapper/control``).

For layer ``dest`` (a symlink to the device) named ``wrenn-<dest.stem>``:
    base loop     ``losetup -r`` on the base (read-only)
    origin        ``<name>-origin``: the base loop, then ``zero`` up to the sandbox's size (a linear+zero table),
                  so the guest sees the requested size
    cow           ``<dest>.cow``: a sparse file of the full size on a loop device — the writes go there
    snapshot      ``<name>``: ``snapshot <origin> <cow loop> P 8`` (persistent, 4 KiB chunks)
    ``<dest>.loops`` records the two loop devices so `remove` detaches exactly this layer's.
``remove`` walks back: snapshot, origin, loops, cow file. Not exercised on these machines (no device-mapper); its
conformance tests skip with that reason.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from wrenn.agent.disk._common import check_inputs, discard, run
from wrenn.agent.disk._errors import BackendUnsupported, DiskCommandFailed
from wrenn.agent.disk._interface import DiskUsage, Layer
from wrenn.agent.vmm import DiskFormat

CONTROL = Path("/dev/mapper/control")


def _exists(*paths: Path) -> bool:
    return all(os.path.lexists(p) for p in paths)


def available() -> str | None:
    """None when device-mapper is usable here, else why not."""
    if not CONTROL.exists():
        return f"{CONTROL} does not exist (no device-mapper on this host)"
    return None


class DmSnapshotBackend:
    name = "dm-snapshot"
    format = DiskFormat.RAW

    @staticmethod
    def _name(dest: Path) -> str:
        return f"wrenn-{dest.stem}"

    @staticmethod
    def _cow(dest: Path) -> Path:
        return dest.with_name(f"{dest.name}.cow")

    @staticmethod
    def _loops(dest: Path) -> Path:
        """The loop devices this layer attached (base, then COW), recorded so `remove` detaches exactly those."""
        return dest.with_name(f"{dest.name}.loops")

    async def create(self, base: Path, dest: Path, size_bytes: int) -> Layer:
        reason = available()
        if reason:
            raise BackendUnsupported(self.name, reason)
        base_size = check_inputs(base, size_bytes)
        name = self._name(dest)
        if await asyncio.to_thread(_exists, dest, Path(f"/dev/mapper/{name}")):
            return Layer(dest, self.format, size_bytes)
        await self.remove(dest)
        cow, loops = self._cow(dest), self._loops(dest)
        try:
            base_loop = (await run("losetup", "-r", "-f", "--show", str(base))).strip()
            await asyncio.to_thread(loops.write_text, base_loop + "\n")
            await asyncio.to_thread(cow.write_bytes, b"")
            await asyncio.to_thread(os.truncate, cow, size_bytes)
            cow_loop = (await run("losetup", "-f", "--show", str(cow))).strip()
            await asyncio.to_thread(loops.write_text, f"{base_loop}\n{cow_loop}\n")
            base_sectors, sectors = base_size // 512, size_bytes // 512
            table = f"0 {base_sectors} linear {base_loop} 0\n"
            if sectors > base_sectors:
                table += f"{base_sectors} {sectors - base_sectors} zero\n"
            await run("dmsetup", "create", f"{name}-origin", stdin=table)  # a multi-line table comes on stdin
            snap = f"0 {sectors} snapshot /dev/mapper/{name}-origin {cow_loop} P 8\n"
            await run("dmsetup", "create", name, stdin=snap)
            await asyncio.to_thread(os.symlink, f"/dev/mapper/{name}", dest)
        except BaseException:
            await asyncio.shield(self.remove(dest))
            raise
        return Layer(dest, self.format, size_bytes)

    async def remove(self, dest: Path) -> None:
        if available():
            return
        name = self._name(dest)
        for device in (name, f"{name}-origin"):
            if await asyncio.to_thread(_exists, Path(f"/dev/mapper/{device}")):
                await run("dmsetup", "remove", device)
        loops = self._loops(dest)
        if await asyncio.to_thread(loops.exists):
            for device in (await asyncio.to_thread(loops.read_text)).split():
                if await asyncio.to_thread(_exists, Path(device)):
                    await run("losetup", "-d", device)
        for path in (self._cow(dest), loops, dest):
            await asyncio.to_thread(discard, path)

    async def usage(self, dest: Path) -> DiskUsage:
        status = (await run("dmsetup", "status", self._name(dest))).split()
        # "<start> <len> snapshot <used>/<total> <metadata>" in sectors
        try:
            used = int(status[3].split("/")[0]) * 512
            size = int(status[1]) * 512
        except (IndexError, ValueError) as exc:
            raise DiskCommandFailed("dmsetup status", " ".join(status)) from exc
        return DiskUsage(size_bytes=size, allocated_bytes=used)
