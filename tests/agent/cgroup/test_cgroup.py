"""Sandbox cgroups on the real hierarchy: limits written, a process placed, usage read, removal kills stragglers,
stale cleanup. Run for each cgroup version the host offers; the other skips with the reason."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from wrenn.agent.cgroup import (
    VMM_OVERHEAD_CPU_PCT,
    VMM_OVERHEAD_MB,
    CgroupManager,
    CgroupUnavailable,
    CgroupVersion,
    CgroupWriteFailed,
    Limits,
    detect,
)

ROOT = Path("/sys/fs/cgroup")
pytestmark = pytest.mark.root


def host_version() -> CgroupVersion | None:
    try:
        return detect(ROOT)
    except CgroupUnavailable:
        return None


@pytest.fixture(params=[CgroupVersion.V1, CgroupVersion.V2], ids=["v1", "v2"])
async def cgroups(request: pytest.FixtureRequest) -> AsyncIterator[CgroupManager]:
    wanted: CgroupVersion = request.param
    found = host_version()
    if found is not wanted:
        pytest.skip(f"host offers cgroup {found.name if found else 'none'} (controllers: {ROOT}), not {wanted.name}")
    manager = CgroupManager(f"wrenntest{os.getpid()}", root=ROOT)
    yield manager
    await manager.cleanup_stale(keep=())
    await manager.aclose()
    assert not any(p.exists() for p in manager.hierarchy.parents())


@pytest.fixture
async def sleeper() -> AsyncIterator[asyncio.subprocess.Process]:
    # Touches 32 MiB once told to (a line on stdin), so the memory is charged to whatever group it is in by then.
    script = "import sys, time; sys.stdin.readline(); b = bytearray(32 << 20); time.sleep(300)"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdin=asyncio.subprocess.PIPE)
    yield proc
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
    assert proc.stdin is not None
    proc.stdin.close()
    await proc.stdin.wait_closed()


def test_detect_reads_the_host() -> None:
    version = host_version()
    v2 = (ROOT / "cgroup.controllers").exists()
    assert version is (CgroupVersion.V2 if v2 else CgroupVersion.V1)


def test_detect_without_hierarchies(tmp_path: Path) -> None:
    with pytest.raises(CgroupUnavailable):
        detect(tmp_path)


def test_limits_add_vmm_overhead() -> None:
    limits = Limits(vcpus=2, memory_mb=512)
    assert limits.memory_bytes == (512 + VMM_OVERHEAD_MB) * 1024 * 1024
    assert limits.cpu_quota_us == 200_000 + VMM_OVERHEAD_CPU_PCT * 1000
    assert Limits(vcpus=2, memory_mb=512, vmm_overhead_cpu_pct=0).cpu_quota_us == 200_000


async def test_create_place_usage_remove(cgroups: CgroupManager, sleeper: asyncio.subprocess.Process) -> None:
    limits = Limits(vcpus=2, memory_mb=256, pids_max=64)
    group = await cgroups.create("sbx1", limits)
    for path, value in cgroups.hierarchy.settings("sbx1", limits).items():
        assert path.read_text().split()[0] == value.split()[0]
    await group.placement(sleeper.pid)
    assert await group.pids() == {sleeper.pid}
    assert sleeper.stdin is not None
    sleeper.stdin.write(b"go\n")
    for _ in range(1000):  # poll for the charge to appear (bounded: 10 s)
        usage = await group.usage()
        if usage.memory_bytes > 32 << 20:
            break
        await asyncio.sleep(0.01)
    assert usage.pids == 1
    assert usage.memory_bytes > 32 << 20
    again = await cgroups.create("sbx1", limits)  # idempotent: same group, process still in it
    assert await again.pids() == {sleeper.pid}
    await cgroups.remove("sbx1")  # kills the straggler first
    assert await sleeper.wait() == -9
    assert not any(p.exists() for p in group.paths)
    await cgroups.remove("sbx1")  # idempotent


async def test_pids_limit_is_enforced(cgroups: CgroupManager) -> None:
    group = await cgroups.create("sbxpids", Limits(vcpus=1, memory_mb=64, pids_max=8))
    script = (
        "import os, sys, time\n"
        "kids = []\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        print(len(kids)); sys.stdout.flush(); time.sleep(60)\n"
        "    if pid == 0:\n"
        "        time.sleep(60); os._exit(0)\n"
        "    kids.append(pid)\n"
        "print('unlimited'); sys.stdout.flush(); time.sleep(60)\n"
    )
    # Start it stopped until it is in the group: read a line from a pipe first.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        f"import sys; sys.stdin.readline()\n{script}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        await group.add(proc.pid)
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
        assert line == "7"  # 8 tasks in all: the parent and 7 children
    finally:
        await cgroups.remove("sbxpids")
        await proc.wait()
        proc.stdin.close()
        await proc.stdin.wait_closed()


async def test_cleanup_stale_keeps_listed(cgroups: CgroupManager, sleeper: asyncio.subprocess.Process) -> None:
    limits = Limits(vcpus=1, memory_mb=64)
    kept = await cgroups.create("keep", limits)
    stale = await cgroups.create("stale", limits)
    await stale.add(sleeper.pid)
    assert await cgroups.cleanup_stale(keep={"keep"}) == ["stale"]
    assert await cgroups.names() == {"keep"}
    assert all(p.exists() for p in kept.paths)
    assert await sleeper.wait() == -9


async def test_bad_names_rejected(cgroups: CgroupManager) -> None:
    with pytest.raises(CgroupWriteFailed):
        await cgroups.create("../escape", Limits(vcpus=1, memory_mb=64))


@pytest.mark.parametrize("version", [CgroupVersion.V1, CgroupVersion.V2])
async def test_layout_on_a_stand_in_tree(tmp_path: Path, version: CgroupVersion) -> None:
    """The files each version writes, on a plain directory standing in for /sys/fs/cgroup (the kernel's side —
    enforcing them — is what the tests above check on the real hierarchy)."""
    if version is CgroupVersion.V2:
        (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
        (tmp_path / "cgroup.subtree_control").write_text("")
        (tmp_path / "wrenn").mkdir()
        (tmp_path / "wrenn" / "cgroup.subtree_control").write_text("")
    else:
        for controller in ("cpu", "memory", "pids"):
            (tmp_path / controller).mkdir()
            (tmp_path / controller / "cgroup.procs").write_text("")
    manager = CgroupManager("wrenn", root=tmp_path)
    assert manager.version is version
    await manager.create("sbx", Limits(vcpus=2, memory_mb=100, pids_max=99))
    memory = str((100 + VMM_OVERHEAD_MB) * 1024 * 1024)
    if version is CgroupVersion.V2:
        group = tmp_path / "wrenn" / "sbx"
        assert (group / "cpu.max").read_text() == f"{200000 + VMM_OVERHEAD_CPU_PCT * 1000} 100000"
        assert (group / "memory.max").read_text() == memory
        assert (group / "pids.max").read_text() == "99"
        assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    else:
        quota = str(200000 + VMM_OVERHEAD_CPU_PCT * 1000)
        assert (tmp_path / "cpu" / "wrenn" / "sbx" / "cpu.cfs_quota_us").read_text() == quota
        assert (tmp_path / "memory" / "wrenn" / "sbx" / "memory.limit_in_bytes").read_text() == memory
        assert (tmp_path / "pids" / "wrenn" / "sbx" / "pids.max").read_text() == "99"
    assert await manager.names() == {"sbx"}


async def test_adding_a_member_again_writes_nothing(tmp_path: Path) -> None:
    """`add` is idempotent without a write: a cgroup v1 move costs an RCU grace period even for a task already
    inside, so a placement made again (a retried step) must not pay it twice."""
    for controller in ("cpu", "memory", "pids"):
        (tmp_path / controller).mkdir()
        (tmp_path / controller / "cgroup.procs").write_text("")
    manager = CgroupManager("wrenn", root=tmp_path)
    group = await manager.create("sbx", Limits(vcpus=1, memory_mb=100, pids_max=99))
    procs = [path / "cgroup.procs" for path in group.paths]
    for path in procs:
        path.write_text("4242\n")
    before = [os.stat(path).st_mtime_ns for path in procs]
    await group.add(4242)
    assert [os.stat(path).st_mtime_ns for path in procs] == before, "no write for a pid already inside"
    assert [path.read_text() for path in procs] == ["4242\n"] * len(procs)
    await group.add(4343)
    assert [path.read_text() for path in procs] == ["4343"] * len(procs), "a new pid is written"
