"""`Limits`: what a sandbox's cgroup allows, chosen at create time.

Memory: the guest's RAM plus the VMM's own overhead. QEMU under TCG keeps a translation cache (up to 32 MiB by
default with ``tb-size``), device state and its own heap on top of guest RAM; measured peaks for a 256 MiB guest stay
under ~120 MiB of overhead, so `VMM_OVERHEAD_MB` = 192 leaves headroom without letting a runaway VMM take the host.
Swap is not added: the group's limit is a hard ceiling.

CPU: ``vcpus`` whole CPUs of quota per 100 ms period for the guest plus `VMM_OVERHEAD_CPU_PCT` of one CPU for the
VMM's own threads (QEMU's main loop with its device emulation and I/O, its RCU thread; under TCG the translation
too), which run beside the vCPU threads. With the bare ``vcpus`` quota a restoring 1-vCPU sandbox was throttled in
half of its creates here (``cpu.stat`` ``throttled_time`` 1.5-12 ms during the create's ~200 ms: QEMU's start-up and
the guest's first request use more than one CPU at times). It is a ceiling, not a reservation: the guest still gets
only its vCPUs' worth of threads to run on.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

VMM_OVERHEAD_MB = 192
VMM_OVERHEAD_CPU_PCT = 50
CPU_PERIOD_US = 100_000


class Limits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    vcpus: int = Field(ge=1, le=64)
    memory_mb: int = Field(ge=16, description="guest RAM; the limit adds VMM_OVERHEAD_MB")
    pids_max: int = Field(default=512, ge=8)
    vmm_overhead_mb: int = Field(default=VMM_OVERHEAD_MB, ge=0)
    vmm_overhead_cpu_pct: int = Field(default=VMM_OVERHEAD_CPU_PCT, ge=0, le=1000)

    @property
    def memory_bytes(self) -> int:
        return (self.memory_mb + self.vmm_overhead_mb) * 1024 * 1024

    @property
    def cpu_quota_us(self) -> int:
        return self.vcpus * CPU_PERIOD_US + self.vmm_overhead_cpu_pct * CPU_PERIOD_US // 100


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True)

    memory_bytes: int
    cpu_usec: int
    pids: int
