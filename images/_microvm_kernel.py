"""The optional microVM kernel: built from Debian's ``linux-source-6.1`` with tinyconfig plus the few options a
Wrenn guest needs, every driver built in (no modules, no initramfs, no ACPI, no PCI).

qemu-notes.md measured it reaching /init in 1.5-1.7 s under TCG against 3.8-4.5 s for Debian's cloud kernel, and
halving QEMU's RSS; the price is a ~9 minute ``make -j2`` once per source version (cached in ``.kernels``).
It boots as an uncompressed ``vmlinux`` through the PVH entry; without ACPI, QEMU's microvm passes the virtio-mmio
devices as ``virtio_mmio.device=`` arguments (``acpi=off`` on the command line tells the driver so).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ._errors import BuildError
from ._kernel import publish
from ._run import Progress, run

SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
# random.trust_cpu=on: tinyconfig leaves RANDOM_TRUST_CPU off, and without it the crng is ready only ~3.7 s into a
# TCG boot, and every Python start (the init, envd) blocks in getrandom() until then (measured).
CMDLINE = (
    "console=ttyS0 quiet panic=-1 reboot=t acpi=off tsc=reliable random.trust_cpu=on root=/dev/vda rw rootfstype=ext4"
)

# Options on top of `make tinyconfig`. Each must survive `olddefconfig`, or the build fails naming it.
OPTIONS = """
CONFIG_64BIT=y
CONFIG_SMP=y
CONFIG_NR_CPUS=64
CONFIG_HYPERVISOR_GUEST=y
CONFIG_PARAVIRT=y
CONFIG_KVM_GUEST=y
CONFIG_PVH=y
CONFIG_PRINTK=y
CONFIG_PRINTK_TIME=y
CONFIG_MULTIUSER=y
CONFIG_SYSVIPC=y
CONFIG_POSIX_MQUEUE=y
CONFIG_FUTEX=y
CONFIG_EPOLL=y
CONFIG_SIGNALFD=y
CONFIG_TIMERFD=y
CONFIG_EVENTFD=y
CONFIG_SHMEM=y
CONFIG_AIO=y
CONFIG_ADVISE_SYSCALLS=y
CONFIG_MEMBARRIER=y
CONFIG_RSEQ=y
CONFIG_FHANDLE=y
CONFIG_POSIX_TIMERS=y
CONFIG_HIGH_RES_TIMERS=y
CONFIG_NO_HZ_IDLE=y
CONFIG_BINFMT_ELF=y
CONFIG_BINFMT_SCRIPT=y
CONFIG_TTY=y
CONFIG_UNIX98_PTYS=y
CONFIG_SERIAL_8250=y
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_RTC_CLASS=y
CONFIG_RTC_DRV_CMOS=y
CONFIG_BLOCK=y
CONFIG_BLK_DEV=y
CONFIG_VIRTIO_MENU=y
CONFIG_VIRTIO=y
CONFIG_VIRTIO_MMIO=y
CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y
CONFIG_VIRTIO_BLK=y
CONFIG_VIRTIO_CONSOLE=y
CONFIG_NETDEVICES=y
CONFIG_NET_CORE=y
CONFIG_VIRTIO_NET=y
CONFIG_NET=y
CONFIG_PACKET=y
CONFIG_UNIX=y
CONFIG_INET=y
CONFIG_VSOCKETS=y
CONFIG_VIRTIO_VSOCKETS=y
CONFIG_PROC_FS=y
CONFIG_PROC_SYSCTL=y
CONFIG_SYSFS=y
CONFIG_DEVTMPFS=y
CONFIG_DEVTMPFS_MOUNT=y
CONFIG_TMPFS=y
CONFIG_TMPFS_POSIX_ACL=y
CONFIG_EXT4_FS=y
CONFIG_EXT4_FS_POSIX_ACL=y
CONFIG_OVERLAY_FS=y
CONFIG_INOTIFY_USER=y
CONFIG_FILE_LOCKING=y
CONFIG_CGROUPS=y
"""


def wanted_options() -> dict[str, str]:
    return dict(line.split("=", 1) for line in OPTIONS.split() if line.startswith("CONFIG_"))


def source_version() -> str:
    """Installed version of Debian's kernel source package (empty when not installed)."""
    found = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE], check=False, capture_output=True, text=True
    )
    return found.stdout.strip() if found.returncode == 0 else ""


def kernel_key() -> str:
    digest = hashlib.sha256(f"{SOURCE_PACKAGE}={source_version()}\n{OPTIONS}".encode())
    return digest.hexdigest()[:16]


def kernel_name() -> str:
    """How the image key and the manifest name this kernel."""
    return f"microvm:{SOURCE_PACKAGE}={source_version() or 'not-installed'}:{kernel_key()}"


def build_microvm_kernel(store: Path, progress: Progress) -> Path:
    """``store/microvm-<key>/vmlinux``, built once (atomic rename; a failed build leaves nothing)."""
    if not SOURCE_TARBALL.exists():
        raise BuildError("kernel", f"{SOURCE_TARBALL} is missing: apt-get install {SOURCE_PACKAGE} bison flex bc")
    target = store / f"microvm-{kernel_key()}"
    if (target / "vmlinux").exists():
        return target
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="microvm-", dir=store) as tmp_name:
        tmp = Path(tmp_name)
        progress("kernel", f"unpacking {SOURCE_TARBALL.name}")
        run(["tar", "-C", str(tmp), "-xf", str(SOURCE_TARBALL)], step="kernel")
        source = next(p for p in tmp.iterdir() if p.is_dir())
        (source / "wrenn.config").write_text(OPTIONS)
        progress("kernel", "configuring: tinyconfig + wrenn.config")
        run(["make", "-s", "tinyconfig"], step="kernel", cwd=source)
        run(["scripts/kconfig/merge_config.sh", "-m", ".config", "wrenn.config"], step="kernel", cwd=source)
        run(["make", "-s", "olddefconfig"], step="kernel", cwd=source)
        config = (source / ".config").read_text().splitlines()
        missing = [f"{k}={v}" for k, v in wanted_options().items() if f"{k}={v}" not in config]
        if missing:
            raise BuildError("kernel", f"options dropped by olddefconfig: {' '.join(missing)}")
        progress("kernel", f"make -j{os.cpu_count() or 1} vmlinux (about 9 minutes on 2 cores)")
        # niced: the kernel build must not starve the VMs (and tests) already running on a shared host
        make = ["nice", "-n", "10", "make", f"-j{os.cpu_count() or 1}", "vmlinux"]
        run(make, step="kernel", cwd=source, progress=progress)
        built = tmp / "built"
        built.mkdir()
        shutil.copy(source / "vmlinux", built / "vmlinux")
        shutil.copy(source / ".config", built / "config")
        publish(built, target)
    return target
