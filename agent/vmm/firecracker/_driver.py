"""The Firecracker driver: the ``firecracker`` binary with ``--api-sock``, configured over its HTTP API.

Start: spawn ``firecracker --api-sock run/api.sock --id <vm>`` (inside the netns: `spawn_in_netns`; its own
session, so it outlives the agent), wait until the API answers ``GET /``, call `placement(pid)` (no guest exists
before InstanceStart), then PUT /machine-config, /boot-source, /drives/rootfs, /network-interfaces/eth0 and
PUT /actions InstanceStart. The guest's serial console is Firecracker's stdout: ``run/console.log``.

Firecracker only runs on working KVM, has no user-mode networking and no file-backed RAM at boot; configs asking
for those fail with `StartFailed` before anything is spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import structlog

from wrenn.agent._tasks import cancel_and_wait
from wrenn.agent.vmm._config import DiskFormat, SnapshotInfo, TapNetwork, VMConfig
from wrenn.agent.vmm._errors import (
    AdoptFailed,
    FirecrackerAPIError,
    SnapshotError,
    StartFailed,
)
from wrenn.agent.vmm._handle import ProcessHandle
from wrenn.agent.vmm._interface import EXITED_STATES, Placement, VMState
from wrenn.agent.vmm._process import (
    is_process_of,
    kill_and_wait,
    read_pidfile,
    remove_files,
    spawn_in_netns,
    tail,
    wait_pid_exit,
)
from wrenn.agent.vmm.firecracker._api import FirecrackerAPI
from wrenn.protocol.agent import Accelerator

_log = structlog.get_logger(__name__)

API_SOCKET = "api.sock"
PIDFILE = "vmm.pid"
CONSOLE_LOG = "console.log"
VMM_LOG = "vmm.log"
SNAPSHOT_STATE = "vmstate"
SNAPSHOT_MEMORY = "memory"
SNAPSHOT_DISK = "rootfs.raw"
SNAPSHOT_MANIFEST = "snapshot.json"


class FirecrackerVM(ProcessHandle):
    """Handle to one Firecracker process (see `wrenn.agent.vmm.VM` for the contract)."""

    control_files = (API_SOCKET, PIDFILE)

    def __init__(self, config: VMConfig, pid: int, api: FirecrackerAPI, state: VMState) -> None:
        self._api = api
        super().__init__(config, pid, state)

    @property
    def api(self) -> FirecrackerAPI:
        return self._api

    async def _close_channel(self) -> None:
        await self._api.aclose()

    async def stop(self, grace: float = 10.0) -> None:
        """SendCtrlAltDel (the guest reboots, and Firecracker exits on guest reboot), wait `grace`, SIGKILL."""
        if self._state in EXITED_STATES:
            return
        self._require_attached()
        self._exit_requested = True
        was_running = self._state is VMState.RUNNING
        self._state = VMState.STOPPING
        if was_running:
            with contextlib.suppress(FirecrackerAPIError):
                await self._api.put("/actions", {"action_type": "SendCtrlAltDel"})
            if await self._wait_gone(grace):
                return
            self._log.warning("guest ignored Ctrl+Alt+Del; killing", grace=grace)
        await self.kill()

    async def pause(self) -> None:
        self._require(VMState.RUNNING)
        await self._api.patch("/vm", {"state": "Paused"})
        self._state = VMState.PAUSED

    async def resume(self) -> None:
        self._require(VMState.PAUSED)
        await self._api.patch("/vm", {"state": "Resumed"})
        self._state = VMState.RUNNING

    async def save_snapshot(self, directory: Path) -> SnapshotInfo:
        """Pause, PUT /snapshot/create (a Full snapshot: vmstate + memory file), and copy the raw rootfs while
        the guest cannot write (a reflink where the file system can). The VM stays PAUSED."""
        self._require(VMState.RUNNING, VMState.PAUSED)
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        disk = directory / SNAPSHOT_DISK
        try:
            if self._state is VMState.RUNNING:
                await self.pause()
            await self._api.put(
                "/snapshot/create",
                {
                    "snapshot_type": "Full",
                    "snapshot_path": str(directory / SNAPSHOT_STATE),
                    "mem_file_path": str(directory / SNAPSHOT_MEMORY),
                },
            )
            await _copy_disk(self._config.rootfs, disk)
        except (FirecrackerAPIError, OSError) as exc:
            raise SnapshotError(f"snapshot of {self._config.vm_id} failed: {exc}") from exc
        info = SnapshotInfo(directory=directory, disk=disk)
        manifest = {"memory_mb": self._config.memory_mb, "vcpus": self._config.vcpus, **info.model_dump(mode="json")}
        await asyncio.to_thread((directory / SNAPSHOT_MANIFEST).write_text, json.dumps(manifest))
        return info


async def _copy_disk(source: Path, target: Path) -> None:
    """``cp --reflink=auto --sparse=always``: instant on XFS/btrfs, a sparse copy elsewhere."""
    proc = await asyncio.create_subprocess_exec(
        "cp", "--reflink=auto", "--sparse=always", str(source), str(target), stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise OSError(f"cp {source} {target}: {err.decode(errors='replace').strip()}")


def boot_calls(config: VMConfig) -> list[tuple[str, dict[str, Any]]]:
    """The API calls (path, body) that configure `config` before InstanceStart, in order.

    The logger comes first so Firecracker's own messages go to ``vmm.log`` instead of mixing with the guest's
    serial output on stdout (``console.log``).
    """
    net = config.network
    assert isinstance(net, TapNetwork)
    boot: dict[str, Any] = {"kernel_image_path": str(config.kernel), "boot_args": config.kernel_cmdline}
    if config.initrd is not None:
        boot["initrd_path"] = str(config.initrd)
    return [
        ("/logger", {"log_path": str(config.run_dir / VMM_LOG), "level": "Warning", "show_level": True}),
        ("/machine-config", {"vcpu_count": config.vcpus, "mem_size_mib": config.memory_mb}),
        ("/boot-source", boot),
        (
            "/drives/rootfs",
            {
                "drive_id": "rootfs",
                "path_on_host": str(config.rootfs),
                "is_root_device": True,
                "is_read_only": False,
            },
        ),
        ("/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": net.tap, "guest_mac": net.mac}),
    ]


class FirecrackerDriver:
    """Starts Firecracker microVMs. `binary` is the ``firecracker`` executable."""

    name = "firecracker"

    def __init__(self, *, binary: str = "firecracker", api_ready_limit: float = 10.0) -> None:
        self._binary = binary
        self._api_ready_limit = api_ready_limit

    async def accelerator(self) -> Accelerator:
        # Firecracker has no emulation fallback: it runs on KVM or not at all.
        return Accelerator.KVM

    async def start(self, config: VMConfig, placement: Placement | None = None) -> FirecrackerVM:
        return await self._launch(config, placement, snapshot=None)

    async def restore(self, config: VMConfig, snapshot: Path, placement: Placement | None = None) -> FirecrackerVM:
        """Spawn a fresh Firecracker and PUT /snapshot/load (memory file mapped, resumed at once)."""
        if not (snapshot / SNAPSHOT_MANIFEST).is_file():
            raise StartFailed(config.vm_id, f"no snapshot in {snapshot}")
        return await self._launch(config, placement, snapshot=snapshot)

    def _check(self, config: VMConfig, snapshot: Path | None) -> None:
        if not isinstance(config.network, TapNetwork):
            raise StartFailed(config.vm_id, "Firecracker supports only TAP networking")
        if config.rootfs_format is not DiskFormat.RAW:
            raise StartFailed(config.vm_id, "Firecracker needs a raw rootfs")
        if config.memory_file is not None and snapshot is None:
            raise StartFailed(config.vm_id, "file-backed RAM at boot is QEMU-only")
        if not config.run_dir.is_dir():
            raise StartFailed(config.vm_id, f"run directory {config.run_dir} does not exist")
        for what, path in (("kernel", config.kernel), ("initrd", config.initrd), ("rootfs", config.rootfs)):
            if path is not None and not path.is_file():
                raise StartFailed(config.vm_id, f"{what} {path} is not a file")

    async def _launch(self, config: VMConfig, placement: Placement | None, snapshot: Path | None) -> FirecrackerVM:
        self._check(config, snapshot)
        run = config.run_dir
        remove_files(run / API_SOCKET, run / PIDFILE)
        config.save()
        pid: int | None = None
        api = FirecrackerAPI(run / API_SOCKET)
        placing = False
        try:
            pid = await self._spawn(config)
            await self._wait_api(config, pid, api)
            if placement is not None:
                placing = True
                await placement(pid)
                placing = False
            if snapshot is None:
                for path, body in boot_calls(config):
                    await api.put(path, body)
                await api.put("/actions", {"action_type": "InstanceStart"})
            else:
                await api.put(
                    "/snapshot/load",
                    {
                        "snapshot_path": str(snapshot / SNAPSHOT_STATE),
                        "mem_backend": {"backend_type": "File", "backend_path": str(snapshot / SNAPSHOT_MEMORY)},
                        "resume_vm": True,
                    },
                )
        except BaseException as exc:
            await asyncio.shield(self._rollback(config, pid, api))
            if placing:
                raise  # placement's own error propagates as documented
            if isinstance(exc, FirecrackerAPIError):
                raise StartFailed(config.vm_id, f"{exc.method} {exc.path} failed", exc.fault_message) from exc
            if isinstance(exc, OSError | TimeoutError):
                raise StartFailed(config.vm_id, type(exc).__name__, str(exc) or tail(run / VMM_LOG)) from exc
            raise
        _log.info("VM running", vm_id=config.vm_id, pid=pid, restored=snapshot is not None)
        return FirecrackerVM(config, pid, api, VMState.RUNNING)

    async def _spawn(self, config: VMConfig) -> int:
        run = config.run_dir
        # Firecracker's instance ids are alphanumerics and hyphens; ours may also hold underscores.
        argv = [self._binary, "--api-sock", str(run / API_SOCKET), "--id", config.vm_id.replace("_", "-")]
        assert isinstance(config.network, TapNetwork)
        pid = await spawn_in_netns(config.network.netns, argv, stdout=run / CONSOLE_LOG, stderr=run / VMM_LOG)
        (run / PIDFILE).write_text(f"{pid}\n")
        return pid

    async def _wait_api(self, config: VMConfig, pid: int, api: FirecrackerAPI) -> None:
        """Wait until the API socket answers GET /, or fail as soon as the process is gone."""
        exited = asyncio.ensure_future(wait_pid_exit(pid))
        try:
            async with asyncio.timeout(self._api_ready_limit):
                while True:
                    if exited.done():
                        raise StartFailed(
                            config.vm_id, "firecracker exited during start", tail(config.run_dir / VMM_LOG)
                        )
                    if (config.run_dir / API_SOCKET).exists():
                        with contextlib.suppress(FirecrackerAPIError):
                            await api.describe()
                            return
                    await asyncio.sleep(0.005)
        finally:
            await cancel_and_wait(exited)

    async def _rollback(self, config: VMConfig, pid: int | None, api: FirecrackerAPI) -> None:
        if pid is not None:
            with contextlib.suppress(TimeoutError):
                await kill_and_wait(pid)
        await api.aclose()
        remove_files(config.run_dir / API_SOCKET, config.run_dir / PIDFILE)

    async def adopt(self, run_dir: Path) -> FirecrackerVM:
        try:
            config = VMConfig.load(run_dir)
        except (OSError, ValueError) as exc:
            raise AdoptFailed(f"no VM config in {run_dir}") from exc
        pid = read_pidfile(run_dir / PIDFILE)
        if pid is None or not is_process_of(pid, str(run_dir / API_SOCKET)):
            raise AdoptFailed(f"no live Firecracker for {config.vm_id} in {run_dir}")
        api = FirecrackerAPI(run_dir / API_SOCKET)
        try:
            info = await api.describe()
        except FirecrackerAPIError as exc:
            await api.aclose()
            raise AdoptFailed(f"API of {config.vm_id} does not answer: {exc.message}") from exc
        states = {"Running": VMState.RUNNING, "Paused": VMState.PAUSED}
        if info.get("state") not in states:
            await api.aclose()
            raise AdoptFailed(f"Firecracker for {config.vm_id} is {info.get('state')!r}, not running")
        return FirecrackerVM(config, pid, api, states[str(info["state"])])
