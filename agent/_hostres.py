"""`HostresResources`: `HostResources` on the host-resource packages — `wrenn.agent.network` (netns, veth, TAP,
nftables per slot), `wrenn.agent.disk` (copy-on-write layer per sandbox) and `wrenn.agent.cgroup` (limits, v1 or
v2).

Sizes: a layer is never smaller than its base (a warm template's frozen disk or the image's rootfs), so the
requested ``disk_mb`` is raised to the base's virtual size when it is below it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Collection
from pathlib import Path

from wrenn.agent._resources import HostFacts, NetworkLease
from wrenn.agent.cgroup import CgroupManager, Limits
from wrenn.agent.disk import Qcow2Backend
from wrenn.agent.network import AddressPlan, Egress, NetworkManager, SandboxNetwork, prepare_host
from wrenn.agent.vmm import DiskFormat, Placement
from wrenn.protocol.errors import Unavailable

MIB = 1024 * 1024


class HostresResources:
    def __init__(self, *, prefix: str = "wrenn", transit: str | None = None) -> None:
        plan = AddressPlan(prefix=prefix) if transit is None else AddressPlan(prefix=prefix, transit=transit)
        self._network = NetworkManager(plan)
        self._cgroups = CgroupManager(prefix)
        self._disk = Qcow2Backend()
        self._sizes: dict[tuple[str, int, int], int] = {}

    async def open(self) -> HostFacts:
        await asyncio.to_thread(prepare_host, allow_egress=False)
        return HostFacts(cgroup_version=int(self._cgroups.version), cow_backend=self._disk.name)

    async def aclose(self) -> None:
        await self._cgroups.aclose()

    async def acquire_network(self, sandbox_id: str, slot: int, *, allow_internet: bool) -> NetworkLease:
        net = await self._network.setup(slot, egress=Egress.ALLOWED if allow_internet else Egress.DENIED)
        return _lease(net)

    async def prepare_network(self, slot: int) -> None:
        await self._network.setup(slot, egress=Egress.DENIED)

    async def take_network(self, sandbox_id: str, slot: int, *, allow_internet: bool) -> NetworkLease:
        # A prepared slot is set up with egress denied: nothing to do unless the sandbox may go out.
        net = (
            await self._network.set_egress(slot, Egress.ALLOWED)
            if allow_internet
            else self._network.network(slot, Egress.DENIED)
        )
        return _lease(net)

    async def release_network(self, sandbox_id: str, slot: int) -> None:
        await self._network.teardown(slot)

    async def _virtual_size(self, base: Path, base_format: str) -> int:
        """The base's size as the guest sees it; cached by the file's identity (bases are read-only)."""
        stat = await asyncio.to_thread(base.stat)
        if base_format == "raw":
            return stat.st_size
        key = (str(base), stat.st_ino, stat.st_mtime_ns)
        if key not in self._sizes:
            proc = await asyncio.create_subprocess_exec(
                "qemu-img", "info", "-U", "--output=json", "-f", base_format, str(base),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await proc.communicate()
            if proc.returncode != 0:
                raise Unavailable(f"qemu-img info {base}: {err.decode(errors='replace').strip()[:200]}")
            self._sizes[key] = int(json.loads(out)["virtual-size"])
        return self._sizes[key]

    async def create_disk(self, base: Path, base_format: str, dest: Path, size_mb: int) -> None:
        size = max(size_mb * MIB, await self._virtual_size(base, base_format))
        await self._disk.create(base, dest, size, base_format=DiskFormat(base_format))

    async def remove_disk(self, dest: Path) -> None:
        await self._disk.remove(dest)

    async def create_cgroup(self, sandbox_id: str, vcpus: int, memory_mb: int) -> Placement:
        group = await self._cgroups.create(sandbox_id, Limits(vcpus=vcpus, memory_mb=memory_mb))
        return group.placement

    async def remove_cgroup(self, sandbox_id: str) -> None:
        await self._cgroups.remove(sandbox_id)

    async def cleanup_stale(self, keep_sandboxes: Collection[str], keep_slots: Collection[int]) -> None:
        await self._network.cleanup_stale(keep=keep_slots)
        await self._cgroups.cleanup_stale(keep=keep_sandboxes)

    def disk_mb_free(self, path: Path) -> int:
        stat = os.statvfs(path if path.exists() else path.parent)
        return stat.f_bavail * stat.f_frsize // MIB


def _lease(net: SandboxNetwork) -> NetworkLease:
    return NetworkLease(
        vm_network=net.vm_network,
        envd_address=net.envd_address,
        netns=net.netns,
        guest_ip=net.guest_ip,
        gateway_ip=net.gateway_ip,
    )
