"""The ``qemu-system-x86_64 -M microvm`` command line for a `VMConfig` (docs/vmm.md explains every flag)."""

from __future__ import annotations

from pathlib import Path

from wrenn.agent.vmm._config import UserNetwork, VMConfig
from wrenn.protocol.agent import Accelerator

QMP_SOCKET = "qmp.sock"
PIDFILE = "vmm.pid"
QMP_FD = 3
"""The fd QEMU finds its QMP socket on: bound and listening at `QMP_SOCKET` by the driver before the spawn."""
INCOMING_FD = 4
"""The fd of a restore's snapshot state, opened by the driver before the spawn and named in ``migrate-incoming``."""
CONSOLE_LOG = "console.log"
VMM_LOG = "vmm.log"
ROOTFS_DEVICE = "rootfs"


def host_tsc_khz(cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """The host's TSC frequency in kHz as /proc/cpuinfo states it ("cpu MHz"), or None when it says nothing."""
    for line in cpuinfo.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "cpu MHz":
            return round(float(value) * 1000)
    return None


def _machine(accel: Accelerator, file_backed: bool, acpi: bool) -> str:
    # With ACPI (the default) the guest finds the virtio-mmio devices in the DSDT: Debian's kernels need this,
    # they lack VIRTIO_MMIO_CMDLINE_DEVICES. A kernel built without ACPI says so with `acpi=off` on its command
    # line; QEMU then describes the devices there instead (virtio_mmio.device=...).
    opts = ["microvm", f"accel={accel.value}", f"acpi={'on' if acpi else 'off'}"]
    if file_backed:
        opts.append("memory-backend=mem")
    return ",".join(opts)


def wants_acpi(kernel_cmdline: str) -> bool:
    """Whether the guest kernel uses ACPI: yes unless its command line carries ``acpi=off``."""
    return "acpi=off" not in kernel_cmdline.split()


def _network_args(config: VMConfig) -> list[str]:
    net = config.network
    if isinstance(net, UserNetwork):
        # restrict=on: the guest reaches nothing beyond the VMM; only the loopback forward comes in.
        netdev = (
            f"user,id=net0,restrict=on,net=169.254.0.0/24,host={net.gateway_ip},dhcpstart=169.254.0.100,"
            f"hostfwd=tcp:127.0.0.1:{net.host_port}-{net.guest_ip}:{net.guest_port}"
        )
    else:
        netdev = f"tap,id=net0,ifname={net.tap},script=no,downscript=no"
    return ["-netdev", netdev, "-device", f"virtio-net-device,netdev=net0,mac={net.mac}"]


def build_argv(
    config: VMConfig,
    *,
    binary: str,
    accel: Accelerator,
    tsc_khz: int | None,
    memory_share: bool = True,
    incoming: bool = False,
    incoming_configuration: bool = True,
) -> list[str]:
    """The full argv that spawns `config`'s VMM, paused (-S), with QMP on fd `QMP_FD` (a listening socket).

    `incoming`: a restore — QEMU waits for ``migrate-incoming`` (``-incoming defer``: the stream is named only
    once QMP is negotiated, so no ``MIGRATION`` event can cut into the negotiation) and sends ``MIGRATION`` events
    from the start (no capability round trip). `incoming_configuration=False`: the stream is device state only
    (``xen-save-devices-state``), which has no configuration section; QEMU must not expect one. A TAP network's
    namespace is not part of the argv: the driver spawns the process inside it."""
    run = config.run_dir
    cmdline = config.kernel_cmdline
    if accel is Accelerator.TCG and tsc_khz:
        # Without it microvm under TCG hangs in early TSC calibration (qemu-notes.md: 4 of 4 boots hung).
        cmdline = f"{cmdline} tsc_early_khz={tsc_khz}".strip()
    argv = [
        binary,
        "-name",
        f"wrenn-{config.vm_id},debug-threads=on",
        "-M",
        _machine(accel, config.memory_file is not None, wants_acpi(config.kernel_cmdline)),
        "-cpu",
        "host" if accel is Accelerator.KVM else "max",
        "-smp",
        str(config.vcpus),
        "-m",
        f"{config.memory_mb}M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(config.kernel),
        "-append",
        cmdline,
    ]
    if config.initrd is not None:
        argv += ["-initrd", str(config.initrd)]
    if config.memory_file is not None:
        share = "on" if memory_share else "off"
        argv += [
            "-object",
            f"memory-backend-file,id=mem,size={config.memory_mb}M,mem-path={config.memory_file},share={share}",
        ]
    argv += [
        "-drive",
        f"id={ROOTFS_DEVICE},file={config.rootfs},format={config.rootfs_format.value},if=none,discard=unmap",
        "-device",
        f"virtio-blk-device,drive={ROOTFS_DEVICE}",
        *_network_args(config),
        "-chardev",
        f"file,id=console,path={run / CONSOLE_LOG}",
        "-serial",
        "chardev:console",
        "-chardev",
        f"socket,id=qmp,fd={QMP_FD},server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
        "-pidfile",
        str(run / PIDFILE),
        "-S",
    ]
    if incoming:
        argv += ["-incoming", "defer", "-global", "migration.x-events=on"]
        if not incoming_configuration:
            argv += ["-global", "migration.send-configuration=off"]
    return argv
