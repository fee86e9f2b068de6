"""Guest image boot benchmark: spawn -> envd ``GET /health`` 204 for built templates (``base`` on Debian's cloud
kernel, ``base-microvm`` on the kernel built from linux-source-6.1), through Wrenn's QEMU driver, interleaved in
the same run, plus where the time goes (the init's console milestones) and the init's own interpreter cost.

    .venv/bin/python -m bench.image_boot [--count 10] [--template base --template base-microvm] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from wrenn.agent.vmm import UserNetwork, VMConfig, wait_envd
from wrenn.agent.vmm.qemu import QemuDriver
from wrenn.images import GuestImage, ImageError, find_image

LIMIT = 180.0
_MILESTONE = re.compile(r"wrenn-init: \[([0-9.]+)\] (mounted|network up|envd started)")


@dataclass
class Samples:
    total: list[float] = field(default_factory=list)
    """spawn -> /health 204 (wall clock, host)"""
    init: list[float] = field(default_factory=list)
    """kernel start -> init has mounted (guest uptime): kernel boot, initramfs, python start"""
    envd_spawned: list[float] = field(default_factory=list)
    """kernel start -> envd spawned (guest uptime)"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _config(image: GuestImage, work: Path, vm_id: str) -> VMConfig:
    run = work / "run"
    run.mkdir(parents=True)
    disk = work / "disk.qcow2"
    create = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.rootfs), "-F", "raw", str(disk)]
    process = await asyncio.create_subprocess_exec(*create)
    if await process.wait() != 0:
        raise RuntimeError(f"qemu-img create failed for {disk}")
    return VMConfig(
        vm_id=vm_id,
        kernel=image.kernel,
        initrd=image.initrd,
        kernel_cmdline=f"{image.kernel_cmdline} wrenn.ip=169.254.0.21/30 wrenn.gw=169.254.0.22",
        rootfs=disk,
        vcpus=1,
        memory_mb=image.defaults.memory_mb,
        network=UserNetwork(host_port=_free_port()),
        run_dir=run,
    )


async def boot_once(image: GuestImage, work: Path, samples: Samples) -> None:
    config = await _config(image, work, "image-bench")
    assert isinstance(config.network, UserNetwork)
    port = config.network.host_port
    started = time.monotonic()
    vm = await QemuDriver(data_dir=work / "data").start(config)
    try:
        await wait_envd(f"127.0.0.1:{port}", limit=LIMIT)
        samples.total.append(time.monotonic() - started)
    finally:
        await vm.stop(grace=5)
    console = (config.run_dir / "console.log").read_text()
    found = {name: float(uptime) for uptime, name in _MILESTONE.findall(console)}
    if "mounted" in found:
        samples.init.append(found["mounted"])
    if "envd started" in found:
        samples.envd_spawned.append(found["envd started"])


async def interpreter_costs(image: GuestImage, work: Path) -> dict[str, float]:
    """Inside a booted guest: how long the init's interpreter start takes against a shell's (median of 5)."""
    config = await _config(image, work, "image-bench-init")
    assert isinstance(config.network, UserNetwork)
    port = config.network.host_port
    vm = await QemuDriver(data_dir=work / "data").start(config)
    commands = {
        "python3 -IS + the init's imports": "python3 -IS -c 'import ctypes, json, signal, socket, subprocess'",
        "sh (dash) + one `ip` call": "sh -c 'ip -V >/dev/null'",
    }
    out: dict[str, float] = {}
    try:
        await wait_envd(f"127.0.0.1:{port}", limit=LIMIT)
        os.environ["E2B_DEBUG"] = "true"
        os.environ["E2B_SANDBOX_URL"] = f"http://127.0.0.1:{port}"
        from e2b import Sandbox

        sandbox = await asyncio.to_thread(Sandbox.create)
        for label, command in commands.items():
            script = f"for i in 1 2 3 4 5; do s=$(date +%s%N); {command}; e=$(date +%s%N); echo $((e - s)); done"
            result = await asyncio.to_thread(sandbox.commands.run, script)
            out[label] = statistics.median(int(x) for x in result.stdout.split()) / 1e9
    finally:
        await vm.stop(grace=5)
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))]


def _row(label: str, values: list[float]) -> str:
    if not values:
        return f"| {label} | tcg | 0 | - | - | - |"
    p50, p95, p99 = (_pct(values, q) for q in (0.50, 0.95, 0.99))
    return f"| {label} | tcg | {len(values)} | {p50:.2f} | {p95:.2f} | {p99:.2f} |"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--template", action="append", default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--no-interpreter", action="store_true", help="skip the init interpreter comparison")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    images: dict[str, GuestImage] = {}
    for name in args.template or ["base", "base-microvm"]:
        try:
            images[name] = find_image(name, cache_dir=args.cache_dir)
        except ImageError as exc:
            print(f"skipping {name}: {exc.message}")
    samples = {name: Samples() for name in images}
    with tempfile.TemporaryDirectory(prefix="image-bench-") as tmp:
        for round_ in range(args.count):  # interleaved: a slow moment on the shared host hits every variant
            for name, image in images.items():
                await boot_once(image, Path(tmp) / f"{name}-{round_}", samples[name])
        costs = (
            {}
            if args.no_interpreter or "base" not in images
            else await interpreter_costs(images["base"], Path(tmp) / "interp")
        )
    uname = platform.uname()
    print(f"\nmachine: {uname.machine}, {os.cpu_count()} cores, host kernel {uname.release}; accelerator: TCG")
    print("| image | step | accel | n | p50 s | p95 s | p99 s |\n|---|---|---|---|---|---|---|")
    for name, sample in samples.items():
        image = images[name]
        print(_row(f"`{name}` | spawn → envd /health 204", sample.total))
        print(_row(f"`{name}` | kernel start → init mounted (guest uptime)", sample.init))
        print(_row(f"`{name}` | kernel start → envd spawned (guest uptime)", sample.envd_spawned))
        print(
            f"\n`{name}`: kernel {image.kernel_package}, rootfs {image.size_bytes >> 20} MiB "
            f"({image.allocated_bytes >> 20} MiB on disk), built in {image.build_seconds:.0f} s"
        )
    for label, seconds in costs.items():
        print(f"in a booted `base` guest (TCG), median of 5: {label}: {seconds:.3f} s")


if __name__ == "__main__":
    asyncio.run(main())
