"""The fake driver's own behaviour beyond the conformance suite: structured logs and adopt of a paused VM."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.agent.vmm.conftest import free_port
from wrenn.agent.vmm import TapNetwork, UserNetwork, VMConfig, VMState, VMStateError, wait_envd
from wrenn.agent.vmm.fake import QCOW2_MAGIC, FakeDriver


@pytest.fixture
def config(tmp_path: Path) -> VMConfig:
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "disk.qcow2").write_bytes(QCOW2_MAGIC + b"\0" * 100)
    run = tmp_path / "run"
    run.mkdir()
    return VMConfig(
        vm_id="fake1",
        kernel=tmp_path / "vmlinuz",
        rootfs=tmp_path / "disk.qcow2",
        network=UserNetwork(host_port=free_port()),
        run_dir=run,
    )


async def test_a_crash_is_logged_with_the_vm_bound(config: VMConfig) -> None:
    vm = await FakeDriver().start(config)
    with capture_logs() as logs:
        os.kill(vm.pid, signal.SIGKILL)
        assert await vm.wait_exited() is VMState.CRASHED
    crash = [entry for entry in logs if entry["event"] == "VMM exited unasked"]
    assert len(crash) == 1
    assert crash[0]["vm_id"] == "fake1"
    assert crash[0]["pid"] == vm.pid
    assert crash[0]["log_level"] == "warning"


async def test_adopt_sees_a_paused_vm_as_paused(config: VMConfig) -> None:
    vm = await FakeDriver().start(config)
    await vm.pause()
    await vm.aclose()
    with pytest.raises(VMStateError, match="detached"):
        await vm.kill()
    adopted = await FakeDriver().adopt(config.run_dir)
    try:
        assert adopted.state is VMState.PAUSED
        assert adopted.pid == vm.pid
        await adopted.resume()
        assert isinstance(config.network, UserNetwork)
        await wait_envd(f"127.0.0.1:{config.network.host_port}", limit=10)
        await adopted.stop(grace=5)
        assert await adopted.wait_exited() is VMState.STOPPED
    finally:
        await adopted.kill()


async def test_tap_network_runs_without_a_reachable_guest(config: VMConfig) -> None:
    tap = config.model_copy(update={"network": TapNetwork(netns="ns", tap="tap0", mac="02:00:00:00:00:01")})
    vm = await FakeDriver().start(tap)
    assert vm.state is VMState.RUNNING
    await vm.stop(grace=5)
    assert await vm.wait_exited() is VMState.STOPPED
