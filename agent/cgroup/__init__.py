"""Sandbox cgroups: each VMM process in ``wrenn/<sandbox_id>`` with CPU, memory and pids limits — cgroup v2 where
its controllers exist, v1 (cpu, memory, pids hierarchies) where they do not.

    cgroups = CgroupManager()                                   # detects v1/v2
    group = await cgroups.create(sandbox_id, Limits(vcpus=2, memory_mb=512))
    vm = await driver.start(config, placement=group.placement)  # the VMM joins before the guest runs
    await group.usage(); await cgroups.remove(sandbox_id)
    await cgroups.cleanup_stale(keep=known_ids)                 # at agent start

Errors (tree in `_errors`): `CgroupError` and its kinds. The memory limit is guest RAM + `VMM_OVERHEAD_MB`, the CPU
quota vcpus + `VMM_OVERHEAD_CPU_PCT` % of a CPU (`_limits`).
"""

from wrenn.agent.cgroup._errors import CgroupError, CgroupUnavailable, CgroupWriteFailed
from wrenn.agent.cgroup._hierarchy import CONTROLLERS, CgroupVersion, detect
from wrenn.agent.cgroup._limits import CPU_PERIOD_US, VMM_OVERHEAD_CPU_PCT, VMM_OVERHEAD_MB, Limits, Usage
from wrenn.agent.cgroup._manager import CgroupManager, SandboxCgroup

__all__ = [
    "CONTROLLERS",
    "CPU_PERIOD_US",
    "VMM_OVERHEAD_CPU_PCT",
    "VMM_OVERHEAD_MB",
    "CgroupError",
    "CgroupManager",
    "CgroupUnavailable",
    "CgroupVersion",
    "CgroupWriteFailed",
    "Limits",
    "SandboxCgroup",
    "Usage",
    "detect",
]
