"""QEMU microvm driver: ``qemu-system-x86_64 -M microvm`` controlled over QMP (`qemu.qmp`)."""

from wrenn.agent.vmm.qemu._accel import AcceleratorDetector, AcceleratorReport
from wrenn.agent.vmm.qemu._cmdline import CONSOLE_LOG, PIDFILE, QMP_SOCKET, VMM_LOG, build_argv, host_tsc_khz
from wrenn.agent.vmm.qemu._driver import QemuDriver, QemuVM

__all__ = [
    "CONSOLE_LOG",
    "PIDFILE",
    "QMP_SOCKET",
    "VMM_LOG",
    "AcceleratorDetector",
    "AcceleratorReport",
    "QemuDriver",
    "QemuVM",
    "build_argv",
    "host_tsc_khz",
]
