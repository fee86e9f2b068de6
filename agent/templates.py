"""Warm templates: one booted-and-snapshotted VM per (image, vCPUs, memory) that creates restore from.

Under TCG a cold boot costs seconds of CPU; restoring a snapshot whose RAM is a file (QEMU ``memory-backend-file``,
mapped copy-on-write by every clone) costs ~0.4 s. So the first create of a template shape boots the image once
with file-backed RAM, waits for envd ``/health``, saves a snapshot and stops that VM; every later create is
``driver.restore`` from it, followed by envd ``/init``. Clones share the guest's IP and MAC — every sandbox has
its own network namespace, so that is fine.

Layout: ``<data>/templates/<hash of template + image key>-<vcpus>c<memory>m/`` holds ``memory`` (guest RAM),
``disk.qcow2`` (QEMU: the frozen disk clones are backed by), ``snapshot/`` (device state + manifest) and ``ready``
(written last, naming the frozen disk: a directory without it is a crashed build and is removed on start). A warm
template is never deleted while the agent runs (clones' overlays are backed by its disk). When a snapshot cannot
be made, the shape falls back to cold boots for the rest of the agent's life (logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import structlog

from wrenn.agent._envd import EnvdClient
from wrenn.agent._images import AgentImage
from wrenn.agent._processes import kill_processes_mentioning
from wrenn.agent._resources import HostResources
from wrenn.agent._slots import SlotAllocator
from wrenn.agent.vmm import VM, VMConfig, VMDriver, VMMError
from wrenn.protocol.errors import WrennError

_log = structlog.get_logger(__name__)

READY = "ready"


@dataclass(frozen=True)
class WarmSnapshot:
    """A snapshot creates restore from: `directory` for `driver.restore`, `disk` to back each clone's overlay."""

    key: str
    directory: Path
    disk: Path


class WarmTemplates:
    """Makes and caches warm snapshots. Creates of one shape wait for its single build (a lock per shape)."""

    def __init__(
        self,
        root: Path,
        *,
        driver: VMDriver,
        resources: HostResources,
        slots: SlotAllocator,
        envd: EnvdClient,
        boot_limit: float,
        enabled: bool = True,
    ) -> None:
        self._root = root
        self._driver = driver
        self._resources = resources
        self._slots = slots
        self._envd = envd
        self._boot_limit = boot_limit
        self._enabled = enabled
        self._locks: dict[str, asyncio.Lock] = {}
        self._failed: set[str] = set()

    @property
    def root(self) -> Path:
        return self._root

    def recover(self) -> None:
        """At agent start: end VMMs of builds a crash interrupted and remove their unfinished directories."""
        if not self._root.is_dir():
            return
        for directory in self._root.iterdir():
            if directory.is_dir() and not (directory / READY).exists():
                _log.info("removing unfinished warm template", directory=str(directory))
                # Only the template VM's own run dir: every clone's command line names the template's
                # memory file and state, and clones must survive.
                kill_processes_mentioning(str(directory / "run") + "/")
                shutil.rmtree(directory, ignore_errors=True)

    def keys_in_use(self) -> set[str]:
        return {d.name for d in self._root.iterdir() if d.is_dir()} if self._root.is_dir() else set()

    @staticmethod
    def shape_key(image: AgentImage, vcpus: int, memory_mb: int) -> str:
        # Short: the VMM's control socket lives below it and AF_UNIX paths end at 107 bytes.
        digest = hashlib.sha256(f"{image.template}\0{image.key}".encode()).hexdigest()[:12]
        return f"{digest}-{vcpus}c{memory_mb}m"

    async def get(self, image: AgentImage, vcpus: int, memory_mb: int) -> WarmSnapshot | None:
        """The warm snapshot of this shape, made now if needed; None means: cold boot."""
        if not self._enabled:
            return None
        key = self.shape_key(image, vcpus, memory_mb)
        if key in self._failed:
            return None
        directory = self._root / key
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if (directory / READY).exists():
                return _cached(key, directory)
            if key in self._failed:
                return None
            try:
                return await self._build(key, directory, image, vcpus, memory_mb)
            except (WrennError, OSError, TimeoutError) as exc:
                _log.warning("warm snapshot failed; this shape cold-boots", key=key, error=str(exc))
                self._failed.add(key)
                return None

    async def _build(self, key: str, directory: Path, image: AgentImage, vcpus: int, memory_mb: int) -> WarmSnapshot:
        log = _log.bind(template=image.template, key=key)
        log.info("booting template for its warm snapshot")
        await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
        run_dir = directory / "run"
        await asyncio.to_thread(run_dir.mkdir, parents=True)
        disk = directory / "disk.qcow2"
        try:
            frozen = await self._boot_and_save(key, directory, disk, image, vcpus, memory_mb)
        except BaseException:
            await asyncio.shield(self._resources.remove_disk(disk))
            await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
            raise
        await asyncio.to_thread(shutil.rmtree, run_dir, ignore_errors=True)  # post-snapshot layer and logs
        await asyncio.to_thread((directory / READY).write_text, str(frozen) + "\n")
        log.info("warm snapshot ready", disk=str(frozen))
        return _cached(key, directory)

    async def _boot_and_save(
        self, key: str, directory: Path, disk: Path, image: AgentImage, vcpus: int, memory_mb: int
    ) -> Path:
        """Boot the image with file-backed RAM on a slot of its own, wait for envd, snapshot, end the VM."""
        slot = self._slots.allocate()
        owner = f"tpl{hashlib.sha256(key.encode()).hexdigest()[:17]}"
        vm: VM | None = None
        try:
            lease = await self._resources.acquire_network(owner, slot, allow_internet=False)
            await self._resources.create_disk(image.rootfs, image.rootfs_format, disk, 0)
            config = VMConfig(
                vm_id=owner,
                kernel=image.kernel,
                initrd=image.initrd,
                kernel_cmdline=f"{image.kernel_cmdline} {lease.kernel_args()}".strip(),
                rootfs=disk,
                vcpus=vcpus,
                memory_mb=memory_mb,
                network=lease.vm_network,
                run_dir=directory / "run",
                memory_file=directory / "memory",
            )
            vm = await self._driver.start(config)
            await self._envd.wait_ready(lease.envd_address, self._boot_limit)
            # One /init (no settings, the clock) before the snapshot: whatever envd loads on its first /init is then
            # in every clone's memory already, instead of being loaded again after each restore.
            await self._envd.init(lease.envd_address, env_vars={}, access_token=None)
            info = await vm.save_snapshot(directory / "snapshot")
            if info.disk is None:
                raise VMMError(f"the {image.template} snapshot froze no disk")
            return info.disk
        finally:
            if vm is not None:
                with contextlib.suppress(VMMError):
                    await asyncio.shield(vm.kill())
                await vm.aclose()
            await asyncio.shield(self._resources.release_network(owner, slot))
            self._slots.free(slot)


def _cached(key: str, directory: Path) -> WarmSnapshot:
    """A finished warm template; ``ready`` holds the path of the frozen disk clones are backed by."""
    disk = Path((directory / READY).read_text().strip())
    return WarmSnapshot(key=key, directory=directory / "snapshot", disk=disk)
