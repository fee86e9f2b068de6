"""Hand-written fakes for the host agent's tests: host resources without root, and a fake image.

`FakeResources` gives every sandbox user-mode "networking" (a free loopback port the `FakeDriver`'s guest answers
on), writes qcow2-looking overlay files, and keeps books of what is live, so a test can assert that nothing is
left. `fail_at` makes one operation raise, to test rollbacks.
"""

from __future__ import annotations

import socket
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import PrivateAttr

from wrenn.agent import (
    AgentImage,
    AgentSettings,
    HostFacts,
    NetworkLease,
    SandboxManager,
    StateStore,
    StaticImages,
    WarmTemplates,
)
from wrenn.agent._envd import EnvdClient
from wrenn.agent._images import ImageSource
from wrenn.agent._processes import processes_mentioning
from wrenn.agent._resources import HostResources
from wrenn.agent._slots import SlotAllocator
from wrenn.agent.sandboxes import Limits
from wrenn.agent.vmm import Placement, UserNetwork, VMDriver
from wrenn.agent.vmm.fake import FakeDriver
from wrenn.protocol.errors import Unavailable

QCOW2_HEADER = b"QFI\xfb" + b"\0" * 508


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FakeResources:
    networks: dict[str, int] = field(default_factory=dict)
    prepared: set[int] = field(default_factory=set)
    """Slots set up ahead of any sandbox (`prepare_network`) and not yet taken or released."""
    taken: dict[str, tuple[int, bool]] = field(default_factory=dict)
    """Sandbox id -> (prepared slot it took, allow_internet applied): a history, never emptied."""
    disks: set[Path] = field(default_factory=set)
    cgroups: dict[str, list[int]] = field(default_factory=dict)
    stale_calls: list[tuple[set[str], set[int]]] = field(default_factory=list)
    fail_at: str | None = None
    opened: bool = False

    def _maybe_fail(self, operation: str) -> None:
        if self.fail_at == operation:
            raise Unavailable(f"injected failure in {operation}")

    async def open(self) -> HostFacts:
        self.opened = True
        return HostFacts(cgroup_version=1, cow_backend="qcow2")

    async def aclose(self) -> None:
        self.opened = False

    async def acquire_network(self, sandbox_id: str, slot: int, *, allow_internet: bool) -> NetworkLease:
        self._maybe_fail("network")
        port = free_port()
        self.networks[sandbox_id] = slot
        return NetworkLease(vm_network=UserNetwork(host_port=port), envd_address=f"127.0.0.1:{port}")

    async def prepare_network(self, slot: int) -> None:
        self._maybe_fail("prepare")
        self.prepared.add(slot)

    async def take_network(self, sandbox_id: str, slot: int, *, allow_internet: bool) -> NetworkLease:
        assert slot in self.prepared, f"slot {slot} was never prepared"
        self.prepared.discard(slot)
        self.taken[sandbox_id] = (slot, allow_internet)
        return await self.acquire_network(sandbox_id, slot, allow_internet=allow_internet)

    async def release_network(self, sandbox_id: str, slot: int) -> None:
        self.networks.pop(sandbox_id, None)
        self.prepared.discard(slot)

    async def create_disk(self, base: Path, base_format: str, dest: Path, size_mb: int) -> None:
        self._maybe_fail("disk")
        _write_overlay(base, dest)
        self.disks.add(dest)

    async def remove_disk(self, dest: Path) -> None:
        _unlink(dest)
        self.disks.discard(dest)

    async def create_cgroup(self, sandbox_id: str, vcpus: int, memory_mb: int) -> Placement:
        self._maybe_fail("cgroup")
        members = self.cgroups.setdefault(sandbox_id, [])

        async def placement(pid: int) -> None:
            self._maybe_fail("placement")
            members.append(pid)

        return placement

    async def remove_cgroup(self, sandbox_id: str) -> None:
        self.cgroups.pop(sandbox_id, None)

    async def cleanup_stale(self, keep_sandboxes: Collection[str], keep_slots: Collection[int]) -> None:
        self.stale_calls.append((set(keep_sandboxes), set(keep_slots)))
        for sandbox_id in list(self.networks):
            if sandbox_id not in keep_sandboxes:
                del self.networks[sandbox_id]
        for sandbox_id in list(self.cgroups):
            if sandbox_id not in keep_sandboxes:
                del self.cgroups[sandbox_id]
        self.prepared &= set(keep_slots)

    def disk_mb_free(self, path: Path) -> int:
        return 10_000


def _write_overlay(base: Path, dest: Path) -> None:
    if not base.exists():
        raise Unavailable(f"base {base} missing")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(QCOW2_HEADER)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def fake_image(root: Path, template: str = "base") -> AgentImage:
    root.mkdir(parents=True, exist_ok=True)
    kernel = root / "vmlinuz"
    rootfs = root / "rootfs.img"
    kernel.write_bytes(b"kernel")
    rootfs.write_bytes(b"\0" * 512)
    return AgentImage(
        template=template, kernel=kernel, initrd=None, rootfs=rootfs, kernel_cmdline="quiet", key=f"{template}-v1"
    )


class FakeSettings(AgentSettings):
    """Agent settings for tests: the fake driver, `FakeResources` and one fake image; no registration."""

    _resources: FakeResources = PrivateAttr()
    _image: AgentImage = PrivateAttr()

    def with_fakes(self, resources: FakeResources, image: AgentImage) -> FakeSettings:
        self._resources = resources
        self._image = image
        return self

    def make_resources(self) -> HostResources:
        return self._resources

    def make_images(self) -> ImageSource:
        return StaticImages({self._image.template: self._image})


def sid(n: int) -> str:
    return f"sbx{n:017d}"


class Env:
    """One agent's parts in a temp dir; `manager()` builds a fresh manager over the same data (a restart)."""

    def __init__(self, root: Path, *, warm: bool = True) -> None:
        self.root = root
        self.resources = FakeResources()
        self.image: AgentImage = fake_image(root / "image")
        self.warm = warm
        self.envd = EnvdClient(timeout=5)

    def manager(self, driver: VMDriver | None = None, *, pool: int = 0) -> SandboxManager:
        driver = driver or FakeDriver()
        slots = SlotAllocator(64)
        templates = WarmTemplates(
            self.root / "templates",
            driver=driver,
            resources=self.resources,
            slots=slots,
            envd=self.envd,
            boot_limit=10,
            enabled=self.warm,
        )
        return SandboxManager(
            store=StateStore(self.root / "sandboxes"),
            driver=driver,
            resources=self.resources,
            images=StaticImages({"base": self.image}),
            templates=templates,
            envd=self.envd,
            slots=slots,
            limits=Limits(ready_cold=10, ready_restore=10, stop_grace=1, rollback=20),
            network_pool=pool,
        )

    def nothing_left(self) -> None:
        assert not self.resources.networks
        assert not self.resources.prepared
        assert not self.resources.cgroups
        assert not {d for d in self.resources.disks if "templates" not in d.parts}
        sandboxes = self.root / "sandboxes"
        assert not sandboxes.exists() or not any(sandboxes.iterdir())
        assert not processes_mentioning(str(sandboxes) + "/")


async def health(address: str) -> int | None:
    """envd's /health status at `address`, or None when nothing answers there (a paused or destroyed sandbox)."""
    async with httpx.AsyncClient(timeout=5) as client:
        try:
            return (await client.get(f"http://{address}/health")).status_code
        except httpx.HTTPError:
            return None
