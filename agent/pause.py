"""Pause and resume of one sandbox: guest memory, device state and disk go to files; the VMM ends; later a fresh
VMM is restored from those files in the same network namespace and slot, with the same id and access token.

Pause (the sandbox's lock held by the manager)::

    RUNNING ──(pause.json SAVING)──> save_snapshot ──(pause.json SAVED)──> record PAUSED ──> VMM ended
                                     QMP stop, migrate        state file + frozen disk     RAM and CPU freed

    * Memory (QEMU): a sandbox restored from a warm template or snapshot maps that memory file copy-on-write; its
      first pause builds the sandbox's own memory file ``run/memory`` (a sparse copy of the template's file plus
      the pages the guest dirtied, read from the VMM) and writes device state only; resume maps that file shared
      (pages fault in lazily), so every later pause is device state plus a sync of the pages written since. The
      file is built as ``memory.tmp`` and renamed: a crash leaves the old state or the complete new one. A
      cold-booted sandbox (anonymous RAM) still streams its whole RAM into the state file. The frozen disk is the
      sandbox's own overlay (`SandboxRecord.disk`); the empty layer QEMU put on top of it is removed once the VMM
      is gone, so the disk chain never grows across cycles.
    * ``memory=False`` keeps only the file system: no snapshot is taken — envd flushes the guest's page cache to
      its disk (``POST /sync``), the vCPUs stop, the VMM quits (QEMU flushes and closes the disk layer), and resume
      boots the image fresh on the sandbox's own disk; what the guest wrote after the sync is lost as in a power
      cut (ext4's journal keeps the file system consistent). The sandbox's own memory file goes too.

Resume::

    PAUSED ──(pause.json RESUMING)──> restore (or cold boot) in the same netns ──> envd /health, /init ──> RUNNING
                                      placement into the sandbox's cgroup           clock, same token

Crash safety (`PauseKeeper.recover`, called by the manager's restart recovery before it adopts or undoes):

    record RUNNING,  SAVING    VMM alive: resumed where it was (``cont``), pause dropped; VMM gone: FAILED, files kept
                               (a ``memory=False`` pause: PAUSED on its disk, which is all such a pause keeps)
    record RUNNING,  SAVED     the snapshot is complete: any VMM is ended, record PAUSED
    record PAUSED,   SAVED     kept PAUSED (a stray VMM of its run dir is ended)
    record PAUSED,   RESUMING  VMM alive: adopted, RUNNING; gone: FAILED with files kept (the guest may have written
                               to the saved disk, so the saved memory no longer matches it)
    record FAILED with a pause directory: kept as it is until destroyed

Nothing is ever removed silently: a sandbox whose saved state cannot be trusted is reported FAILED with its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog
from pydantic import BaseModel, ConfigDict

from wrenn.agent._envd import EnvdClient
from wrenn.agent._processes import kill_processes_mentioning
from wrenn.agent._resources import HostResources
from wrenn.agent.state import SandboxRecord, StateStore
from wrenn.agent.vmm import VM, DiskFormat, VMConfig, VMDriver, VMMError, VMState
from wrenn.protocol.agent import SandboxState
from wrenn.protocol.errors import Conflict, Unavailable, WrennError

_log = structlog.get_logger(__name__)

PAUSE_DIR = "pause"
PAUSE_FILE = "pause.json"
SNAPSHOT_DIR = "snapshot"
STATE_FILE = "state"
SYNC_LIMIT_S = 30.0
"""How long a disk-only pause waits for the guest to flush its page cache (then it pauses anyway)."""


class PausePhase(enum.StrEnum):
    SAVING = "saving"
    SAVED = "saved"
    RESUMING = "resuming"


class PauseRecord(BaseModel):
    """``<sandbox dir>/pause/pause.json``: where a pause or resume stands (written atomically, before acting)."""

    model_config = ConfigDict(extra="forbid")

    phase: PausePhase
    memory: bool = True
    disk: Path | None = None
    paused_at: datetime | None = None
    seconds: float | None = None


class Held(Protocol):
    """What the manager holds for one sandbox (its `_Sandbox`)."""

    record: SandboxRecord
    vm: VM | None


class PauseKeeper:
    """Pauses, resumes and recovers paused sandboxes. The manager calls it with the sandbox's lock held."""

    def __init__(
        self,
        *,
        store: StateStore,
        driver: VMDriver,
        resources: HostResources,
        envd: EnvdClient,
        ready_limit: float,
        stop_grace: float,
    ) -> None:
        self._store = store
        self._driver = driver
        self._resources = resources
        self._envd = envd
        self._ready_limit = ready_limit
        self._stop_grace = stop_grace

    def directory(self, sandbox_id: str) -> Path:
        return self._store.sandbox_dir(sandbox_id) / PAUSE_DIR

    def load(self, sandbox_id: str) -> PauseRecord | None:
        try:
            return PauseRecord.model_validate_json((self.directory(sandbox_id) / PAUSE_FILE).read_text())
        except FileNotFoundError:
            return None

    def _write(self, sandbox_id: str, pause: PauseRecord) -> None:
        directory = self.directory(sandbox_id)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{PAUSE_FILE}.tmp"
        with tmp.open("w") as f:
            f.write(pause.model_dump_json(indent=2))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(directory / PAUSE_FILE)

    async def _save_record(self, record: SandboxRecord) -> None:
        await asyncio.to_thread(self._store.save, record)

    # ---- pause -----------------------------------------------------------------------------------------------

    async def pause(self, held: Held, *, memory: bool) -> None:
        record = held.record
        sandbox_id = record.sandbox_id
        if record.state is SandboxState.PAUSED:
            raise Conflict(f"sandbox {sandbox_id} is already paused")
        vm = held.vm
        if record.state is not SandboxState.RUNNING or vm is None or vm.state is not VMState.RUNNING:
            raise Conflict(f"sandbox {sandbox_id} is {record.state.value}, not running: cannot pause")
        log = _log.bind(sandbox_id=sandbox_id, memory=memory)
        started = asyncio.get_running_loop().time()
        directory = self.directory(sandbox_id)
        await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
        await asyncio.to_thread(self._write, sandbox_id, PauseRecord(phase=PausePhase.SAVING, memory=memory))
        if not memory:
            await self._pause_disk_only(held, vm, log, started)
            return
        try:
            info = await vm.save_snapshot(directory / SNAPSHOT_DIR)
        except BaseException as exc:
            # The guest is stopped but intact (its RAM is private to this VMM): let it run on, as if never asked.
            log.warning("pause failed; the sandbox keeps running", error=repr(exc))
            with contextlib.suppress(VMMError):  # VMStateError when it never got paused
                await asyncio.shield(vm.resume())
            await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
            if isinstance(exc, WrennError) or not isinstance(exc, Exception):
                raise
            raise Unavailable(f"sandbox {sandbox_id}: pause failed: {exc}") from exc
        top = vm.config.rootfs  # the layer QEMU put on top of the frozen disk; the guest never wrote to it
        pause = PauseRecord(phase=PausePhase.SAVED, memory=memory, disk=info.disk, paused_at=datetime.now(UTC))
        await asyncio.to_thread(self._write, sandbox_id, pause)
        record.state = SandboxState.PAUSED
        await self._save_record(record)
        # From here the sandbox is paused whatever happens: ending the VMM frees its RAM and CPU.
        held.vm = None
        with contextlib.suppress(VMMError):
            await asyncio.shield(vm.kill())
        await vm.aclose()
        if info.disk is not None and top != info.disk and top.parent == record.run_dir:
            await asyncio.to_thread(top.unlink, missing_ok=True)
        if info.disk is not None and record.disk is not None and info.disk.is_relative_to(directory):
            # A driver that froze the disk as a copy (Firecracker, the fake): with the VMM gone the copy becomes
            # the sandbox's disk again, so the pause directory can go after a resume and the chain stays flat.
            await asyncio.to_thread(os.replace, info.disk, record.disk)
            pause.disk = record.disk
        pause.seconds = round(asyncio.get_running_loop().time() - started, 3)
        await asyncio.to_thread(self._write, sandbox_id, pause)
        log.info("sandbox paused", seconds=pause.seconds)

    async def _pause_disk_only(self, held: Held, vm: VM, log: Any, started: float) -> None:
        """``memory=False``: nothing of the guest's RAM is saved, so nothing is snapshotted. The vCPUs stop (no guest
        write after that), the VMM quits — QEMU flushes and closes the disk layer on ``quit``; one that ignores it
        is killed after the grace, a power cut the guest's journal repairs — and the sandbox's own disk is what
        resume boots on."""
        record = held.record
        if record.envd_address is not None:
            # The guest's page cache is lost with its RAM: whatever was written reaches the disk first.
            await self._envd.sync(
                record.envd_address, access_token=record.request.envd_access_token, limit=SYNC_LIMIT_S
            )
        try:
            await vm.pause()
        except BaseException as exc:
            log.warning("pause failed; the sandbox keeps running", error=repr(exc))
            with contextlib.suppress(VMMError):
                if vm.state is VMState.PAUSED:
                    await asyncio.shield(vm.resume())
            await asyncio.to_thread(shutil.rmtree, self.directory(record.sandbox_id), ignore_errors=True)
            if isinstance(exc, WrennError) or not isinstance(exc, Exception):
                raise
            raise Unavailable(f"sandbox {record.sandbox_id}: pause failed: {exc}") from exc
        # From here the sandbox is paused whatever happens (a restart finds SAVING with the VMM gone: paused too).
        held.vm = None
        with contextlib.suppress(VMMError):
            await asyncio.shield(vm.stop(grace=self._stop_grace))
        await vm.aclose()
        pause = await self._settle_disk_only(record, vm.config.memory_file)
        pause.seconds = round(asyncio.get_running_loop().time() - started, 3)
        await asyncio.to_thread(self._write, record.sandbox_id, pause)
        log.info("sandbox paused", seconds=pause.seconds)

    async def _settle_disk_only(self, record: SandboxRecord, memory_file: Path | None) -> PauseRecord:
        """Record a ``memory=False`` pause whose VMM is gone: SAVED on the sandbox's own disk, record PAUSED; the
        sandbox's own memory file (its RAM since an earlier pause) goes, as resume boots with empty RAM. Returns
        the pause record written."""
        pause = PauseRecord(phase=PausePhase.SAVED, memory=False, disk=record.disk, paused_at=datetime.now(UTC))
        await asyncio.to_thread(self._write, record.sandbox_id, pause)
        record.state = SandboxState.PAUSED
        await self._save_record(record)
        if memory_file is not None and memory_file.parent == record.run_dir:
            await asyncio.to_thread(memory_file.unlink, missing_ok=True)
        return pause

    # ---- resume ----------------------------------------------------------------------------------------------

    async def resume(self, held: Held) -> bool:
        """Resume a paused sandbox; False when it was already running (nothing done)."""
        record = held.record
        sandbox_id = record.sandbox_id
        if record.state is SandboxState.RUNNING:
            return False
        pause = self.load(sandbox_id)
        if record.state is not SandboxState.PAUSED or pause is None or pause.phase is not PausePhase.SAVED:
            raise Conflict(f"sandbox {sandbox_id} is {record.state.value}, not paused: cannot resume")
        assert record.run_dir is not None
        assert record.envd_address is not None
        log = _log.bind(sandbox_id=sandbox_id, memory=pause.memory)
        started = asyncio.get_running_loop().time()
        directory = self.directory(sandbox_id)
        disk = pause.disk or record.disk
        assert disk is not None
        saved = await asyncio.to_thread(VMConfig.load, record.run_dir)
        config = saved.model_copy(update={"rootfs": disk, "rootfs_format": DiskFormat.QCOW2})
        await asyncio.to_thread(self._write, sandbox_id, pause.model_copy(update={"phase": PausePhase.RESUMING}))
        request = record.request
        vm: VM | None = None
        guest_ran = False
        try:
            placement = await self._resources.create_cgroup(sandbox_id, request.vcpus, request.memory_mb)
            guest_ran = True  # from the restore on, the guest may write to the saved disk
            if pause.memory:
                vm = await self._driver.restore(config, directory / SNAPSHOT_DIR, placement)
            else:
                # A fresh boot on the saved disk; never on a template's memory file (share=on would write to it).
                vm = await self._driver.start(config.model_copy(update={"memory_file": None}), placement)
            await self._envd.wait_ready(record.envd_address, self._ready_limit)
            await self._envd.init(
                record.envd_address, env_vars=request.env_vars, access_token=request.envd_access_token
            )
        except BaseException as exc:
            await asyncio.shield(self._abandon(record, vm, pause, guest_ran=guest_ran, error=repr(exc)))
            log.warning("resume failed", error=repr(exc), state=record.state.value)
            if isinstance(exc, WrennError) or not isinstance(exc, Exception):
                raise
            raise Unavailable(f"sandbox {sandbox_id}: resume failed: {exc}") from exc
        held.vm = vm
        record.state = SandboxState.RUNNING
        await self._save_record(record)
        await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
        log.info("sandbox resumed", seconds=round(asyncio.get_running_loop().time() - started, 3))
        return True

    async def _abandon(
        self, record: SandboxRecord, vm: VM | None, pause: PauseRecord, *, guest_ran: bool, error: str
    ) -> None:
        """After a failed resume: end any VMM; stay PAUSED if the saved disk is untouched, else FAILED (files kept)."""
        if vm is not None:
            with contextlib.suppress(VMMError):
                await vm.kill()
            await vm.aclose()
        if record.run_dir is not None:
            await asyncio.to_thread(kill_processes_mentioning, str(record.run_dir) + "/")
        if guest_ran and pause.memory:
            record.state = SandboxState.FAILED
            record.error = f"resume failed after the guest may have run; saved files kept: {error}"
            await self._save_record(record)
        else:
            await asyncio.to_thread(self._write, record.sandbox_id, pause)

    # ---- restart safety --------------------------------------------------------------------------------------

    async def recover(self, held: Held) -> bool:
        """At agent start, before adopt-or-undo: settle a sandbox a crash caught mid-pause or mid-resume.

        Returns True when the sandbox was settled here (kept: adopted, paused or failed with its files)."""
        record = held.record
        pause = await asyncio.to_thread(self.load, record.sandbox_id)
        if pause is None:
            return False
        log = _log.bind(sandbox_id=record.sandbox_id, state=record.state.value, phase=pause.phase.value)
        if record.state is SandboxState.FAILED:
            log.warning("failed sandbox with saved files kept")
            return True
        if record.state is SandboxState.RUNNING and pause.phase is PausePhase.SAVING:
            vm = await self._adopt(record)
            if vm is None and not pause.memory:
                # a disk-only pause keeps nothing but the disk, and the VMM that wrote it has ended: it is paused
                config = await asyncio.to_thread(_load_config, record.run_dir)
                await self._settle_disk_only(record, config.memory_file if config is not None else None)
                log.warning("disk-only pause finished by a restart")
                return True
            if vm is None:
                return await self._fail(record, "the agent stopped mid-pause and the VMM is gone; disk kept", log)
            with contextlib.suppress(VMMError):
                if vm.state is VMState.PAUSED:
                    await vm.resume()
            if vm.state is not VMState.RUNNING:
                await vm.aclose()
                return await self._fail(record, f"mid-pause VMM left {vm.state.value}; disk kept", log)
            held.vm = vm
            await asyncio.to_thread(shutil.rmtree, self.directory(record.sandbox_id), ignore_errors=True)
            log.warning("pause interrupted by a restart; the sandbox runs on")
            return True
        if pause.phase is PausePhase.SAVED and record.state in {SandboxState.RUNNING, SandboxState.PAUSED}:
            if record.run_dir is not None:
                await asyncio.to_thread(kill_processes_mentioning, str(record.run_dir) + "/")
            if record.state is not SandboxState.PAUSED:
                record.state = SandboxState.PAUSED
                await self._save_record(record)
            log.info("paused sandbox kept")
            return True
        if record.state is SandboxState.PAUSED and pause.phase is PausePhase.RESUMING:
            vm = await self._adopt(record)
            if vm is not None and vm.state is VMState.RUNNING:
                held.vm = vm
                record.state = SandboxState.RUNNING
                await self._save_record(record)
                await asyncio.to_thread(shutil.rmtree, self.directory(record.sandbox_id), ignore_errors=True)
                log.warning("resume finished by a restart: VMM adopted")
                return True
            if vm is not None:
                with contextlib.suppress(VMMError):
                    await vm.kill()
                await vm.aclose()
            if record.run_dir is not None:
                await asyncio.to_thread(kill_processes_mentioning, str(record.run_dir) + "/")
            if not pause.memory:
                saved = pause.model_copy(update={"phase": PausePhase.SAVED})
                await asyncio.to_thread(self._write, record.sandbox_id, saved)
                return True
            return await self._fail(record, "the agent stopped mid-resume; saved files kept", log)
        return False

    async def _adopt(self, record: SandboxRecord) -> VM | None:
        if record.run_dir is None:
            return None
        try:
            return await self._driver.adopt(record.run_dir)
        except VMMError:
            return None

    async def _fail(self, record: SandboxRecord, error: str, log: Any) -> bool:
        if record.run_dir is not None:
            await asyncio.to_thread(kill_processes_mentioning, str(record.run_dir) + "/")
        record.state = SandboxState.FAILED
        record.error = error
        await self._save_record(record)
        log.error("sandbox marked failed; files kept", error=error)
        return True


def _load_config(run_dir: Path | None) -> VMConfig | None:
    if run_dir is None:
        return None
    try:
        return VMConfig.load(run_dir)
    except (OSError, ValueError):
        return None
