"""Host resources per sandbox: what setting up and tearing down a network, a disk layer and a cgroup costs.

    .venv/bin/python -m bench.hostres [--count 50]

Needs root. Times, one at a time, under a private prefix and transit network (other agents untouched):

* ``net setup``     — namespace + veth + TAP + addresses + nft tables, verified (`NetworkManager.setup`);
* ``net setup (again)`` — the same on a slot that is complete (the idempotent re-check after an agent restart);
* ``net teardown``  — host link, tables, namespace, verified gone;
* ``qcow2 create`` / ``qcow2 remove`` — a 2 GiB overlay over a 256 MiB raw base;
* ``reflink create`` / ``reflink remove`` — the same as a reflinked raw copy on an XFS loop filesystem;
* ``cgroup create`` / ``cgroup remove`` — v1/v2 group with cpu, memory and pids limits.

No VM is started: this is the host-side share of a create; bench/agent_create.py times a whole create.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from wrenn.agent.cgroup import CgroupManager, Limits
from wrenn.agent.disk import DiskBackend, Qcow2Backend, ReflinkBackend
from wrenn.agent.network import AddressPlan, NetworkManager

MiB = 1024 * 1024


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _row(name: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    p50, p95, p99 = statistics.median(ms), _pct(ms, 0.95), _pct(ms, 0.99)
    return f"| {name:<18} | {len(ms):>5} | {p50:>8.2f} | {p95:>8.2f} | {p99:>8.2f} |"


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


async def _timed(fn: Callable[[], Awaitable[object]]) -> float:
    t = time.perf_counter()
    await fn()
    return time.perf_counter() - t


async def _network(count: int) -> dict[str, list[float]]:
    manager = NetworkManager(AddressPlan(prefix=f"hb{os.getpid() % 100000}", transit="10.199.0.0/24"))
    out: dict[str, list[float]] = {"net setup": [], "net setup (again)": [], "net teardown": []}
    try:
        for i in range(count):
            slot = i % 60
            out["net setup"].append(await _timed(partial(manager.setup, slot)))
            out["net setup (again)"].append(await _timed(partial(manager.setup, slot)))
            out["net teardown"].append(await _timed(partial(manager.teardown, slot)))
    finally:
        await manager.cleanup_stale(keep=())
    return out


async def _disk(name: str, backend: DiskBackend, directory: Path, count: int) -> dict[str, list[float]]:
    base = directory / "base.raw"
    with base.open("wb") as f:
        f.write(os.urandom(16 * MiB))
        f.truncate(256 * MiB)
    out: dict[str, list[float]] = {f"{name} create": [], f"{name} remove": []}
    for i in range(count):
        dest = directory / f"layer{i}"
        out[f"{name} create"].append(await _timed(partial(backend.create, base, dest, 2048 * MiB)))
        out[f"{name} remove"].append(await _timed(partial(backend.remove, dest)))
    return out


async def _cgroup(count: int) -> dict[str, list[float]]:
    manager = CgroupManager(f"wrennbench{os.getpid()}")
    out: dict[str, list[float]] = {"cgroup create": [], "cgroup remove": []}
    limits = Limits(vcpus=1, memory_mb=256)
    try:
        for i in range(count):
            out["cgroup create"].append(await _timed(partial(manager.create, f"b{i}", limits)))
            out["cgroup remove"].append(await _timed(partial(manager.remove, f"b{i}")))
    finally:
        await manager.cleanup_stale(keep=())
        await manager.aclose()
    return out


async def main(count: int) -> None:
    results: dict[str, list[float]] = {}
    results |= await _network(count)
    with tempfile.TemporaryDirectory() as tmp:
        results |= await _disk("qcow2", Qcow2Backend(), Path(tmp), count)
    with tempfile.TemporaryDirectory(prefix="wrenn-bench-xfs-") as tmp:
        image, mnt = Path(tmp) / "xfs.img", Path(tmp) / "mnt"
        mnt.mkdir()
        with image.open("wb") as f:
            f.truncate(1024 * MiB)
        await asyncio.to_thread(_sh, "mkfs.xfs", "-q", "-m", "reflink=1", str(image))
        await asyncio.to_thread(_sh, "mount", "-o", "loop", str(image), str(mnt))
        try:
            results |= await _disk("reflink", ReflinkBackend(), mnt, count)
        finally:
            await asyncio.to_thread(_sh, "umount", str(mnt))
    results |= await _cgroup(count)
    cpus = os.cpu_count()
    print(f"host resources, {count} rounds each, {platform.machine()} {cpus} CPUs, Python {platform.python_version()}")
    print("| step               | count |  p50 ms  |  p95 ms  |  p99 ms  |")
    print("|--------------------|-------|----------|----------|----------|")
    for name, samples in results.items():
        print(_row(name, samples))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    asyncio.run(main(parser.parse_args().count))
