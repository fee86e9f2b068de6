"""What a driver needs to start one VM: `VMConfig` and its two network shapes.

A config is plain data (pydantic, frozen): the host engineer's code fills it from a template's `GuestImage` and the
sandbox's host resources, a driver turns it into a VMM process. It is persisted as ``vm.json`` in the run directory
so `adopt()` can rebuild the handle after an agent restart.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

ENVD_PORT = 49983
"""The guest port envd listens on (E2B's)."""

CONFIG_FILE = "vm.json"
"""Name of the persisted `VMConfig` inside the run directory."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DiskFormat(enum.StrEnum):
    QCOW2 = "qcow2"
    RAW = "raw"


class TapNetwork(_Model):
    """A TAP device that already exists inside a network namespace; the VMM is started inside that namespace."""

    kind: Literal["tap"] = "tap"
    netns: str = Field(min_length=1, max_length=64)
    tap: str = Field(min_length=1, max_length=15, description="TAP device name inside `netns` (IFNAMSIZ-1)")
    mac: str = Field(pattern=r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


class UserNetwork(_Model):
    """User-mode networking for tests and image checks: no host privileges, no route anywhere (restrict=on).

    The only way in is a TCP forward from `127.0.0.1:host_port` to `guest_ip:guest_port`; the guest reaches
    nothing outside the VMM. Only the QEMU driver supports it.
    """

    kind: Literal["user"] = "user"
    host_port: int = Field(ge=1, le=65535)
    guest_ip: str = "169.254.0.21"
    gateway_ip: str = "169.254.0.22"
    guest_port: int = ENVD_PORT
    mac: str = Field(default="02:fc:00:00:00:01", pattern=r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


Network = Annotated[TapNetwork | UserNetwork, Field(discriminator="kind")]


class VMConfig(_Model):
    """Everything a driver needs to start one VM.

    `kernel_cmdline` is complete (the image's base arguments plus the sandbox's); drivers only add arguments their
    machine model requires (QEMU adds ``tsc_early_khz`` under TCG). `rootfs` is the VM's own writable disk: a qcow2
    overlay for QEMU or a raw copy for Firecracker; never the shared base image. `run_dir` must exist and be
    private to this VM: it holds the control socket, the pidfile, the console log and ``vm.json``.
    `memory_file` backs guest RAM with a shared file (QEMU): a snapshot then writes only device state.
    """

    vm_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    kernel: Path
    initrd: Path | None = None
    kernel_cmdline: str = ""
    rootfs: Path
    rootfs_format: DiskFormat = DiskFormat.QCOW2
    vcpus: int = Field(default=1, ge=1, le=64)
    memory_mb: int = Field(default=256, ge=64, le=262144)
    network: Network
    run_dir: Path
    memory_file: Path | None = None

    def save(self) -> Path:
        """Write this config as ``run_dir/vm.json`` (atomically) and return the path."""
        path = self.run_dir / CONFIG_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, run_dir: Path) -> VMConfig:
        """Read the config persisted by `save` in `run_dir`."""
        return cls.model_validate_json((run_dir / CONFIG_FILE).read_text())


class SnapshotInfo(_Model):
    """What `VM.save_snapshot` wrote, as `VMDriver.restore` needs it.

    `disk` is the VM's disk frozen at the snapshot: a restored VM's rootfs must show exactly this content — a
    qcow2 overlay backed by it (QEMU) or a copy of it (Firecracker). `memory_file` is set when the guest RAM
    stays in that file (QEMU with file-backed RAM) instead of inside `directory`.
    """

    directory: Path
    disk: Path | None = None
    memory_file: Path | None = None
