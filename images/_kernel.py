"""The guest kernel (Debian's cloud kernel, taken from its .deb without installing it) and the small busybox
initramfs that loads the virtio modules, mounts the ext4 root and hands over to the image's init.

Debian's kernel has its virtio drivers as modules, so an initramfs is needed; ext4 is built in. The modules are
loaded in dependency order (qemu-notes.md). Microvm's devices are found through ACPI, so QEMU runs with ACPI on.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ._errors import BuildError
from ._run import Progress, run

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "failover", "net_failover", "virtio_net")
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
GUEST_INIT_PATH = "/sbin/wrenn-init"
BASE_CMDLINE = "console=ttyS0 quiet panic=-1 reboot=t"

INITRAMFS_INIT = r"""#!/bin/busybox sh
# wrenn initramfs: load virtio modules, mount the root file system, switch to the image's init.
/bin/busybox mkdir -p /proc /sys /dev /newroot /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in MODULES; do insmod /lib/modules/$m.ko || echo "wrenn-initramfs: insmod $m failed"; done
root=/dev/vda
init=INIT
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    wrenn.root=*) root="${arg#wrenn.root=}" ;;
    wrenn.init=*) init="${arg#wrenn.init=}" ;;
  esac
done
tries=0
while [ ! -b "$root" ] && [ "$tries" -lt 500 ]; do usleep 10000; tries=$((tries + 1)); done
if ! mount -t ext4 -o rw,noatime "$root" /newroot; then
  echo "wrenn-initramfs: cannot mount $root; powering off"
  poweroff -f
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot "$init"
"""


@dataclass(frozen=True)
class KernelPackage:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}={self.version}"

    @classmethod
    def parse(cls, text: str) -> KernelPackage:
        name, _, version = text.partition("=")
        return cls(name, version)


def initramfs_script() -> str:
    return INITRAMFS_INIT.replace("MODULES", " ".join(MODULES)).replace("INIT", GUEST_INIT_PATH)


def guest_inputs_digest(init_source: bytes) -> str:
    """Digest of everything the builder puts into the boot path: initramfs script, module list, busybox, init."""
    digest = hashlib.sha256()
    for part in (initramfs_script().encode(), " ".join(MODULES).encode(), BASE_CMDLINE.encode(), init_source):
        digest.update(hashlib.sha256(part).digest())
    digest.update(hashlib.sha256(BUSYBOX.read_bytes()).digest() if BUSYBOX.exists() else b"no-busybox")
    return digest.hexdigest()


def resolve_kernel_package() -> KernelPackage:
    """The cloud kernel package the host's apt lists offer now (refreshes empty lists once)."""
    query = ["apt-cache", "depends", KERNEL_META_PACKAGE]
    found = subprocess.run(query, check=False, capture_output=True, text=True)
    if found.returncode != 0 or "Depends:" not in found.stdout:
        run(["apt-get", "update", "-qq"], step="kernel")
        found = subprocess.run(query, check=False, capture_output=True, text=True)
    names = [
        line.split(":", 1)[1].strip()
        for line in found.stdout.splitlines()
        if "Depends:" in line and "linux-image-" in line
    ]
    if not names:
        raise BuildError("kernel", f"apt knows no {KERNEL_META_PACKAGE}", query, found.stdout + found.stderr)
    show = ["apt-cache", "show", "--no-all-versions", names[0]]
    shown = subprocess.run(show, check=False, capture_output=True, text=True)
    versions = [line.split(":", 1)[1].strip() for line in shown.stdout.splitlines() if line.startswith("Version:")]
    if not versions:
        raise BuildError("kernel", f"apt has no version of {names[0]}", show, shown.stdout + shown.stderr)
    return KernelPackage(names[0], versions[0])


def fetch_kernel(package: KernelPackage, store: Path, progress: Progress) -> Path:
    """Download and unpack the kernel package once into ``store/<name>_<version>/`` (vmlinuz + modules)."""
    target = store / f"{package.name}_{package.version}"
    if (target / "vmlinuz").exists():
        return target
    progress("kernel", f"downloading {package}")
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kernel-", dir=store) as tmp_name:
        tmp = Path(tmp_name)
        run(["apt-get", "download", "-q", str(package)], step="kernel", cwd=tmp)
        deb = next(tmp.glob("linux-image-*.deb"))
        run(["dpkg-deb", "-x", str(deb), str(tmp / "deb")], step="kernel")
        unpacked = tmp / "unpacked"
        (unpacked / "modules").mkdir(parents=True)
        shutil.copy(next((tmp / "deb/boot").glob("vmlinuz-*")), unpacked / "vmlinuz")
        for module in MODULES:
            found = sorted((tmp / "deb/lib/modules").glob(f"*/kernel/**/{module}.ko"))
            if not found:
                raise BuildError("kernel", f"{package} has no module {module}.ko")
            shutil.copy(found[0], unpacked / "modules" / found[0].name)
        publish(unpacked, target)
    return target


def publish(folder: Path, target: Path) -> None:
    """Rename `folder` to `target` atomically; a concurrent build that got there first wins (same contents)."""
    try:
        os.replace(folder, target)
    except OSError:
        if not target.is_dir():
            raise


def build_initramfs(kernel_dir: Path, out: Path) -> None:
    """A gzip'd newc cpio: busybox, the virtio modules, /init and a /dev/console node."""
    if not BUSYBOX.exists():
        raise BuildError("initramfs", f"{BUSYBOX} is missing; install Debian's busybox-static")
    with tempfile.TemporaryDirectory(prefix="initramfs-", dir=out.parent) as tmp_name:
        root = Path(tmp_name)
        for sub in ("bin", "dev", "lib/modules", "proc", "sys", "newroot"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(BUSYBOX, root / "bin/busybox")
        for module in MODULES:
            shutil.copy(kernel_dir / "modules" / f"{module}.ko", root / "lib/modules")
        init = root / "init"
        init.write_text(initramfs_script())
        init.chmod(0o755)
        os.mknod(root / "dev/console", 0o600 | 0o020000, os.makedev(5, 1))
        listing = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
        archive = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=listing, check=True, capture_output=True
        ).stdout
    out.write_bytes(gzip.compress(archive, compresslevel=6))
