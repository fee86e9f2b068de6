"""A tiny test guest for the VMM tests: Debian's cloud kernel plus a busybox initramfs that answers like envd.

The real `base` image (wrenn.images) is used when it has been built; otherwise this guest stands in so the drivers
are tested against a real kernel booting in a real VMM. Its /init loads the virtio modules, configures eth0 from
``wrenn.ip=``/``wrenn.gw=`` like the image's init, and serves on port 49983 with busybox ``nc``: ``GET /health``
-> 204, ``GET /boot_id`` -> the kernel's boot id (a restored clone keeps its source's, a fresh boot gets a new
one), ``GET /write-<token>`` -> writes <token> at the start of /dev/vda and syncs (204), anything else -> 404.
Built once into /var/cache/wrenn-tests/vmm-guest/.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from wrenn.protocol.errors import WrennError

CACHE = Path(os.environ.get("WRENN_TEST_GUEST_CACHE", "/var/cache/wrenn-tests/vmm-guest"))
MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "failover", "net_failover", "virtio_net")
BASE_CMDLINE = "console=ttyS0 quiet panic=-1 reboot=t"

_INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# Debian's kernel finds microvm's virtio-mmio devices through ACPI once the modules are in.
for m in MODULES; do insmod /lib/modules/$m.ko; done
addr=169.254.0.21/30
gw=169.254.0.22
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    wrenn.ip=*) addr="${arg#wrenn.ip=}" ;;
    wrenn.gw=*) gw="${arg#wrenn.gw=}" ;;
  esac
done
ip link set lo up
ip addr add "$addr" dev eth0
ip link set eth0 up
ip route add default via "$gw"
echo "wrenn-test-guest: serving on $addr"
exec nc -ll -p 49983 -e /health.sh
"""

_HEALTH = r"""#!/bin/sh
read -r method path version
cr=$(printf '\r')
while read -r line; do
  case "$line" in ""|"$cr") break ;; esac
done
if [ "$method" = GET ] && [ "$path" = /health ]; then
  printf 'HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n'
elif [ "$method" = GET ] && [ "${path#/write-}" != "$path" ]; then
  printf %s "${path#/write-}" | dd of=/dev/vda bs=16 count=1 conv=notrunc,fsync 2>/dev/null
  sync
  printf 'HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n'
elif [ "$method" = GET ] && [ "$path" = /boot_id ]; then
  id=$(cat /proc/sys/kernel/random/boot_id)
  printf 'HTTP/1.1 200 OK\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' "${#id}" "$id"
else
  printf 'HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'
fi
"""


@dataclass(frozen=True)
class TestGuest:
    kernel: Path
    initrd: Path | None
    kernel_cmdline: str
    rootfs: Path
    """Raw base disk (read-only base; tests put a qcow2 overlay or a copy on top)."""
    boot_id_endpoint: bool = False
    """Whether the guest answers ``GET /boot_id`` on port 49983 (the tiny guest does, envd does not)."""


def _kernel_deb(workdir: Path) -> Path:
    cached = sorted(Path("/var/cache/apt/archives").glob("linux-image-*-cloud-amd64_*_amd64.deb"))
    if cached:
        return cached[-1]
    query = ["apt-cache", "depends", "linux-image-cloud-amd64"]
    found = subprocess.run(query, check=False, capture_output=True, text=True)
    if found.returncode != 0 or "Depends:" not in found.stdout:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)  # a fresh machine has no lists
        found = subprocess.run(query, check=True, capture_output=True, text=True)
    depends = found.stdout
    package = next(
        line.split(":", 1)[1].strip() for line in depends.splitlines() if "Depends:" in line and "linux-image-" in line
    )
    subprocess.run(["apt-get", "download", package], check=True, cwd=workdir, capture_output=True)
    return next(workdir.glob("linux-image-*.deb"))


def build_tiny_guest(cache: Path = CACHE) -> TestGuest:
    """Build (or reuse) the tiny guest; needs dpkg, cpio, busybox-static and qemu-img."""
    marker = cache / "ready-7"
    if marker.exists():
        return _guest_in(cache)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wrenn-guest-") as tmp_name:
        tmp = Path(tmp_name)
        deb = _kernel_deb(tmp)
        extracted = tmp / "deb"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(extracted)], check=True)
        shutil.copy(next((extracted / "boot").glob("vmlinuz-*")), cache / "vmlinuz")
        root = tmp / "root"
        for sub in ("bin", "dev", "lib/modules", "proc", "sys"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy("/bin/busybox", root / "bin/busybox")
        for module in MODULES:
            found = next(extracted.glob(f"lib/modules/*/kernel/**/{module}.ko"))
            shutil.copy(found, root / "lib/modules" / found.name)
        init = root / "init"
        init.write_text(_INIT.replace("MODULES", " ".join(MODULES)))
        (root / "health.sh").write_text(_HEALTH)
        for script in (init, root / "health.sh"):
            script.chmod(0o755)
        os.mknod(root / "dev/console", 0o600 | 0o020000, os.makedev(5, 1))
        listing = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
        archive = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=listing, check=True, capture_output=True
        ).stdout
        (cache / "initrd.gz").write_bytes(gzip.compress(archive))
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(cache / "rootfs.raw"), "16M"], check=True)
    marker.write_text("ok\n")
    return _guest_in(cache)


def _guest_in(cache: Path) -> TestGuest:
    return TestGuest(
        kernel=cache / "vmlinuz",
        initrd=cache / "initrd.gz",
        kernel_cmdline=BASE_CMDLINE,
        rootfs=cache / "rootfs.raw",
        boot_id_endpoint=True,
    )


def product_image() -> TestGuest | None:
    """The real `base` image when wrenn.images has built it, else None."""
    try:
        from wrenn.images import find_image
    except ImportError:
        return None
    try:
        image = find_image("base")
    except (LookupError, OSError, ValueError, WrennError):  # not built yet
        return None
    return TestGuest(
        kernel=Path(image.kernel),
        initrd=Path(image.initrd) if image.initrd is not None else None,
        kernel_cmdline=str(image.kernel_cmdline),
        rootfs=Path(image.rootfs),
    )
