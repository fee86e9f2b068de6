"""VMM drivers behind one interface: `VMDriver` starts VMs, `VM` is the handle to one (spec in `_interface`).

Implementations: `wrenn.agent.vmm.qemu.QemuDriver`, `wrenn.agent.vmm.firecracker.FirecrackerDriver`, and the fake
`wrenn.agent.vmm.fake.FakeDriver` for testing code that uses drivers; all run tests/agent/vmm/test_conformance.py.
docs/vmm.md describes the interface, the command lines and the choices.
"""

from wrenn.agent.vmm._config import ENVD_PORT, DiskFormat, Network, SnapshotInfo, TapNetwork, UserNetwork, VMConfig
from wrenn.agent.vmm._errors import (
    AdoptFailed,
    ControlError,
    FirecrackerAPIError,
    QMPError,
    SnapshotError,
    StartFailed,
    VMMError,
    VMStateError,
)
from wrenn.agent.vmm._interface import EXITED_STATES, VM, Placement, VMDriver, VMState
from wrenn.agent.vmm._ready import wait_envd

__all__ = [
    "ENVD_PORT",
    "EXITED_STATES",
    "VM",
    "AdoptFailed",
    "ControlError",
    "DiskFormat",
    "FirecrackerAPIError",
    "Network",
    "Placement",
    "QMPError",
    "SnapshotError",
    "SnapshotInfo",
    "StartFailed",
    "TapNetwork",
    "UserNetwork",
    "VMConfig",
    "VMDriver",
    "VMMError",
    "VMState",
    "VMStateError",
    "wait_envd",
]
