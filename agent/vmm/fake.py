"""`FakeDriver`: a VMM driver without a VMM, for testing the code that uses drivers (the host agent).

It runs a real, tiny stand-in process per VM (`wrenn.agent.vmm._fake_vmm`), so pids, placement into cgroups,
exit watching, adopt-after-restart and kill behave as with a real VMM, and with `UserNetwork` its "guest" answers
``GET /health`` 204 on ``127.0.0.1:host_port`` once running. It boots in milliseconds and needs no privileges.
It passes the same conformance suite as the real drivers (user-mode networking only: with `TapNetwork` there is
no guest to reach). Snapshots write a small manifest; a restored fake keeps its source's boot id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from wrenn.agent._tasks import cancel_and_wait
from wrenn.agent.vmm._config import DiskFormat, SnapshotInfo, UserNetwork, VMConfig
from wrenn.agent.vmm._errors import AdoptFailed, ControlError, SnapshotError, StartFailed, VMStateError
from wrenn.agent.vmm._handle import ProcessHandle
from wrenn.agent.vmm._interface import EXITED_STATES, Placement, VMState
from wrenn.agent.vmm._process import (
    is_process_of,
    kill_and_wait,
    read_pidfile,
    remove_files,
    spawn_detached,
    wait_pid_exit,
)
from wrenn.protocol.agent import Accelerator

CONTROL_SOCKET = "fake.sock"
PIDFILE = "vmm.pid"
SNAPSHOT_MANIFEST = "snapshot.json"
QCOW2_MAGIC = b"QFI\xfb"


class _Control:
    """Line-based client of the stand-in's control socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, path: Path) -> _Control:
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    async def send(self, command: str) -> dict[str, Any]:
        async with self._lock:
            try:
                self._writer.write(command.encode() + b"\n")
                await self._writer.drain()
                line = await self._reader.readline()
            except OSError as exc:
                raise ControlError(f"fake VMM {command} failed: {exc}") from exc
        if not line:
            raise ControlError(f"fake VMM closed the control socket on {command}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise ControlError(f"fake VMM refused {command}: {reply['error']}")
        return reply

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class FakeVM(ProcessHandle):
    """Handle to one stand-in VMM process."""

    control_files = (CONTROL_SOCKET, PIDFILE)

    def __init__(self, config: VMConfig, pid: int, control: _Control, state: VMState, boot_id: str) -> None:
        self._control = control
        self._ram_frozen = False
        self.boot_id = boot_id
        super().__init__(config, pid, state)

    async def _close_channel(self) -> None:
        await self._control.aclose()

    async def stop(self, grace: float = 10.0) -> None:
        if self._state in EXITED_STATES:
            return
        self._require_attached()
        self._exit_requested = True
        self._state = VMState.STOPPING
        with contextlib.suppress(ControlError):
            await self._control.send("quit")
        if not await self._wait_gone(grace):
            await self.kill()

    async def pause(self) -> None:
        self._require(VMState.RUNNING)
        await self._control.send("stop")
        self._state = VMState.PAUSED

    async def resume(self) -> None:
        self._require(VMState.PAUSED)
        if self._ram_frozen:
            raise VMStateError(self._config.vm_id, "paused with RAM frozen in a snapshot", ("paused",))
        await self._control.send("cont")
        self._state = VMState.RUNNING

    async def save_snapshot(self, directory: Path) -> SnapshotInfo:
        """Pause and write a manifest (the boot id a restore continues); the disk is frozen as a copy."""
        self._require(VMState.RUNNING, VMState.PAUSED)
        if self._state is VMState.RUNNING:
            await self.pause()
        self._ram_frozen = self._config.memory_file is not None
        try:
            await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
            disk = directory / f"disk.{self._config.rootfs_format.value}"
            await asyncio.to_thread(shutil.copyfile, self._config.rootfs, disk)
            info = SnapshotInfo(directory=directory, disk=disk, memory_file=self._config.memory_file)
            manifest = {"boot_id": self.boot_id, **info.model_dump(mode="json")}
            await asyncio.to_thread((directory / SNAPSHOT_MANIFEST).write_text, json.dumps(manifest))
        except OSError as exc:
            raise SnapshotError(f"snapshot of {self._config.vm_id} failed: {exc}") from exc
        return info


class FakeDriver:
    """Starts stand-in VMMs. `accelerator` is what it reports (nothing is accelerated)."""

    name = "fake"

    def __init__(self, *, accelerator: Accelerator = Accelerator.TCG, ready_limit: float = 10.0) -> None:
        self._accelerator = accelerator
        self._ready_limit = ready_limit

    async def accelerator(self) -> Accelerator:
        return self._accelerator

    async def start(self, config: VMConfig, placement: Placement | None = None) -> FakeVM:
        return await self._launch(config, placement, boot_id=str(uuid.uuid4()))

    async def restore(self, config: VMConfig, snapshot: Path, placement: Placement | None = None) -> FakeVM:
        try:
            manifest = json.loads((snapshot / SNAPSHOT_MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise StartFailed(config.vm_id, f"no readable snapshot in {snapshot}") from exc
        return await self._launch(config, placement, boot_id=str(manifest["boot_id"]))

    def _check(self, config: VMConfig) -> None:
        if not config.run_dir.is_dir():
            raise StartFailed(config.vm_id, f"run directory {config.run_dir} does not exist")
        for what, path in (("kernel", config.kernel), ("initrd", config.initrd), ("rootfs", config.rootfs)):
            if path is not None and not path.is_file():
                raise StartFailed(config.vm_id, f"{what} {path} is not a file")
        if config.rootfs_format is DiskFormat.QCOW2:
            with config.rootfs.open("rb") as disk:
                if disk.read(4) != QCOW2_MAGIC:
                    raise StartFailed(config.vm_id, f"rootfs {config.rootfs} is not a qcow2 image")

    async def _launch(self, config: VMConfig, placement: Placement | None, boot_id: str) -> FakeVM:
        self._check(config)
        run = config.run_dir
        remove_files(run / CONTROL_SOCKET, run / PIDFILE)
        config.save()
        argv = [sys.executable, "-m", "wrenn.agent.vmm._fake_vmm", "--control", str(run / CONTROL_SOCKET)]
        argv += ["--boot-id", boot_id]
        if isinstance(config.network, UserNetwork):
            argv += ["--port", str(config.network.host_port)]
        pid: int | None = None
        control: _Control | None = None
        placing = False
        try:
            pid = spawn_detached(argv)
            (run / PIDFILE).write_text(f"{pid}\n")
            control = await self._connect(config, pid)
            if placement is not None:
                placing = True
                await placement(pid)
                placing = False
            await control.send("cont")
        except BaseException as exc:
            await asyncio.shield(self._rollback(config, pid, control))
            if not placing and isinstance(exc, OSError | ControlError | TimeoutError):
                raise StartFailed(config.vm_id, type(exc).__name__, str(exc)) from exc
            raise
        return FakeVM(config, pid, control, VMState.RUNNING, boot_id)

    async def _connect(self, config: VMConfig, pid: int) -> _Control:
        exited = asyncio.ensure_future(wait_pid_exit(pid))
        try:
            async with asyncio.timeout(self._ready_limit):
                while not exited.done():
                    with contextlib.suppress(OSError):
                        return await _Control.connect(config.run_dir / CONTROL_SOCKET)
                    await asyncio.sleep(0.005)
        finally:
            await cancel_and_wait(exited)
        raise StartFailed(config.vm_id, "fake VMM exited during start")

    async def _rollback(self, config: VMConfig, pid: int | None, control: _Control | None) -> None:
        if control is not None:
            await control.aclose()
        if pid is not None:
            with contextlib.suppress(TimeoutError):
                await kill_and_wait(pid)
        remove_files(config.run_dir / CONTROL_SOCKET, config.run_dir / PIDFILE)

    async def adopt(self, run_dir: Path) -> FakeVM:
        try:
            config = VMConfig.load(run_dir)
        except (OSError, ValueError) as exc:
            raise AdoptFailed(f"no VM config in {run_dir}") from exc
        pid = read_pidfile(run_dir / PIDFILE)
        if pid is None or not is_process_of(pid, str(run_dir / CONTROL_SOCKET)):
            raise AdoptFailed(f"no live fake VMM for {config.vm_id} in {run_dir}")
        try:
            control = await _Control.connect(run_dir / CONTROL_SOCKET)
            status = await control.send("status")
        except (OSError, ControlError) as exc:
            raise AdoptFailed(f"fake VMM of {config.vm_id} does not answer: {exc}") from exc
        state = VMState.RUNNING if status["state"] == "running" else VMState.PAUSED
        return FakeVM(config, pid, control, state, str(status["boot_id"]))
