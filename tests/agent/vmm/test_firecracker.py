"""The Firecracker driver and its API client against the fake API server (no KVM or binary needed).

The fake checks requests against the published API; these tests check that the driver sends what Firecracker
accepts, in an order it accepts, and turns its refusals into the documented errors.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.vmm.conftest import Netns, no_process_mentions, state_of
from tests.agent.vmm.fake_firecracker import ENDPOINTS, FakeFirecracker
from wrenn.agent.vmm import (
    AdoptFailed,
    DiskFormat,
    FirecrackerAPIError,
    StartFailed,
    TapNetwork,
    UserNetwork,
    VMConfig,
    VMState,
)
from wrenn.agent.vmm.firecracker import API_SOCKET, FirecrackerAPI, FirecrackerDriver, boot_calls

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[FakeFirecracker, FirecrackerAPI]]:
    server = FakeFirecracker(vm_id="vm1")
    sock = tmp_path / "api.sock"
    await server.serve(sock)
    async with FirecrackerAPI(sock) as api:
        yield server, api
    await server.aclose()


def _config(tmp_path: Path, netns: str = "none", **changes: Any) -> VMConfig:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    for name in ("vmlinux", "rootfs.ext4"):
        (tmp_path / name).write_bytes(b"\0")
    config = VMConfig(
        vm_id="fc1",
        kernel=tmp_path / "vmlinux",
        kernel_cmdline="console=ttyS0 reboot=k panic=1",
        rootfs=tmp_path / "rootfs.ext4",
        rootfs_format=DiskFormat.RAW,
        network=TapNetwork(netns=netns, tap="tap0", mac="02:fc:00:00:00:09"),
        run_dir=run,
    )
    return config.model_copy(update=changes)


async def test_boot_sequence_is_accepted(fake: tuple[FakeFirecracker, FirecrackerAPI], tmp_path: Path) -> None:
    server, api = fake
    for path, body in boot_calls(_config(tmp_path)):
        await api.put(path, body)
    await api.put("/actions", {"action_type": "InstanceStart"})
    assert (await api.describe())["state"] == "Running"
    assert [c.status for c in server.calls] == [204] * 6 + [200]
    assert server.config["/drives/rootfs"]["is_root_device"] is True


@pytest.mark.parametrize(
    ("method", "path", "body", "fault"),
    [
        ("PUT", "/machine-config", {"vcpu_count": 1}, "missing field `mem_size_mib`"),
        ("PUT", "/machine-config", {"vcpu_count": "1", "mem_size_mib": 128}, "invalid type for `vcpu_count`"),
        ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "cpus": 2}, "unknown field `cpus`"),
        ("PUT", "/machine-config", {"vcpu_count": 64, "mem_size_mib": 128}, "vCPU number is invalid"),
        ("PUT", "/drives/root", {"drive_id": "other", "is_root_device": True}, "does not match"),
        ("PUT", "/drives/root", {"drive_id": "root", "is_root_device": "yes"}, "invalid type for `is_root_device`"),
        ("PUT", "/network-interfaces/eth0", {"iface_id": "eth0"}, "missing field `host_dev_name`"),
        ("PUT", "/actions", {"action_type": "Reboot"}, "unknown variant `Reboot`"),
        ("PUT", "/actions", {"action_type": "InstanceStart"}, "without kernel configuration"),
        ("PUT", "/actions", {"action_type": "SendCtrlAltDel"}, "before starting"),
        ("PATCH", "/vm", {"state": "Paused"}, "before starting"),
        ("PUT", "/snapshot/create", {"mem_file_path": "/m", "snapshot_path": "/s"}, "before starting"),
        ("PUT", "/snapshot/load", {"snapshot_path": "/s"}, "Exactly one of"),
        ("DELETE", "/machine-config", None, "Invalid request method and/or path"),
        ("PUT", "/no-such-thing", {}, "Invalid request method and/or path"),
    ],
)
async def test_refusals_become_errors_with_the_fault_message(
    fake: tuple[FakeFirecracker, FirecrackerAPI], method: str, path: str, body: dict[str, Any] | None, fault: str
) -> None:
    server, api = fake
    with pytest.raises(FirecrackerAPIError) as caught:
        await api.request(method, path, body)
    assert caught.value.http_status == 400
    assert fault in caught.value.fault_message
    assert (caught.value.method, caught.value.path) == (method, path)
    assert server.calls[-1].status == 400


async def test_pre_boot_endpoints_are_refused_after_start(
    fake: tuple[FakeFirecracker, FirecrackerAPI], tmp_path: Path
) -> None:
    _, api = fake
    for path, body in boot_calls(_config(tmp_path)):
        await api.put(path, body)
    await api.put("/actions", {"action_type": "InstanceStart"})
    for path, body in boot_calls(_config(tmp_path)):
        if path == "/logger":
            continue
        with pytest.raises(FirecrackerAPIError, match="not supported after starting"):
            await api.put(path, body)
    await api.patch("/vm", {"state": "Paused"})
    assert (await api.describe())["state"] == "Paused"


async def test_snapshot_load_only_into_a_fresh_process(
    fake: tuple[FakeFirecracker, FirecrackerAPI], tmp_path: Path
) -> None:
    _, api = fake
    (tmp_path / "state").write_text("{}")
    await api.put("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
    body = {"snapshot_path": str(tmp_path / "state"), "mem_backend": {"backend_type": "File", "backend_path": "/m"}}
    with pytest.raises(FirecrackerAPIError, match="not allowed after configuring"):
        await api.put("/snapshot/load", body)


async def test_transport_failure_is_an_api_error(tmp_path: Path) -> None:
    async with FirecrackerAPI(tmp_path / "missing.sock") as api:
        with pytest.raises(FirecrackerAPIError) as caught:
            await api.describe()
    assert caught.value.http_status == 0


def test_every_endpoint_the_driver_uses_is_in_the_fake() -> None:
    served = {(e.method, e.path) for e in ENDPOINTS}
    used = {("PUT", "/logger"), ("PUT", "/machine-config"), ("PUT", "/boot-source"), ("PUT", "/drives/{id}")}
    used |= {("PUT", "/network-interfaces/{id}"), ("PUT", "/actions"), ("PATCH", "/vm")}
    used |= {("PUT", "/snapshot/create"), ("PUT", "/snapshot/load"), ("GET", "/")}
    assert used <= served


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"network": UserNetwork(host_port=40000)}, "only TAP networking"),
        ({"rootfs_format": DiskFormat.QCOW2}, "raw rootfs"),
        ({"memory_file": Path("/dev/shm/x")}, "QEMU-only"),
        ({"kernel": Path("/nonexistent")}, "kernel /nonexistent is not a file"),
    ],
)
async def test_unsupported_configs_fail_before_spawning(tmp_path: Path, changes: dict[str, Any], reason: str) -> None:
    driver = FirecrackerDriver(binary="/nonexistent/firecracker")
    with pytest.raises(StartFailed, match=reason):
        await driver.start(_config(tmp_path, **changes))


# -- the driver's full start path against the fake launched as the `firecracker` binary (needs a netns) --------


@pytest.fixture
def launcher(tmp_path: Path) -> Path:
    script = tmp_path / "firecracker"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "from tests.agent.vmm.fake_firecracker import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    return script


@pytest.fixture
def netns() -> Iterator[str]:
    ns = Netns(f"vmmtest-{uuid.uuid4().hex[:8]}")
    ns.create()
    yield ns.name
    ns.delete()


def _calls(config: VMConfig) -> list[tuple[str, str]]:
    path = config.run_dir / f"{API_SOCKET}.calls"
    return [(c["method"], c["path"]) for c in map(json.loads, path.read_text().splitlines())]


def _gone(config: VMConfig) -> bool:
    return no_process_mentions(str(config.run_dir / API_SOCKET)) and not (config.run_dir / API_SOCKET).exists()


@pytest.mark.root
async def test_driver_lifecycle_against_fake(tmp_path: Path, launcher: Path, netns: str) -> None:
    driver = FirecrackerDriver(binary=str(launcher))
    config = _config(tmp_path, netns=netns)
    placed: list[int] = []

    async def placement(pid: int) -> None:
        placed.append(pid)
        assert _calls(config) == [("GET", "/")], "placement must run before any configuration"

    vm = await driver.start(config, placement=placement)
    try:
        assert state_of(vm) is VMState.RUNNING
        assert placed == [vm.pid]
        assert _calls(config)[1:] == [
            ("PUT", "/logger"),
            ("PUT", "/machine-config"),
            ("PUT", "/boot-source"),
            ("PUT", "/drives/rootfs"),
            ("PUT", "/network-interfaces/eth0"),
            ("PUT", "/actions"),
        ]
        await vm.pause()
        info = await vm.save_snapshot(tmp_path / "snap")
        assert info.disk == tmp_path / "snap" / "rootfs.raw"
        assert info.disk.read_bytes() == config.rootfs.read_bytes()
        assert state_of(vm) is VMState.PAUSED
        await vm.resume()

        await vm.aclose()  # agent restart
        vm = await FirecrackerDriver(binary=str(launcher)).adopt(config.run_dir)
        assert state_of(vm) is VMState.RUNNING
        await vm.stop(grace=10)
        assert state_of(vm) is VMState.STOPPED
        assert _calls(config)[-1] == ("PUT", "/actions")
        assert _gone(config)
        with pytest.raises(AdoptFailed):
            await driver.adopt(config.run_dir)
    finally:
        await vm.kill()

    (tmp_path / "clone").mkdir()
    restored_config = _config(tmp_path / "clone", netns=netns)
    clone = await driver.restore(restored_config, tmp_path / "snap")
    try:
        assert state_of(clone) is VMState.RUNNING
        assert _calls(restored_config)[1:] == [("PUT", "/snapshot/load")]
    finally:
        await clone.kill()
    assert await clone.wait_exited() is VMState.STOPPED


@pytest.mark.root
async def test_api_fault_during_start_rolls_back(
    tmp_path: Path, launcher: Path, netns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FIRECRACKER_FAIL", "PUT /drives/rootfs=Unable to open the block device backing file")
    config = _config(tmp_path, netns=netns)
    with pytest.raises(StartFailed, match="Unable to open the block device") as caught:
        await FirecrackerDriver(binary=str(launcher)).start(config)
    assert isinstance(caught.value.__cause__, FirecrackerAPIError)
    assert not (config.run_dir / "vmm.pid").exists()
    assert no_process_mentions(str(config.run_dir / API_SOCKET))
    assert os.environ["FAKE_FIRECRACKER_FAIL"]
