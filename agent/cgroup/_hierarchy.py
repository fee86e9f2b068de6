"""The two cgroup layouts behind one small interface.

v2 (unified): one tree; the parent ``<root>/<parent>`` gets ``+cpu +memory +pids`` in its ``cgroup.subtree_control``
(and the root's), each sandbox is ``<root>/<parent>/<id>`` with ``cpu.max``, ``memory.max``, ``memory.swap.max``,
``pids.max``. v1: one directory per controller, ``<root>/<controller>/<parent>/<id>``, with ``cpu.cfs_quota_us``
/ ``cpu.cfs_period_us``, ``memory.limit_in_bytes`` and ``pids.max``; a pid is written to each controller's group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from enum import IntEnum
from pathlib import Path

from wrenn.agent.cgroup._errors import CgroupUnavailable, CgroupWriteFailed
from wrenn.agent.cgroup._limits import CPU_PERIOD_US, Limits, Usage

CONTROLLERS = ("cpu", "memory", "pids")


class CgroupVersion(IntEnum):
    V1 = 1
    V2 = 2


def detect(root: Path = Path("/sys/fs/cgroup")) -> CgroupVersion:
    """v2 when the unified hierarchy offers cpu, memory and pids; else v1 when their hierarchies are mounted."""
    controllers = root / "cgroup.controllers"
    if controllers.exists() and set(CONTROLLERS) <= set(controllers.read_text().split()):
        return CgroupVersion.V2
    if all((root / c / "cgroup.procs").exists() for c in CONTROLLERS):
        return CgroupVersion.V1
    raise CgroupUnavailable(f"{root}: neither cgroup v2 with {CONTROLLERS} nor v1 hierarchies for them")


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise CgroupWriteFailed(f"writing {value!r} to {path}: {exc}") from exc


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise CgroupWriteFailed(f"reading {path}: {exc}") from exc


class Hierarchy:
    """Paths and files of one cgroup version under `root`, for groups ``<parent>/<name>``."""

    def __init__(self, version: CgroupVersion, root: Path, parent: str) -> None:
        self.version = version
        self.root = root
        self.parent = parent
        self.v1_controllers: tuple[str, ...] = CONTROLLERS
        cpuacct = root / "cpuacct"
        if (cpuacct / "cpuacct.usage").exists() and cpuacct.resolve() != (root / "cpu").resolve():
            self.v1_controllers += ("cpuacct",)  # its own hierarchy (not co-mounted with cpu): CPU usage lives there

    def _v1(self, controller: str, name: str) -> Path:
        return self.root / controller / self.parent / name

    def parents(self) -> list[Path]:
        if self.version is CgroupVersion.V2:
            return [self.root / self.parent]
        return [self.root / c / self.parent for c in self.v1_controllers]

    def groups(self, name: str) -> list[Path]:
        return [p / name for p in self.parents()]

    def names(self) -> set[str]:
        """Groups under the parent(s)."""
        found: set[str] = set()
        for parent in self.parents():
            if parent.is_dir():
                found |= {g.name for g in parent.iterdir() if g.is_dir()}
        return found

    def ensure_parents(self) -> None:
        for parent in self.parents():
            try:
                parent.mkdir(exist_ok=True)
            except OSError as exc:
                raise CgroupWriteFailed(f"creating {parent}: {exc}") from exc
        if self.version is CgroupVersion.V2:
            enable = " ".join(f"+{c}" for c in CONTROLLERS)
            for level in (self.root, self.root / self.parent):
                if not set(CONTROLLERS) <= set(_read(level / "cgroup.subtree_control").split()):
                    _write(level / "cgroup.subtree_control", enable)

    def create(self, name: str, limits: Limits) -> None:
        self.ensure_parents()
        for group in self.groups(name):
            try:
                group.mkdir(exist_ok=True)
            except OSError as exc:
                raise CgroupWriteFailed(f"creating {group}: {exc}") from exc
        for path, value in self.settings(name, limits).items():
            _write(path, value)
            if _read(path).split()[0] != value.split()[0]:
                raise CgroupWriteFailed(f"{path} reads {_read(path).strip()!r} after writing {value!r}")

    def settings(self, name: str, limits: Limits) -> dict[Path, str]:
        if self.version is CgroupVersion.V2:
            g = self.root / self.parent / name
            return {
                g / "cpu.max": f"{limits.cpu_quota_us} {CPU_PERIOD_US}",
                g / "memory.max": str(limits.memory_bytes),
                g / "memory.swap.max": "0",
                g / "pids.max": str(limits.pids_max),
            }
        cpu, memory, pids = (self._v1(c, name) for c in CONTROLLERS)
        return {
            cpu / "cpu.cfs_period_us": str(CPU_PERIOD_US),
            cpu / "cpu.cfs_quota_us": str(limits.cpu_quota_us),
            memory / "memory.limit_in_bytes": str(limits.memory_bytes),
            pids / "pids.max": str(limits.pids_max),
        }

    def add(self, name: str, pid: int) -> None:
        """Move `pid` into the group; a group already holding it is left alone (a cgroup v1 move costs an RCU grace
        period, 10-15 ms here, even when the task is inside already)."""
        for group in self.groups(name):
            procs = group / "cgroup.procs"
            if str(pid) not in _read(procs).split():
                _write(procs, str(pid))

    def pids(self, name: str) -> set[int]:
        found: set[int] = set()
        for group in self.groups(name):
            if group.is_dir():
                found |= {int(p) for p in _read(group / "cgroup.procs").split()}
        return found

    def usage(self, name: str) -> Usage:
        if self.version is CgroupVersion.V2:
            g = self.root / self.parent / name
            stat = dict(line.split() for line in _read(g / "cpu.stat").splitlines())
            return Usage(
                memory_bytes=int(_read(g / "memory.current")),
                cpu_usec=int(stat["usage_usec"]),
                pids=int(_read(g / "pids.current")),
            )
        cpu, memory, pids = (self._v1(c, name) for c in CONTROLLERS)
        cpuacct = self._v1("cpuacct", name) / "cpuacct.usage"
        if not cpuacct.exists():  # cpu and cpuacct co-mounted (most hosts): the cpu group has the file
            cpuacct = cpu / "cpuacct.usage"
        cpu_usec = int(_read(cpuacct)) // 1000 if cpuacct.exists() else 0
        return Usage(
            memory_bytes=int(_read(memory / "memory.usage_in_bytes")),
            cpu_usec=cpu_usec,
            pids=int(_read(pids / "pids.current")),
        )

    def remove(self, name: str, timeout: float = 10.0) -> None:
        """Kill what is left in the group, wait until it is empty, remove it. Idempotent."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.pids(name)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if not left:
                break
            if time.monotonic() > deadline:
                raise CgroupWriteFailed(f"cgroup {self.parent}/{name} still holds {sorted(left)} after {timeout} s")
            time.sleep(0.01)  # a killed task leaves cgroup.procs only once the kernel reaped it: poll for that
        for group in self.groups(name):
            while group.is_dir():
                try:
                    group.rmdir()
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise CgroupWriteFailed(f"removing {group}: {exc}") from exc
                    time.sleep(0.01)
