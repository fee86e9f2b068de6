"""What the sandbox manager needs from the host: a network, a disk overlay and a cgroup per sandbox.

`HostResources` is the consumer's protocol (only what `wrenn.agent.sandboxes` calls); `HostresResources` adapts
the host-resource packages (`wrenn.agent.network`, `wrenn.agent.disk`, `wrenn.agent.cgroup`) to it. Every method
is idempotent: acquiring what exists returns it, releasing what is gone is a no-op — so a create that crashed
half-way is repaired (or undone) by calling them again.

The guest inside every sandbox has the same address (a warm snapshot's clones share the guest IP and MAC); each
sandbox's namespace makes it reachable from the host at its own `NetworkLease.envd_address`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wrenn.agent.vmm import Network, Placement

GUEST_IP = "169.254.0.21"
GATEWAY_IP = "169.254.0.22"
GUEST_PREFIX = 30
GUEST_MAC = "02:fc:00:00:00:02"


@dataclass(frozen=True)
class NetworkLease:
    """A sandbox's network: what the VMM attaches to and where envd answers from the host."""

    vm_network: Network
    envd_address: str
    """``host:port`` of the guest's envd, reachable from the agent's own namespace."""
    netns: str | None = None
    guest_ip: str = GUEST_IP
    gateway_ip: str = GATEWAY_IP

    def kernel_args(self) -> str:
        return f"wrenn.ip={self.guest_ip}/{GUEST_PREFIX} wrenn.gw={self.gateway_ip}"


@dataclass(frozen=True)
class HostFacts:
    cgroup_version: int
    cow_backend: str


class HostResources(Protocol):
    """Per-sandbox host resources. Names derive from the sandbox id and slot, so they are found again after a
    restart without extra state."""

    async def open(self) -> HostFacts:
        """Detect the host (cgroup version, CoW backend) and prepare shared state (e.g. the host bridge)."""
        ...

    async def aclose(self) -> None: ...

    async def acquire_network(self, sandbox_id: str, slot: int, *, allow_internet: bool) -> NetworkLease: ...

    async def prepare_network(self, slot: int) -> None:
        """Set up slot `slot`'s network ahead of any sandbox, egress denied (`wrenn.agent._netpool`); undone by
        `release_network`."""
        ...

    async def take_network(self, sandbox_id: str, slot: int, *, allow_internet: bool) -> NetworkLease:
        """The lease of a slot that `prepare_network` set up, with the sandbox's egress applied to it."""
        ...

    async def release_network(self, sandbox_id: str, slot: int) -> None: ...

    async def create_disk(self, base: Path, base_format: str, dest: Path, size_mb: int) -> None: ...

    async def remove_disk(self, dest: Path) -> None: ...

    async def create_cgroup(self, sandbox_id: str, vcpus: int, memory_mb: int) -> Placement:
        """Make the sandbox's cgroup; the returned placement moves a VMM pid into it."""
        ...

    async def remove_cgroup(self, sandbox_id: str) -> None:
        """Remove the cgroup (killing what is left in it)."""
        ...

    async def cleanup_stale(self, keep_sandboxes: Collection[str], keep_slots: Collection[int]) -> None:
        """Remove namespaces, links, cgroups and overlays that no listed sandbox owns."""
        ...

    def disk_mb_free(self, path: Path) -> int: ...
