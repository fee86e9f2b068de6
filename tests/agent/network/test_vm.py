"""A real QEMU microVM (TCG here) on the host-resource packages together: the tiny test guest boots from a qcow2
layer, attached to a slot's TAP, with its VMM in a sandbox cgroup — and answers HTTP from the root namespace at the
slot's host-reachable address; afterwards nothing of it is left."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.agent.network.conftest import host_names
from tests.agent.vmm import guest as guest_module
from tests.agent.vmm.conftest import accel_cache, alive, guest, processes_mentioning
from wrenn.agent.cgroup import CgroupManager, CgroupVersion, Limits
from wrenn.agent.disk import detect_backend
from wrenn.agent.network import NetworkManager
from wrenn.agent.vmm import VM, VMConfig, wait_envd
from wrenn.agent.vmm.qemu import QemuDriver

__all__ = ["accel_cache", "guest"]  # session fixtures shared with the VMM tests

pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.slow]
BOOT_LIMIT = 180.0


@pytest.fixture
async def cgroups() -> AsyncIterator[CgroupManager]:
    manager = CgroupManager(f"wrenntest{os.getpid()}")
    yield manager
    await manager.cleanup_stale(keep=())
    await manager.aclose()


async def test_vm_on_slot_network_in_cgroup(
    manager: NetworkManager, cgroups: CgroupManager, guest: guest_module.TestGuest, accel_cache: Path, tmp_path: Path
) -> None:
    prefix = manager.plan.prefix
    net = await manager.setup(6)
    group = await cgroups.create("vmsbx", Limits(vcpus=1, memory_mb=256, pids_max=128))
    backend = await detect_backend("qemu", tmp_path)
    layer = await backend.create(guest.rootfs, tmp_path / "disk.qcow2", 512 * 1024 * 1024)
    run = tmp_path / "run"
    run.mkdir()
    config = VMConfig(
        vm_id="hostres-vm",
        kernel=guest.kernel,
        initrd=guest.initrd,
        kernel_cmdline=f"{guest.kernel_cmdline} {net.kernel_args()}",
        rootfs=layer.path,
        rootfs_format=layer.format,
        vcpus=1,
        memory_mb=256,
        network=net.vm_network,
        run_dir=run,
    )
    driver = QemuDriver(data_dir=accel_cache, probe_kernel=guest.kernel)
    vm: VM | None = None
    try:
        vm = await driver.start(config, placement=group.placement)
        # From the root namespace, at the slot's address: DNAT in the namespace to the guest's envd port.
        await wait_envd(net.envd_address, BOOT_LIMIT)
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.get(f"http://{net.envd_address}/health")
        assert response.status_code == 204
        # The VMM sits in the sandbox's cgroup with its limits.
        assert vm.pid in await group.pids()
        for path in group.paths:
            assert str(vm.pid) in path.joinpath("cgroup.procs").read_text().split()
        if cgroups.version is CgroupVersion.V1:
            memory = next(p for p in group.paths if "/memory/" in str(p))
            assert int((memory / "memory.limit_in_bytes").read_text()) == group.limits.memory_bytes
        usage = await group.usage()
        assert usage.memory_bytes > 64 * 1024 * 1024  # the guest's RAM is charged to the group
        assert usage.cpu_usec > 0
        assert (await backend.usage(layer.path)).allocated_bytes < 64 * 1024 * 1024
    finally:
        if vm is not None:
            await vm.kill()
            await vm.aclose()
        for pid in processes_mentioning(str(tmp_path)):
            os.kill(pid, signal.SIGKILL)
    assert vm is not None
    assert not alive(vm.pid)
    await cgroups.remove("vmsbx")
    await manager.teardown(6)
    await backend.remove(layer.path)
    assert host_names(prefix) == {"netns": set(), "links": set(), "tables": set()}
    assert await cgroups.names() == set()
    assert not layer.path.exists()
