"""Boot benchmark: spawn -> envd ``/health`` 204 for a bare ``qemu-system-x86_64`` command line and for Wrenn's
QEMU driver, same image, same accelerator, same run (interleaved), plus host memory (PSS) per idle VM.

    .venv/bin/python -m bench.vm_boot [--count 10] [--accel tcg|kvm|auto]

The guest is the built `base` image when wrenn.images has one, else the tests' tiny guest (Debian cloud kernel
+ busybox initramfs). `bare_qemu_boot` is reusable: it returns one timing and the idle PSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from tests.agent.vmm.guest import TestGuest, build_tiny_guest, product_image
from wrenn.agent.vmm import SnapshotInfo, UserNetwork, VMConfig, wait_envd
from wrenn.agent.vmm.qemu import QemuDriver, host_tsc_khz
from wrenn.agent.vmm.qemu._accel import AcceleratorDetector
from wrenn.protocol.agent import Accelerator

GUEST_ARGS = "wrenn.ip=169.254.0.21/30 wrenn.gw=169.254.0.22"
LIMIT = 180.0


@dataclass(frozen=True)
class Boot:
    seconds: float
    pss_kib: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pss_kib(pid: int) -> int:
    """Proportional set size of `pid` from /proc/<pid>/smaps_rollup, in KiB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise ValueError(f"no Pss in smaps_rollup of {pid}")


def _overlay(base: Path, run: Path, base_format: str = "raw") -> Path:
    disk = run / "disk.qcow2"
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", base_format, str(disk)]
    subprocess.run(argv, check=True)
    return disk


async def bare_qemu_boot(guest: TestGuest, accel: Accelerator, run: Path) -> Boot:
    """One boot of the guest by a hand-written microvm command line: no QMP, no -S, no daemonize."""
    port = _free_port()
    cmdline = f"{guest.kernel_cmdline} {GUEST_ARGS}"
    khz = host_tsc_khz()
    if accel is Accelerator.TCG and khz:
        cmdline += f" tsc_early_khz={khz}"
    argv = [
        *(
            "qemu-system-x86_64",
            "-M",
            f"microvm,accel={accel.value}",
            "-cpu",
            "max" if accel is Accelerator.TCG else "host",
        ),
        *("-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"),
        *("-kernel", str(guest.kernel), "-append", cmdline),
        *(["-initrd", str(guest.initrd)] if guest.initrd else []),
        *("-drive", f"id=rootfs,file={_overlay(guest.rootfs, run)},format=qcow2,if=none"),
        *("-device", "virtio-blk-device,drive=rootfs"),
        *(
            "-netdev",
            f"user,id=n0,restrict=on,net=169.254.0.0/24,host=169.254.0.22,dhcpstart=169.254.0.100,"
            f"hostfwd=tcp:127.0.0.1:{port}-169.254.0.21:49983",
        ),
        *("-device", "virtio-net-device,netdev=n0", "-serial", f"file:{run / 'console.log'}"),
    ]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        await wait_envd(f"127.0.0.1:{port}", LIMIT)
        elapsed = time.monotonic() - started
        return Boot(elapsed, pss_kib(proc.pid))
    finally:
        proc.kill()
        await proc.wait()


async def driver_boot(driver: QemuDriver, guest: TestGuest, run: Path, vm_id: str) -> Boot:
    """One boot through `QemuDriver.start` (spawn, QMP, cont) until envd answers."""
    port = _free_port()
    config = _config(guest, run, vm_id, port)
    started = time.monotonic()
    vm = await driver.start(config)
    try:
        await wait_envd(f"127.0.0.1:{port}", LIMIT)
        elapsed = time.monotonic() - started
        return Boot(elapsed, pss_kib(vm.pid))
    finally:
        await vm.kill()
        await vm.aclose()


async def make_snapshot(driver: QemuDriver, guest: TestGuest, run: Path) -> SnapshotInfo:
    """Boot once with file-backed RAM, wait for envd, save a snapshot, stop; returns what was saved."""
    port = _free_port()
    config = _config(guest, run, "snapsrc", port, memory_file=run / "memory")
    vm = await driver.start(config)
    try:
        await wait_envd(f"127.0.0.1:{port}", LIMIT)
        info = await vm.save_snapshot(run / "snapshot")
    finally:
        await vm.stop()
        await vm.aclose()
    return info


async def restore_boot(driver: QemuDriver, guest: TestGuest, snapshot: SnapshotInfo, run: Path, vm_id: str) -> Boot:
    """One `QemuDriver.restore` from a file-backed snapshot (RAM mapped copy-on-write) until envd answers."""
    port = _free_port()
    config = _config(guest, run, vm_id, port, backing=snapshot.disk)
    started = time.monotonic()
    vm = await driver.restore(config, snapshot.directory)
    try:
        await wait_envd(f"127.0.0.1:{port}", LIMIT)
        elapsed = time.monotonic() - started
        return Boot(elapsed, pss_kib(vm.pid))
    finally:
        await vm.kill()
        await vm.aclose()


def _config(
    guest: TestGuest, run: Path, vm_id: str, port: int, memory_file: Path | None = None, backing: Path | None = None
) -> VMConfig:
    """A config whose disk is an overlay on the guest's base image, or on `backing` (a snapshot's frozen disk)."""
    return VMConfig(
        vm_id=vm_id,
        kernel=guest.kernel,
        initrd=guest.initrd,
        kernel_cmdline=f"{guest.kernel_cmdline} {GUEST_ARGS}",
        rootfs=_overlay(backing, run, "qcow2") if backing else _overlay(guest.rootfs, run),
        network=UserNetwork(host_port=port),
        run_dir=run,
        memory_file=memory_file,
    )


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: with 10 samples p95 and p99 are the maximum)."""
    ordered = sorted(values)
    rank = max(1, -(-int(p * len(ordered)) // 100))
    return ordered[min(len(ordered), rank) - 1]


def machine() -> str:
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return f"{platform.machine()}, {os.cpu_count()} cores, {model}, host kernel {platform.release()}, {qemu}"


def _row(name: str, accel: Accelerator, boots: list[Boot]) -> str:
    secs = [b.seconds for b in boots]
    pss = sorted(b.pss_kib for b in boots)[len(boots) // 2] / 1024
    return (
        f"| {name} | {accel.value} | {len(boots)} | {percentile(secs, 50):.2f} | {percentile(secs, 95):.2f} "
        f"| {percentile(secs, 99):.2f} | {pss:.0f} |"
    )


async def parallel_restores(
    driver: QemuDriver, guest: TestGuest, snapshot: SnapshotInfo, base: Path, clones: int
) -> tuple[float, list[Boot]]:
    """Restore `clones` VMs from one snapshot at once; (seconds until all answer, per-clone timings)."""
    runs = [base / f"par-{i}" for i in range(clones)]
    for run in runs:
        run.mkdir()
    started = time.monotonic()
    boots = await asyncio.gather(*(restore_boot(driver, guest, snapshot, run, f"p{i}") for i, run in enumerate(runs)))
    return time.monotonic() - started, list(boots)


async def main(count: int, accel_choice: str, clones: int) -> None:
    guest = product_image() or build_tiny_guest()
    data = Path(tempfile.mkdtemp(prefix="wrenn-bench-"))
    try:
        if accel_choice == "auto":
            cache = Path("/var/cache/wrenn-tests/accel")
            accel = (
                await AcceleratorDetector(binary="qemu-system-x86_64", cache_dir=cache).detect(guest.kernel)
            ).accelerator
        else:
            accel = Accelerator(accel_choice)
        driver = QemuDriver(data_dir=data, accelerator=accel)
        (data / "snapsrc").mkdir()
        snapshot = await make_snapshot(driver, guest, data / "snapsrc")
        results: dict[str, list[Boot]] = {"bare": [], "driver": [], "restore": []}
        for i in range(count):  # interleaved, so drift on a shared machine hits all alike
            for kind, out in results.items():
                run = data / f"{kind}-{i}"
                run.mkdir()
                if kind == "bare":
                    boot = await bare_qemu_boot(guest, accel, run)
                elif kind == "driver":
                    boot = await driver_boot(driver, guest, run, f"b{i}")
                else:
                    boot = await restore_boot(driver, guest, snapshot, run, f"r{i}")
                out.append(boot)
                print(f"  {kind:6} #{i}: {boot.seconds:.2f} s, PSS {boot.pss_kib / 1024:.0f} MiB", file=sys.stderr)
        all_ready, parallel = await parallel_restores(driver, guest, snapshot, data, clones) if clones else (0.0, [])
        print(f"machine: {machine()}")
        print(f"guest: kernel {guest.kernel}, initrd {guest.initrd}; 1 vCPU, 256 MiB; accelerator: {accel.value}")
        print("| variant | accel | n | p50 s | p95 s | p99 s | idle PSS MiB (median) |")
        print("|---|---|---|---|---|---|---|")
        print(_row("bare qemu-system-x86_64 (spawn -> envd 204)", accel, results["bare"]))
        print(_row("Wrenn QemuDriver.start (spawn -> envd 204)", accel, results["driver"]))
        print(_row("Wrenn QemuDriver.restore, file-backed RAM snapshot (spawn -> envd 204)", accel, results["restore"]))
        if parallel:
            print(_row(f"{clones} restores at once from one snapshot (per clone)", accel, parallel))
            print(f"\n{clones} clones restored in parallel: all answering after {all_ready:.2f} s ({accel.value})")
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--accel", choices=["auto", "tcg", "kvm"], default="auto")
    parser.add_argument("--clones", type=int, default=10, help="parallel restores from one snapshot (0: skip)")
    args = parser.parse_args()
    # Driver logs go to stderr so stdout carries only the table.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    asyncio.run(main(args.count, args.accel, args.clones))
