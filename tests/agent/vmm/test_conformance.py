"""The conformance suite every VMM driver passes (containerd's snapshotter-suite idea): the contract in
`wrenn.agent.vmm._interface`, exercised against real VMMs booting a real guest kernel.

Runs against the fake driver (`wrenn.agent.vmm.fake`: no VM, the one the host agent's tests use), against QEMU
here (TCG; user-mode networking, and TAP in a throwaway netns when root) and against Firecracker where its binary
exists and /dev/kvm runs guests (skipped with the reason otherwise).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from tests.agent.vmm.conftest import (
    Harness,
    alive,
    disk_head,
    no_process_mentions,
    recording_placement,
    state_of,
)
from wrenn.agent.vmm import AdoptFailed, SnapshotInfo, StartFailed, VMState, VMStateError

pytestmark = pytest.mark.timeout(900)  # the vm/root/firecracker markers sit on the driver params

CONTROL_FILES = ("qmp.sock", "api.sock", "vmm.pid")


def assert_nothing_left(run_dir: Path, pid: int | None = None) -> None:
    if pid is not None:
        assert not alive(pid), f"VMM {pid} still runs"
    assert no_process_mentions(str(run_dir)), f"a process still refers to {run_dir}"
    for name in CONTROL_FILES:
        assert not (run_dir / name).exists(), f"{name} left in {run_dir}"


async def test_start_health_stop(vmm: Harness) -> None:
    placed: list[int] = []
    config = vmm.config()
    vm = vmm.track(await vmm.driver.start(config, placement=recording_placement(placed)))
    assert state_of(vm) is VMState.RUNNING
    assert placed, "placement must be called"
    assert placed[-1] == vm.pid, "...last with the VMM's pid (earlier calls may name the process it forks from)"
    assert len(placed) <= 2, "at most one early call"
    await vmm.wait_envd(config)
    assert state_of(vm) is VMState.RUNNING
    await vm.stop(grace=5)
    assert state_of(vm) is VMState.STOPPED
    assert await vm.wait_exited() is VMState.STOPPED
    assert_nothing_left(config.run_dir, vm.pid)
    await vm.stop()  # idempotent
    await vm.kill()
    assert state_of(vm) is VMState.STOPPED


async def test_kill(vmm: Harness) -> None:
    config = vmm.config()
    vm = vmm.track(await vmm.driver.start(config))
    await vm.kill()
    assert state_of(vm) is VMState.STOPPED
    assert_nothing_left(config.run_dir, vm.pid)


async def test_unasked_exit_is_a_crash(vmm: Harness) -> None:
    config = vmm.config()
    vm = vmm.track(await vmm.driver.start(config))
    os.kill(vm.pid, signal.SIGKILL)
    async with asyncio.timeout(30):
        assert await vm.wait_exited() is VMState.CRASHED
    assert_nothing_left(config.run_dir, vm.pid)
    with pytest.raises(VMStateError, match="crashed, needs to be running"):
        await vm.pause()


async def test_adopt_after_agent_restart(vmm: Harness) -> None:
    config = vmm.config()
    first = await vmm.driver.start(config)
    pid = first.pid
    await vmm.wait_envd(config)
    await first.aclose()  # the agent goes away; the VMM must not
    assert alive(pid)
    with pytest.raises(VMStateError, match="detached"):
        await first.stop()

    restarted = vmm.make_driver()
    vm = vmm.track(await restarted.adopt(config.run_dir))
    assert vm.pid == pid
    assert state_of(vm) is VMState.RUNNING
    assert vm.config == config
    await vmm.wait_envd(config, limit=30)
    await vm.stop(grace=5)
    assert state_of(vm) is VMState.STOPPED
    assert_nothing_left(config.run_dir, pid)
    with pytest.raises(AdoptFailed):
        await restarted.adopt(config.run_dir)


async def test_adopt_refuses_a_reused_pid(vmm: Harness) -> None:
    config = vmm.config()
    config.save()
    (config.run_dir / "vmm.pid").write_text(f"{os.getpid()}\n")  # alive, but not a VMM of this run dir
    with pytest.raises(AdoptFailed, match="no live"):
        await vmm.driver.adopt(config.run_dir)


async def test_start_failure_missing_kernel(vmm: Harness) -> None:
    config = vmm.config().model_copy(update={"kernel": Path("/nonexistent/vmlinuz")})
    with pytest.raises(StartFailed, match="kernel /nonexistent/vmlinuz"):
        await vmm.driver.start(config)
    assert_nothing_left(config.run_dir)


async def test_start_failure_bad_rootfs(vmm: Harness) -> None:
    config = vmm.config()
    config.rootfs.write_bytes(b"this is not a disk image")
    if vmm.name == "firecracker":
        config.rootfs.unlink()  # a raw image cannot be malformed; a missing one can
    with pytest.raises(StartFailed) as caught:
        await vmm.driver.start(config)
    assert caught.value.detail or caught.value.reason
    assert_nothing_left(config.run_dir)


async def test_failing_placement_rolls_back(vmm: Harness) -> None:
    config = vmm.config()
    seen: list[int] = []

    async def placement(pid: int) -> None:
        seen.append(pid)
        raise PermissionError("cgroup.procs: permission denied")

    with pytest.raises(PermissionError, match=r"cgroup\.procs"):  # its own error, not a StartFailed
        await vmm.driver.start(config, placement=placement)
    assert len(seen) == 1, "placed once, with the VMM's own pid, then rolled back"
    assert_nothing_left(config.run_dir, seen[0])


async def test_concurrent_starts(vmm: Harness) -> None:
    configs = [vmm.config() for _ in range(3)]
    vms = await asyncio.gather(*(vmm.driver.start(c) for c in configs))
    for vm in vms:
        vmm.track(vm)
    assert len({vm.pid for vm in vms}) == 3
    await asyncio.gather(*(vmm.wait_envd(c) for c in configs))
    boot_ids = [await vmm.boot_id(c) for c in configs]
    if vmm.has_boot_id:
        assert len(set(boot_ids)) == 3, "separate boots have separate boot ids"
    await asyncio.gather(*(vm.stop(grace=5) for vm in vms))
    for vm, config in zip(vms, configs, strict=True):
        assert state_of(vm) is VMState.STOPPED
        assert_nothing_left(config.run_dir, vm.pid)


async def test_pause_resume(vmm: Harness) -> None:
    config = vmm.config()
    vm = vmm.track(await vmm.driver.start(config))
    await vmm.wait_envd(config)
    await vm.pause()
    assert state_of(vm) is VMState.PAUSED
    with pytest.raises(VMStateError, match="paused, needs to be running"):
        await vm.pause()
    await vm.resume()
    assert state_of(vm) is VMState.RUNNING
    await vmm.wait_envd(config, limit=30)
    await vm.stop(grace=5)


@pytest.mark.parametrize("file_backed", [False, True], ids=["streamed-ram", "file-backed-ram"])
async def test_snapshot_restore(vmm: Harness, file_backed: bool) -> None:
    if file_backed and vmm.name == "firecracker":
        pytest.skip("file-backed RAM at boot is QEMU-only")
    source = vmm.config(memory_file=file_backed)
    vm = vmm.track(await vmm.driver.start(source))
    await vmm.wait_envd(source)
    if vmm.writes_disk:
        await vmm.write_disk(source, "before-snapshot")
    source_boot = await vmm.boot_id(source)
    info = await vm.save_snapshot(source.run_dir / "snapshot")
    assert state_of(vm) is VMState.PAUSED
    assert info.disk is not None
    if file_backed:
        with pytest.raises(VMStateError):
            await vm.resume()  # its RAM file now is the snapshot
    else:
        await vm.resume()  # the source goes on, on a new disk layer (QEMU) or its own disk (Firecracker)
        await vmm.wait_envd(source, limit=60)
        if vmm.writes_disk:
            await vmm.write_disk(source, "after--snapshot")
            assert disk_head(vm.config.rootfs, 15) == b"after--snapshot"
    if vmm.writes_disk:
        assert disk_head(info.disk, 15) == b"before-snapshot", "the snapshot's disk is frozen"
    await vm.stop(grace=5)

    clones = [vmm.config(backing=info.disk) for _ in range(2)]
    restored = [vmm.track(await vmm.driver.restore(c, info.directory)) for c in clones]
    for clone, config in zip(restored, clones, strict=True):
        assert state_of(clone) is VMState.RUNNING
        await vmm.wait_envd(config, limit=60)
        assert await vmm.boot_id(config) == source_boot, "a restored clone continues the saved kernel"
    for clone, config in zip(restored, clones, strict=True):
        await clone.stop(grace=5)
        assert_nothing_left(config.run_dir, clone.pid)


async def _stopped_snapshot(vmm: Harness) -> SnapshotInfo:
    """A snapshot of a freshly started VM, which is then stopped."""
    source = vmm.config()
    vm = vmm.track(await vmm.driver.start(source))
    info = await vm.save_snapshot(source.run_dir / "snapshot")
    await vm.stop(grace=5)
    return info


async def test_restore_refuses_a_disk_that_is_not_the_snapshots(vmm: Harness) -> None:
    if vmm.name != "qemu":
        pytest.skip("only QEMU can see a qcow2 backing chain to check")
    info = await _stopped_snapshot(vmm)
    stranger = vmm.config()  # an overlay on the base image, not on the frozen disk
    with pytest.raises(StartFailed, match="not backed by the snapshot's disk"):
        await vmm.driver.restore(stranger, info.directory)
    assert_nothing_left(stranger.run_dir)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
async def test_restore_from_a_damaged_state_stream_fails_cleanly(vmm: Harness, damage: str) -> None:
    """The state stream is read by QEMU itself (handed over as an fd): a missing file or a stream cut short is a
    `StartFailed`, with no VMM, socket or pidfile left."""
    if vmm.name != "qemu":
        pytest.skip("the state stream and its transport are QEMU's")
    info = await _stopped_snapshot(vmm)
    state = info.directory / "state"
    if damage == "missing":
        state.unlink()
    else:
        with state.open("r+b") as f:
            f.truncate(state.stat().st_size // 2)
    assert info.disk is not None
    clone = vmm.config(backing=info.disk)
    with pytest.raises(StartFailed) as caught:
        await vmm.driver.restore(clone, info.directory)
    if damage == "missing":
        assert "snapshot state" in caught.value.reason
    assert_nothing_left(clone.run_dir)


def _ram_mapping_mode(pid: int, memory_file: Path) -> str:
    """``rw-s`` (shared) or ``rw-p`` (copy-on-write) for the VMM's mapping of `memory_file`."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(memory_file.resolve()):
            return fields[1]
    raise AssertionError(f"{memory_file} is not mapped by {pid}")


async def test_clone_pause_cycles_on_its_own_memory_file(vmm: Harness) -> None:
    """A clone of a file-backed snapshot maps it copy-on-write; its own snapshot (a pause) builds a memory file of
    its own in its run dir, with device state only; restoring on that run dir maps the file shared, and the next
    snapshot references it in place. The guest continues through every cycle (same boot id, disk writes kept)."""
    if vmm.name != "qemu":
        pytest.skip("memory files and their mapping are QEMU's")
    source = vmm.config(memory_file=True)
    vm = vmm.track(await vmm.driver.start(source))
    await vmm.wait_envd(source)
    boot = await vmm.boot_id(source)
    template = await vm.save_snapshot(source.run_dir / "snapshot")
    await vm.stop(grace=5)
    assert template.memory_file == source.memory_file

    config = vmm.config(backing=template.disk)
    clone = vmm.track(await vmm.driver.restore(config, template.directory))
    assert template.memory_file is not None
    assert _ram_mapping_mode(clone.pid, template.memory_file) == "rw-p"
    await vmm.wait_envd(config, limit=60)
    own = config.run_dir / "memory"
    for cycle in range(3):
        if vmm.writes_disk:
            await vmm.write_disk(config, f"cycle-{cycle}")
        info = await clone.save_snapshot(config.run_dir / "pause")
        manifest = json.loads((info.directory / "snapshot.json").read_text())
        assert manifest["devices_only"] is True
        assert info.memory_file == own
        assert own.stat().st_size == config.memory_mb << 20
        assert (info.directory / "state").stat().st_size < 1 << 20, "device state only, no RAM in the stream"
        await clone.stop(grace=5)
        assert info.disk is not None
        config = config.model_copy(update={"rootfs": info.disk})
        clone = vmm.track(await vmm.driver.restore(config, info.directory))
        assert _ram_mapping_mode(clone.pid, own) == "rw-s", "the clone's own memory file is mapped shared"
        await vmm.wait_envd(config, limit=60)
        assert await vmm.boot_id(config) == boot, "the guest continues, it did not boot again"
        if vmm.writes_disk:
            assert disk_head(info.disk, 7) == f"cycle-{cycle}".encode()
    await clone.stop(grace=5)
    assert template.memory_file.stat().st_size == source.memory_mb << 20
    assert_nothing_left(config.run_dir, clone.pid)
