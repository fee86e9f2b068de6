"""Pause/resume benchmark through the host agent (`SandboxManager.pause` / `.resume`) with real microVMs and envd.

For each guest size (default 256 MiB and 1 GiB; ``--sizes 256,1024,4096`` adds 4 GiB) and each amount of dirtied
guest memory (``little``: an idle guest; ``much``: 3/8 of the guest's RAM written with non-zero bytes into tmpfs),
it times ``pause`` (QMP stop, device state, the sandbox's memory file — built from the template's by the first
pause, synced by later ones —, disk freeze, VMM ended) and ``resume`` (a fresh VMM restored in the same namespace
on that memory file, to envd ``/health`` 204 and ``/init``), and reports the state and memory file sizes. Then
create-from-snapshot (a restore from the warm template) vs a cold boot, and the host memory (PSS) of sandboxes
restored from one template.

    .venv/bin/python -m bench.pause_resume [--cycles 5] [--sizes 256,1024] [--cold 3] [--clones 10]

Needs root, QEMU and the built `base` image. Bounded: every step has a time limit; everything is destroyed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import structlog

from bench.vm_boot import pss_kib
from tests.agent.e2e_support import guest_image, images_file, run_command
from wrenn.agent import AgentImage, AgentRuntime, AgentSettings, SandboxManager
from wrenn.agent._processes import kill_processes_mentioning
from wrenn.agent.pause import PAUSE_DIR, SNAPSHOT_DIR, STATE_FILE
from wrenn.protocol.agent import CreateSandbox

TOKEN = "bench-token"
LIMIT = float(os.environ.get("BENCH_LIMIT", "600"))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _row(name: str, values: list[float], extra: str = "") -> str:
    if not values:
        return f"| {name} | 0 | - | - | - | - | {extra} |"
    p50, p95, p99 = (_pct(values, q) * 1000 for q in (50, 95, 99))
    mean = statistics.mean(values) * 1000
    return f"| {name} | {len(values)} | {p50:.0f} | {p95:.0f} | {p99:.0f} | {mean:.0f} | {extra} |"


def _base_image(into: Path) -> AgentImage:
    """The built `base` image, copied into the run's own directory (the shared image cache may be rebuilt or
    pruned while the benchmark runs). Falls back to the newest build in the cache when its inputs moved on."""
    image, has_envd = guest_image()
    if not has_envd:
        cache = Path(os.environ.get("WRENN_IMAGE_CACHE", "/var/cache/wrenn/images")) / "base"
        builds = sorted(
            (d for d in cache.glob("*") if (d / "manifest.json").is_file()), key=lambda d: d.stat().st_mtime
        )
        if not builds:
            raise SystemExit("needs the built base image with envd (`wrenn image build base`)")
        manifest = json.loads((builds[-1] / "manifest.json").read_text())
        image = AgentImage(
            template="base",
            kernel=builds[-1] / manifest["kernel"],
            initrd=builds[-1] / manifest["initrd"] if manifest.get("initrd") else None,
            rootfs=builds[-1] / manifest["rootfs"],
            kernel_cmdline=manifest["kernel_cmdline"],
            key=manifest["key"],
        )
    into.mkdir(parents=True)
    initrd = None if image.initrd is None else Path(shutil.copy2(image.initrd, into / image.initrd.name))
    return dataclasses.replace(
        image,
        kernel=Path(shutil.copy2(image.kernel, into / image.kernel.name)),
        initrd=initrd,
        rootfs=Path(shutil.copy2(image.rootfs, into / image.rootfs.name)),
    )


def _sid(prefix: str, n: int) -> str:
    return f"{prefix}{n:0{20 - len(prefix)}d}"


async def _dirty(address: str, mib: int) -> None:
    chunks = max(1, mib // 16)
    script = (
        "python3 -c \"import sys; b = bytes(range(256)) * (1 << 16); f = open('/dev/shm/fill', 'wb'); "
        f'[f.write(b) for _ in range({chunks})]; f.close()" && echo ok || df -m /dev/shm'
    )
    out, code = await run_command(address, "/bin/sh", ["-c", script], TOKEN)
    assert (out.strip(), code) == ("ok", 0), (out, code)


async def _cycles(
    manager: SandboxManager, data: Path, sandbox_id: str, cycles: int
) -> tuple[list[float], list[float], int, int]:
    """Pause/resume `cycles` times; returns pause and resume times, the state file's size and the data held by the
    sandbox's own memory file (QEMU: ``run/memory``, built by the first pause of a sandbox made from a template)."""
    pauses: list[float] = []
    resumes: list[float] = []
    state_bytes = 0
    memory_bytes = 0
    for _ in range(cycles):
        started = time.perf_counter()
        await manager.pause(sandbox_id)
        pauses.append(time.perf_counter() - started)
        state = data / "sandboxes" / sandbox_id / PAUSE_DIR / SNAPSHOT_DIR / STATE_FILE
        state_bytes = state.stat().st_size if state.exists() else 0
        memory = data / "sandboxes" / sandbox_id / "run" / "memory"
        memory_bytes = memory.stat().st_blocks * 512 if memory.exists() else 0
        started = time.perf_counter()
        await manager.resume(sandbox_id)
        resumes.append(time.perf_counter() - started)
    return pauses, resumes, state_bytes, memory_bytes


def _load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


async def run(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    data = Path(tempfile.mkdtemp(prefix="wpb-", dir="/tmp"))
    image = _base_image(data / "image")
    settings = AgentSettings(
        data_dir=data,
        images_file=images_file(image, data),
        envd_ready_limit=LIMIT,
        restore_ready_limit=LIMIT,
        resource_prefix=f"wb{secrets.token_hex(2)}",
        transit_cidr=f"10.{190 + secrets.randbelow(10)}.0.0/16",
    )
    rows: list[str] = []
    try:
        async with asyncio.timeout(args.limit), AgentRuntime(settings) as runtime:
            manager = runtime.manager
            n = 0
            for size in args.sizes:
                for dirt in ("little", "much"):
                    n += 1
                    sandbox_id = _sid("b", n)
                    await manager.create(
                        CreateSandbox(sandbox_id=sandbox_id, template="base", memory_mb=size, envd_access_token=TOKEN)
                    )
                    try:
                        info = manager.get(sandbox_id)
                        if dirt == "much":
                            await _dirty(info.envd_address, size * 3 // 8)
                        load = _load()
                        pauses, resumes, state, memory = await _cycles(manager, data, sandbox_id, args.cycles)
                    finally:
                        await manager.destroy(sandbox_id)
                    label = f"{size} MiB, {dirt} dirtied"
                    files = f"state file {state / 2**20:.2f} MiB, memory file data {memory / 2**20:.0f} MiB; {load}"
                    rows.append(_row(f"first pause, {label}", pauses[:1], "builds the sandbox's memory file"))
                    rows.append(_row(f"pause, {label}", pauses[1:], files))
                    rows.append(_row(f"resume, {label}", resumes, "to envd /health + /init"))
            # create from the warm snapshot vs cold boot (same image, same size)
            restores: list[float] = []
            for i in range(args.cold):
                sandbox_id = _sid("r", i)
                started = time.perf_counter()
                await manager.create(CreateSandbox(sandbox_id=sandbox_id, template="base", memory_mb=256))
                restores.append(time.perf_counter() - started)
                await manager.destroy(sandbox_id)
            rows.append(_row("create from snapshot (256 MiB)", restores, f"restore + envd /init; {_load()}"))
            # host memory of N clones restored from one template
            clones = [_sid("m", i) for i in range(args.clones)]
            started = time.perf_counter()
            await asyncio.gather(
                *(manager.create(CreateSandbox(sandbox_id=c, template="base", memory_mb=256)) for c in clones)
            )
            clone_seconds = time.perf_counter() - started
            try:
                pss = [pss_kib(pid) for c in clones if (pid := manager.vmm_pid(c)) is not None]
            finally:
                await asyncio.gather(*(manager.destroy(c) for c in clones))
            rows.append(
                f"| host memory, {len(pss)} idle clones of one 256 MiB template | {len(pss)} | PSS total "
                f"{sum(pss) / 1024:.0f} MiB | per clone {statistics.mean(pss) / 1024:.0f} MiB | - | - | "
                f"all created at once in {clone_seconds:.0f} s; {_load()} |"
            )
        cold_settings = settings.model_copy(update={"warm_templates": False})
        colds: list[float] = []
        async with asyncio.timeout(args.limit), AgentRuntime(cold_settings) as runtime:
            for i in range(args.cold):
                sandbox_id = _sid("c", i)
                started = time.perf_counter()
                await runtime.manager.create(CreateSandbox(sandbox_id=sandbox_id, template="base", memory_mb=256))
                colds.append(time.perf_counter() - started)
                await runtime.manager.destroy(sandbox_id)
        rows.append(_row("create by cold boot (256 MiB)", colds, f"boot + envd /init; {_load()}"))
        if restores and colds:
            rows.append(
                f"| cold boot / create-from-snapshot (p50) | | {_pct(colds, 50) / _pct(restores, 50):.1f}x | | | | |"
            )
    finally:
        kill_processes_mentioning(str(data) + "/")
        shutil.rmtree(data, ignore_errors=True)
    print(
        f"\nmachine: {platform.node()}, {os.cpu_count()} cores, {platform.machine()}, accelerator TCG (no usable KVM)"
    )
    print(f"image: base ({image.key[:12]}), cycles per size: {args.cycles} (first pause listed on its own)\n")
    print("| what | n | p50 ms | p95 ms | p99 ms | mean ms | note |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[256, 1024])
    parser.add_argument("--cold", type=int, default=3)
    parser.add_argument("--clones", type=int, default=10)
    parser.add_argument("--limit", type=float, default=1800.0, help="seconds for the whole run")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
