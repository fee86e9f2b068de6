"""`CgroupManager`: one cgroup per sandbox, ``<parent>/<sandbox_id>``, holding its VMM process.

Lifecycle: `create` (idempotent: an existing group gets the limits written again) → `SandboxCgroup.placement` is
handed to the VMM driver, which moves the VMM's pid in before the guest runs → `usage` while it runs → `remove`
kills whatever is still inside, waits until the group is empty and removes it (idempotent). At agent start
`cleanup_stale(keep=...)` removes the groups of sandboxes the agent no longer knows. Blocking file work runs in a
worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import structlog

from wrenn.agent.cgroup._errors import CgroupWriteFailed
from wrenn.agent.cgroup._hierarchy import CgroupVersion, Hierarchy, detect
from wrenn.agent.cgroup._limits import Limits, Usage
from wrenn.agent.vmm import Placement

_log = structlog.get_logger(__name__)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class SandboxCgroup:
    """A sandbox's cgroup (existing on the host)."""

    name: str
    limits: Limits
    paths: tuple[Path, ...]
    _manager: CgroupManager

    @property
    def placement(self) -> Placement:
        """The VMM driver's placement callback: moves a pid into this group."""

        async def place(pid: int) -> None:
            await self.add(pid)

        return place

    async def add(self, pid: int) -> None:
        await asyncio.to_thread(self._manager.hierarchy.add, self.name, pid)

    async def pids(self) -> set[int]:
        return await asyncio.to_thread(self._manager.hierarchy.pids, self.name)

    async def usage(self) -> Usage:
        return await asyncio.to_thread(self._manager.hierarchy.usage, self.name)


class CgroupManager:
    """Sandbox cgroups under ``<root>/[<controller>/]<parent>``; the version is detected unless given."""

    def __init__(
        self, parent: str = "wrenn", *, root: Path = Path("/sys/fs/cgroup"), version: CgroupVersion | None = None
    ) -> None:
        if not _NAME.fullmatch(parent):
            raise CgroupWriteFailed(f"cgroup parent name {parent!r} is not a plain name")
        self.version = version if version is not None else detect(root)
        self.hierarchy = Hierarchy(self.version, root, parent)

    async def create(self, sandbox_id: str, limits: Limits) -> SandboxCgroup:
        if not _NAME.fullmatch(sandbox_id):
            raise CgroupWriteFailed(f"sandbox id {sandbox_id!r} is not a plain cgroup name")
        await asyncio.to_thread(self.hierarchy.create, sandbox_id, limits)
        return SandboxCgroup(sandbox_id, limits, tuple(self.hierarchy.groups(sandbox_id)), self)

    async def remove(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self.hierarchy.remove, sandbox_id)

    async def names(self) -> set[str]:
        return await asyncio.to_thread(self.hierarchy.names)

    async def cleanup_stale(self, keep: Collection[str]) -> list[str]:
        """Remove (killing their processes) the groups of sandboxes not in `keep`; returns their names."""
        stale = sorted(await self.names() - set(keep))
        for name in stale:
            _log.info("removing stale sandbox cgroup", cgroup=name)
            await self.remove(name)
        return stale

    async def aclose(self) -> None:
        """Remove the parent group(s) when no sandbox group is left (running VMMs outlive the agent)."""

        def drop() -> None:
            for parent in self.hierarchy.parents():
                with contextlib.suppress(OSError):
                    parent.rmdir()

        await asyncio.to_thread(drop)
