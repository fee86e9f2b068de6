"""`Limits`: what a sandbox's cgroup allows, chosen at create time.

Memory: the guest's RAM plus the VMM's own overhead. QEMU under TCG keeps a translation cache (up to 32 MiB by
default with ``tb-size``), device state and its own heap on top of guest RAM; measured peaks for a 256 MiB guest stay
under ~120 MiB of overhead, so `VMM_OVERHEAD_MB` = 192 leaves headroom without letting a runaway VMM take the host.
Swap is not added: the group's limit is a hard ceiling. CPU: ``vcpus`` whole CPUs of quota per 100 ms period.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

VMM_OVERHEAD_MB = 192
CPU_PERIOD_US = 100_000


class Limits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    vcpus: int = Field(ge=1, le=64)
    memory_mb: int = Field(ge=16, description="guest RAM; the limit adds VMM_OVERHEAD_MB")
    pids_max: int = Field(default=512, ge=8)
    vmm_overhead_mb: int = Field(default=VMM_OVERHEAD_MB, ge=0)

    @property
    def memory_bytes(self) -> int:
        return (self.memory_mb + self.vmm_overhead_mb) * 1024 * 1024

    @property
    def cpu_quota_us(self) -> int:
        return self.vcpus * CPU_PERIOD_US


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True)

    memory_bytes: int
    cpu_usec: int
    pids: int
