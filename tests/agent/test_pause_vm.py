"""Pause and resume with real microVMs (QEMU under TCG here) and the real envd: a counter process keeps counting from
where it was, a tmpfs file and a disk file survive, the id, address and token stay, the VMM is gone while paused,
repeated cycles work, a restarted agent resumes a paused sandbox, and SIGKILL of the agent mid-pause leaves the
sandbox resumable or explicitly failed — never gone. Needs root, QEMU and the built `base` image."""

# ruff: noqa: F811  (the agent e2e fixtures are imported by name, then requested as parameters)

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.agent.e2e_support import guest_image, read_file, run_command, write_file
from tests.agent.test_e2e import (  # noqa: F401 - fixtures
    TOKEN,
    AgentProcess,
    data_dir,
    manager,
    prefix,
    settings,
    sid,
)
from wrenn.agent import AgentImage, AgentRuntime, AgentSettings, SandboxManager
from wrenn.agent._processes import processes_mentioning
from wrenn.agent.pause import PAUSE_DIR, PAUSE_FILE, SNAPSHOT_DIR
from wrenn.protocol.agent import CreateSandbox, SandboxInfo, SandboxState

pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="module")
def image(data_dir: Path) -> tuple[AgentImage, bool]:
    """The built `base` image; when its sources changed since the last build (another engineer is rebuilding it),
    a copy of the newest build in the cache, so these tests do not depend on the image being current."""
    found, has_envd = guest_image()
    if has_envd:
        return found, True
    cache = Path(os.environ.get("WRENN_IMAGE_CACHE", "/var/cache/wrenn/images")) / "base"
    builds = sorted((d for d in cache.glob("*") if (d / "manifest.json").is_file()), key=lambda d: d.stat().st_mtime)
    if not builds:
        return found, False
    manifest = json.loads((builds[-1] / "manifest.json").read_text())
    into = data_dir / "image"
    into.mkdir(exist_ok=True)
    files = {
        name: Path(shutil.copy2(builds[-1] / manifest[name], into))
        for name in ("kernel", "initrd", "rootfs")
        if manifest.get(name)  # the microVM kernel boots without an initrd
    }
    return (
        AgentImage(
            template="base",
            kernel=files["kernel"],
            initrd=files.get("initrd"),
            rootfs=files["rootfs"],
            kernel_cmdline=manifest["kernel_cmdline"],
            key=manifest["key"],
        ),
        True,
    )


COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /dev/shm/counter; sleep 0.1; done"


async def start_counter(address: str) -> None:
    out, code = await run_command(
        address, "/bin/sh", ["-c", f"setsid sh -c '{COUNTER}' >/dev/null 2>&1 < /dev/null & echo started"], TOKEN
    )
    assert (out, code) == ("started\n", 0)


async def counter(address: str) -> int:
    """The guest counter's value; 0 before its first write."""
    headers = {"X-Access-Token": TOKEN, "Authorization": "Basic dXNlcjo="}
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"http://{address}/files", params={"path": "/dev/shm/counter"}, headers=headers)
    if response.status_code == 404:
        return 0
    assert response.status_code == 200, response.text
    return int(response.text.strip() or "0")


async def counter_moves(address: str, above: int, limit: float = 60) -> int:
    async with asyncio.timeout(limit):
        while (value := await counter(address)) <= above:  # noqa: ASYNC110 - polling the guest's state
            await asyncio.sleep(0.2)
    return value


def needs_envd(image: tuple[AgentImage, bool]) -> None:
    if not image[1]:
        pytest.skip("needs the built base image with envd (`wrenn image build base`)")


def vmm_running(data_dir: Path, sandbox_id: str) -> bool:
    return bool(processes_mentioning(str(data_dir / "sandboxes" / sandbox_id / "run") + "/"))


async def test_counter_files_and_identity_survive_ten_pause_resume_cycles(
    manager: SandboxManager, data_dir: Path, image: tuple[AgentImage, bool]
) -> None:
    needs_envd(image)
    info = await manager.create(CreateSandbox(sandbox_id=sid("p", 1), template="base", envd_access_token=TOKEN))
    address = info.envd_address
    try:
        await start_counter(address)
        await write_file(address, "/home/user/disk.txt", b"on the disk\n", TOKEN)
        await write_file(address, "/dev/shm/tmpfs.txt", b"in tmpfs\n", TOKEN)
        last = await counter_moves(address, 0)
        for cycle in range(10):
            before = await counter(address)
            paused = await manager.pause(info.sandbox_id)
            assert paused.state is SandboxState.PAUSED
            assert not vmm_running(data_dir, info.sandbox_id), "the VMM must be gone while paused"
            resumed, was_paused = await manager.resume(info.sandbox_id)
            assert was_paused
            assert (resumed.sandbox_id, resumed.envd_address) == (info.sandbox_id, address)
            after = await counter(address)
            assert after >= before, f"cycle {cycle}: counter went back from {before} to {after} (process restarted?)"
            assert after < before + 50, f"cycle {cycle}: counter jumped from {before} to {after}"
            last = await counter_moves(address, after)
        assert last > 0
        assert await read_file(address, "/home/user/disk.txt", TOKEN) == b"on the disk\n"
        assert await read_file(address, "/dev/shm/tmpfs.txt", TOKEN) == b"in tmpfs\n"
        out, code = await run_command(address, "/bin/sh", ["-c", "cat /home/user/disk.txt"], TOKEN)
        assert (out, code) == ("on the disk\n", 0)
        # The access token is unchanged: a request without it is refused, with it accepted.
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"http://{address}/files", params={"path": "/dev/shm/counter"})
        assert response.status_code == 401
    finally:
        await manager.destroy(info.sandbox_id)


async def test_a_disk_only_pause_keeps_what_was_just_written_and_boots_fresh(
    manager: SandboxManager, data_dir: Path, image: tuple[AgentImage, bool]
) -> None:
    """``memory=False``: no snapshot is taken, the VMM is gone while paused, and resume boots fresh on the
    sandbox's own disk. A file written a moment before the pause sits in the guest's page cache only (ext4 writes
    back after 30 s); it survives because envd flushes it first (``POST /sync``). RAM-only state does not."""
    needs_envd(image)
    info = await manager.create(CreateSandbox(sandbox_id=sid("p", 9), template="base", envd_access_token=TOKEN))
    address = info.envd_address
    try:
        await start_counter(address)
        await counter_moves(address, 0)
        await write_file(address, "/home/user/kept.txt", b"written just before the pause\n", TOKEN)
        paused = await manager.pause(info.sandbox_id, memory=False)
        assert paused.state is SandboxState.PAUSED
        assert not vmm_running(data_dir, info.sandbox_id), "the VMM must be gone while paused"
        pause_dir = data_dir / "sandboxes" / info.sandbox_id / PAUSE_DIR
        assert not (pause_dir / SNAPSHOT_DIR).exists(), "a disk-only pause takes no snapshot"
        resumed, was_paused = await manager.resume(info.sandbox_id)
        assert was_paused
        assert (resumed.sandbox_id, resumed.envd_address) == (info.sandbox_id, address)
        assert await read_file(address, "/home/user/kept.txt", TOKEN) == b"written just before the pause\n"
        assert await counter(address) == 0, "a fresh boot: the counter process and its tmpfs file are gone"
    finally:
        await manager.destroy(info.sandbox_id)


async def test_restarted_agent_resumes_a_paused_sandbox(
    settings: AgentSettings, data_dir: Path, image: tuple[AgentImage, bool]
) -> None:
    needs_envd(image)
    sandbox_id = sid("p", 2)
    async with AgentRuntime(settings) as runtime:
        info = await runtime.manager.create(
            CreateSandbox(sandbox_id=sandbox_id, template="base", envd_access_token=TOKEN)
        )
        await start_counter(info.envd_address)
        before = await counter_moves(info.envd_address, 0)
        await runtime.manager.pause(sandbox_id)
    async with AgentRuntime(settings) as runtime:
        try:
            assert runtime.manager.get(sandbox_id).state is SandboxState.PAUSED
            resumed, was_paused = await runtime.manager.resume(sandbox_id)
            assert was_paused
            assert await counter(resumed.envd_address) >= before
            await counter_moves(resumed.envd_address, before)
        finally:
            await runtime.manager.destroy(sandbox_id)


async def test_sigkill_of_the_agent_mid_pause_then_restart(
    settings: AgentSettings, data_dir: Path, image: tuple[AgentImage, bool], tmp_path: Path
) -> None:
    needs_envd(image)
    sandbox_id = sid("p", 3)
    agent = AgentProcess(settings, tmp_path / "agent.log")
    agent.start()
    try:
        await agent.wait_ready()
        async with httpx.AsyncClient(base_url=agent.url, timeout=300) as client:
            body = {"sandbox_id": sandbox_id, "template": "base", "envd_access_token": TOKEN}
            created = await client.post("/v1/sandboxes", json=body)
            assert created.status_code == 201, created.text
            address = SandboxInfo.model_validate(created.json()).envd_address
            await start_counter(address)
            before = await counter_moves(address, 0)
            pause = asyncio.create_task(client.post(f"/v1/sandboxes/{sandbox_id}/pause", json={"memory": True}))
            marker = data_dir / "sandboxes" / sandbox_id / PAUSE_DIR / PAUSE_FILE
            deadline = time.monotonic() + 60
            while not marker.exists():
                assert time.monotonic() < deadline, "the pause never began"
                await asyncio.sleep(0.002)
            agent.sigkill()
            with pytest.raises(httpx.TransportError):
                await pause
        agent.start()
        await agent.wait_ready()
        async with httpx.AsyncClient(base_url=agent.url, timeout=300) as client:
            got = await client.get(f"/v1/sandboxes/{sandbox_id}")
            assert got.status_code == 200, "the sandbox must never be silently gone"
            state = SandboxState(got.json()["state"])
            print(f"after SIGKILL mid-pause and restart: {state.value}")
            assert state in {SandboxState.RUNNING, SandboxState.PAUSED, SandboxState.FAILED}
            if state is SandboxState.FAILED:
                assert (data_dir / "sandboxes" / sandbox_id / "disk.qcow2").exists(), "files kept when failed"
            else:
                resumed = await client.post(f"/v1/sandboxes/{sandbox_id}/resume")
                assert resumed.status_code in {200, 201}, resumed.text
                assert await counter(address) >= before
                await counter_moves(address, before)
            assert (await client.delete(f"/v1/sandboxes/{sandbox_id}")).status_code == 204
    finally:
        agent.stop()


async def test_snapshot_of_a_running_sandbox_starts_independent_clones(
    manager: SandboxManager, image: tuple[AgentImage, bool]
) -> None:
    needs_envd(image)
    source = await manager.create(CreateSandbox(sandbox_id=sid("p", 4), template="base", envd_access_token=TOKEN))
    clones: list[str] = []
    try:
        await start_counter(source.envd_address)
        await write_file(source.envd_address, "/home/user/snap.txt", b"from the snapshot\n", TOKEN)
        before = await counter_moves(source.envd_address, 0)
        await manager.snapshot(source.sandbox_id, "vmsnapone")
        assert manager.get(source.sandbox_id).state is SandboxState.RUNNING
        await counter_moves(source.envd_address, before)  # the source keeps running
        for n in (5, 6):
            request = CreateSandbox(sandbox_id=sid("p", n), template="vmsnapone", envd_access_token=TOKEN)
            clone = await manager.create(request)
            clones.append(clone.sandbox_id)
            assert await read_file(clone.envd_address, "/home/user/snap.txt", TOKEN) == b"from the snapshot\n"
            start = await counter(clone.envd_address)
            assert start >= before, "the clone continues the snapshot's counter process"
            await counter_moves(clone.envd_address, start)
            await write_file(clone.envd_address, f"/home/user/clone{n}.txt", b"mine\n", TOKEN)
        out, _ = await run_command(source.envd_address, "/bin/sh", ["-c", "ls /home/user"], TOKEN)
        assert "clone" not in out, "clones are independent of their source"
        first = manager.get(clones[0]).envd_address
        out, _ = await run_command(first, "/bin/sh", ["-c", "ls /home/user"], TOKEN)
        assert "clone5.txt" in out
        assert "clone6.txt" not in out, "clones are independent of each other"
        await manager.snapshot(clones[0], "vmsnaptwo")  # a snapshot of a clone: its disk is flattened
    finally:
        for clone_id in clones:
            await manager.destroy(clone_id)
        await manager.destroy(source.sandbox_id)
    await manager.delete_snapshot("vmsnapone")  # the second snapshot must not depend on the first
    again = await manager.create(CreateSandbox(sandbox_id=sid("p", 7), template="vmsnaptwo", envd_access_token=TOKEN))
    try:
        assert await read_file(again.envd_address, "/home/user/snap.txt", TOKEN) == b"from the snapshot\n"
        assert await read_file(again.envd_address, "/home/user/clone5.txt", TOKEN) == b"mine\n"
    finally:
        await manager.destroy(again.sandbox_id)
    await manager.delete_snapshot("vmsnaptwo")
    assert manager.list_snapshots() == []


def vmm_rss_mib(data_dir: Path, sandbox_id: str) -> float:
    (pid,) = processes_mentioning(str(data_dir / "sandboxes" / sandbox_id / "run") + "/")
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


BUFFER_MIB = 192
BUFFER = (
    "import os; b = os.urandom(1 << 20); f = open('/dev/shm/buf', 'wb'); "
    f"[f.write(bytes([i % 251]) + b[1:]) for i in range({BUFFER_MIB})]; f.close()"
)
CHECKSUM = "import hashlib; print(hashlib.md5(open('/dev/shm/buf', 'rb').read()).hexdigest())"


async def test_a_1gib_guest_resumes_lazily_from_its_own_memory_file(
    manager: SandboxManager, data_dir: Path, image: tuple[AgentImage, bool]
) -> None:
    """A clone of a 1 GiB template dirties 192 MiB; its pause builds its own memory file, resume maps it shared and
    faults pages in on use: the VMM's RSS right after resume is far below the dirtied buffer, whose checksum in the
    guest is intact; the second pause writes device state only and references the same file."""
    needs_envd(image)
    request = CreateSandbox(sandbox_id=sid("p", 8), template="base", envd_access_token=TOKEN, memory_mb=1024)
    info = await manager.create(request)
    address = info.envd_address
    run = data_dir / "sandboxes" / info.sandbox_id / "run"
    try:
        out, code = await run_command(address, "python3", ["-c", BUFFER], TOKEN)
        assert code == 0, out
        checksum, code = await run_command(address, "python3", ["-c", CHECKSUM], TOKEN)
        assert code == 0, checksum
        await start_counter(address)
        before = await counter_moves(address, 0)
        await manager.pause(info.sandbox_id)
        own = run / "memory"
        assert own.stat().st_size == 1024 << 20
        assert own.stat().st_blocks * 512 < 1024 << 20, "sparse: only the template's data and the dirtied pages"
        assert own.stat().st_blocks * 512 > BUFFER_MIB << 20, "the dirtied buffer is in it"
        await manager.resume(info.sandbox_id)
        rss = vmm_rss_mib(data_dir, info.sandbox_id)
        assert rss < BUFFER_MIB * 3 / 4, f"resume faulted {rss:.0f} MiB in: RAM was loaded eagerly"
        assert await counter(address) >= before
        await counter_moves(address, before)
        assert await run_command(address, "python3", ["-c", CHECKSUM], TOKEN) == (checksum, 0), "buffer intact"
        assert vmm_rss_mib(data_dir, info.sandbox_id) > BUFFER_MIB, "reading the buffer faulted it in"
        await manager.pause(info.sandbox_id)  # now RAM is the sandbox's own file: device state only
        state = data_dir / "sandboxes" / info.sandbox_id / PAUSE_DIR / "snapshot" / "state"
        assert state.stat().st_size < 1 << 20
        manifest = json.loads((state.parent / "snapshot.json").read_text())
        assert manifest["memory_file"] == str(own)
        await manager.resume(info.sandbox_id)
        assert await run_command(address, "python3", ["-c", CHECKSUM], TOKEN) == (checksum, 0)
    finally:
        await manager.destroy(info.sandbox_id)
    assert not run.exists(), "the memory file goes with the sandbox"
