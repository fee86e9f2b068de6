"""The QEMU microvm driver: spawns ``qemu-system-x86_64 -M microvm`` paused, drives it over QMP.

Start: write ``vm.json``, bind the QMP socket, spawn QEMU with ``-S`` in its own session (inside the sandbox's
network namespace) handing it the listening socket as an fd, and — a restore — the snapshot's state on another;
connect QMP at once (QEMU answers once it has initialised; if it exits instead, its log says why) while
`placement(pid)` runs; wait until the state is loaded; ``cont``. Exit is watched with a pidfd, so adopted VMMs are
watched the same way as ones we spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from qemu.qmp import ExecuteError, QMPClient, QMPError

from wrenn.agent._tasks import cancel_and_wait
from wrenn.agent.vmm._config import DiskFormat, SnapshotInfo, TapNetwork, VMConfig
from wrenn.agent.vmm._errors import AdoptFailed, SnapshotError, StartFailed, VMMError, VMStateError
from wrenn.agent.vmm._errors import QMPError as VMMQMPError
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
from wrenn.agent.vmm.qemu._accel import AcceleratorDetector, AcceleratorReport
from wrenn.agent.vmm.qemu._chain import backing_chain, chain_contains
from wrenn.agent.vmm.qemu._cmdline import (
    INCOMING_FD,
    PIDFILE,
    QMP_FD,
    QMP_SOCKET,
    ROOTFS_DEVICE,
    VMM_LOG,
    build_argv,
    host_tsc_khz,
)
from wrenn.agent.vmm.qemu._memory import build_memory_file, ram_mapping, sync_file
from wrenn.protocol.agent import Accelerator

_log = structlog.get_logger(__name__)
T = TypeVar("T")

SNAPSHOT_STATE = "state"
SNAPSHOT_MANIFEST = "snapshot.json"
MEMORY_FILE = "memory"
"""A VM's own memory file, in its run dir (built by the first snapshot of a clone; mapped shared on restore)."""

# QMP runstates (query-status "status") and what they mean for us.
_PAUSED_RUNSTATES = frozenset({"paused", "prelaunch", "postmigrate", "finish-migrate", "inmigrate", "suspended"})


async def _qmp(client: QMPClient, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """Run one QMP command, translating library errors into `QMPError` with the command and the reply."""
    try:
        return await client.execute(command, arguments)
    except ExecuteError as exc:
        raise VMMQMPError(command, arguments, dict(exc.received), exc.error.error.desc) from exc
    except (QMPError, OSError, EOFError) as exc:
        raise VMMQMPError(command, arguments, None, f"{type(exc).__name__}: {exc}") from exc


class QemuVM(ProcessHandle):
    """Handle to one QEMU process (see `wrenn.agent.vmm.VM` for the contract)."""

    control_files = (QMP_SOCKET, PIDFILE)

    def __init__(self, config: VMConfig, pid: int, qmp: QMPClient, state: VMState) -> None:
        self._qmp = qmp
        self._ram_frozen = False
        super().__init__(config, pid, state)

    async def _close_channel(self) -> None:
        with contextlib.suppress(Exception):
            await self._qmp.disconnect()

    async def command(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Send one QMP command (for callers that need more than this handle offers)."""
        self._require(VMState.STARTING, VMState.RUNNING, VMState.PAUSED, VMState.STOPPING)
        return await _qmp(self._qmp, command, arguments)

    async def stop(self, grace: float = 10.0) -> None:
        """``quit`` over QMP, wait up to `grace` s, then SIGKILL.

        No ACPI power button: Wrenn's guests run a minimal init that would not act on one (and kernels without
        ACPI have none), so asking the guest is the caller's business — e.g. envd syncs the disk first.
        """
        if self._state in EXITED_STATES:
            return
        self._require_attached()
        self._exit_requested = True
        self._state = VMState.STOPPING
        with contextlib.suppress(VMMQMPError):
            await _qmp(self._qmp, "quit")
        if not await self._wait_gone(grace):
            self._log.warning("VMM ignored quit; killing", grace=grace)
            await self.kill()

    async def pause(self) -> None:
        self._require(VMState.RUNNING)
        await _qmp(self._qmp, "stop")
        self._state = VMState.PAUSED

    async def resume(self) -> None:
        self._require(VMState.PAUSED)
        if self._ram_frozen:
            raise VMStateError(self._config.vm_id, "paused with RAM frozen in a snapshot", ("paused",))
        await _qmp(self._qmp, "cont")
        self._state = VMState.RUNNING

    async def save_snapshot(self, directory: Path) -> SnapshotInfo:
        """Pause and write the VM's state into `directory`; then freeze the disk: ``blockdev-snapshot-sync`` puts
        a new qcow2 layer on top of the rootfs, so the layer below keeps exactly the state that goes with the
        saved RAM and this VM writes to the new one.

        Anonymous RAM (a cold boot without a memory file): migrate to ``exec:cat > state`` (qemu-notes.md), RAM
        and devices in one stream. File-backed RAM: ``state`` holds device state only (``xen-save-devices-state``,
        which writes every section but RAM — not Xen-specific) and the RAM is a memory file the manifest names:

        * RAM mapped shared (a template VM, or a VM restored on its own memory file): that file, synced; the
          snapshot references it in place.
        * RAM mapped copy-on-write from a snapshot's file (a clone): a new file ``run_dir/memory`` is built from
          that file plus the guest's private pages (`_memory.build_memory_file`), so the cost follows the pages
          the guest dirtied, not its RAM size. `restore` maps a memory file in the VM's own run dir shared.

        Either way this VM can never be resumed afterwards (its RAM is, or was copied into, the snapshot).
        """
        self._require(VMState.RUNNING, VMState.PAUSED)
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        state_file = directory / SNAPSHOT_STATE
        memory = self._config.memory_file
        try:
            if self._state is VMState.RUNNING:
                await self.pause()
            if memory is None:
                await _qmp(self._qmp, "migrate-set-parameters", {"max-bandwidth": 1 << 40})
                await _migrate(self._qmp, "migrate", {"uri": f"exec:cat > {state_file}"}, limit=120)
            else:
                self._ram_frozen = True
                await _qmp(self._qmp, "xen-save-devices-state", {"filename": str(state_file), "live": False})
                memory = await asyncio.to_thread(self._save_memory, memory)
            disk = await self._freeze_disk()
        except (VMMQMPError, TimeoutError, StopIteration, OSError) as exc:
            self._ram_frozen = False  # no usable snapshot refers to this RAM: the VM may run on
            raise SnapshotError(f"snapshot of {self._config.vm_id} failed: {exc}") from exc
        info = SnapshotInfo(directory=directory, disk=disk, memory_file=memory)
        manifest = {
            "memory_mb": self._config.memory_mb,
            "devices_only": memory is not None,
            **info.model_dump(mode="json"),
        }
        await asyncio.to_thread((directory / SNAPSHOT_MANIFEST).write_text, json.dumps(manifest))
        return info

    def _save_memory(self, memory: Path) -> Path:
        """The stopped VM's RAM as a durable file (see `save_snapshot`); returns its path."""
        size = self._config.memory_mb << 20
        mapping = ram_mapping(self.pid, memory, size)
        if mapping.shared:
            sync_file(memory)
            return memory
        own = self._config.run_dir / MEMORY_FILE
        stats = build_memory_file(self.pid, memory, own, size)
        self._log.info("memory file built", copied=stats.copied, private=stats.private)
        return own

    async def _freeze_disk(self) -> Path:
        """Switch the rootfs to a new qcow2 layer; return the now read-only image below it."""
        blocks = await _qmp(self._qmp, "query-block")
        frozen = next(Path(b["inserted"]["file"]) for b in blocks if b.get("device") == ROOTFS_DEVICE)
        top = self._config.run_dir / f"rootfs.{uuid.uuid4().hex[:8]}.qcow2"
        arguments = {"device": ROOTFS_DEVICE, "snapshot-file": str(top), "format": "qcow2"}
        await _qmp(self._qmp, "blockdev-snapshot-sync", arguments)
        # vm.json follows the VM to its new layer, so an adopting agent sees the disk in use.
        self._config = self._config.model_copy(update={"rootfs": top, "rootfs_format": DiskFormat.QCOW2})
        await asyncio.to_thread(self._config.save)
        return frozen


async def _migrate(
    client: QMPClient, command: str, arguments: dict[str, Any], limit: float, *, events_on: bool = False
) -> None:
    """Start a migration (outgoing ``migrate`` or ``migrate-incoming``) and wait for its ``MIGRATION`` event
    with status ``completed``. The ``events`` capability makes QEMU send them (`events_on`: already on, from its
    command line); the listener is registered before the command, so no event can slip by."""
    if not events_on:
        await _qmp(client, "migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]})
    with client.listener("MIGRATION") as listener:
        await _qmp(client, command, arguments)
        async with asyncio.timeout(limit):
            async for event in listener:
                data = event["data"]
                status = data.get("status") if isinstance(data, dict) else None
                if status == "completed":
                    return
                if status in {"failed", "cancelled"}:
                    info = await _qmp(client, "query-migrate")
                    raise VMMQMPError(command, arguments, info, f"migration {status}: {info.get('error-desc', '')}")


async def _incoming(client: QMPClient, limit: float) -> None:
    """Load the snapshot state QEMU was given as fd `INCOMING_FD` at its spawn: ``migrate-incoming fd:<number>``
    (QEMU reads a non-socket fd as a file channel; ``MIGRATION`` events are on from its command line). No
    ``getfd`` round trip, and no ``exec:cat``, which forks ``/bin/sh`` + ``cat`` from the QEMU process (a fork of a
    process mapping the guest's RAM: ~5 ms here)."""
    await _migrate(client, "migrate-incoming", {"uri": f"fd:{INCOMING_FD}"}, limit, events_on=True)


async def _unless_exited(config: VMConfig, exited: asyncio.Future[None], step: Coroutine[Any, Any, T]) -> T:
    """Run `step`, but end with StartFailed (and the VMM's log) as soon as the QEMU process is gone: a QEMU that
    fails to start or to load a stream exits, and its socket may then say nothing at all."""
    task = asyncio.ensure_future(step)
    either: list[asyncio.Future[Any]] = [task, exited]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if task.done() and not task.cancelled() and task.exception() is not None and not exited.done():
            await asyncio.wait([exited], timeout=1.0)  # a socket that failed because QEMU is ending: say why
    finally:
        if not task.done():
            await cancel_and_wait(task, ignore=(Exception,))
    if exited.done() and (task.cancelled() or task.exception() is not None):
        raise StartFailed(config.vm_id, "QEMU exited while starting", tail(config.run_dir / VMM_LOG))
    return task.result()


class _PlacementFailed(Exception):
    """Carries the placement's own error out of `QemuDriver._until_started` (it propagates as it is)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class _Restore:
    snapshot: Path
    share: bool
    """map the memory file shared (the VM's own) instead of copy-on-write"""
    devices_only: bool
    """the state stream holds device state only (no configuration section, no RAM)"""


def _chain_contains(chain: list[dict[str, Any]], disk: Path) -> bool:
    """Whether `qemu-img info --backing-chain` output lists `disk` (symlinks and relative names resolved)."""
    return disk.resolve() in {Path(image["filename"]).resolve() for image in chain}


class QemuDriver:
    """Starts QEMU microvm VMs. `data_dir` holds the accelerator probe cache.

    `accelerator` forces an accelerator (no probe); otherwise the first `start` probes with that VM's kernel
    (or `probe_kernel` when given).
    """

    name = "qemu"

    def __init__(
        self,
        *,
        data_dir: Path,
        binary: str = "qemu-system-x86_64",
        accelerator: Accelerator | None = None,
        probe_kernel: Path | None = None,
        qemu_img: str = "qemu-img",
        probe_timeout: float = 15.0,
        spawn_timeout: float = 60.0,
    ) -> None:
        self._binary = binary
        self._qemu_img = qemu_img
        self._forced = accelerator
        self._probe_kernel = probe_kernel
        self._spawn_timeout = spawn_timeout
        self._detector = AcceleratorDetector(binary=binary, cache_dir=data_dir, timeout=probe_timeout)
        self._report: AcceleratorReport | None = None
        self._tsc_khz = host_tsc_khz()

    @property
    def detector(self) -> AcceleratorDetector:
        return self._detector

    async def accelerator_report(self, kernel: Path | None = None) -> AcceleratorReport:
        """Detect (or recall) the accelerator; `kernel` is the probe kernel when none was configured."""
        if self._report is None:
            if self._forced is not None:
                self._report = AcceleratorReport(accelerator=self._forced, reason="configured", qemu_version="")
            else:
                probe = self._probe_kernel or kernel
                if probe is None:
                    raise VMMError("accelerator unknown: no VM started yet and no probe_kernel configured")
                self._report = await self._detector.detect(probe)
        return self._report

    async def accelerator(self) -> Accelerator:
        return (await self.accelerator_report()).accelerator

    async def start(self, config: VMConfig, placement: Placement | None = None) -> QemuVM:
        return await self._launch(config, placement, snapshot=None)

    async def restore(self, config: VMConfig, snapshot: Path, placement: Placement | None = None) -> QemuVM:
        """Start a fresh QEMU with ``-incoming defer`` and load `snapshot` into it (qemu-notes.md recipe).

        With a file-backed snapshot the guest RAM is the snapshot's memory file, faulted in lazily:

        * a file in this VM's own run dir (written by this VM's previous snapshot: a pause) is mapped shared
          (``share=on``): the VM's RAM *is* that file again, and its next snapshot only syncs it;
        * any other (a warm template's, a named snapshot's) is mapped copy-on-write (``share=off``): the snapshot
          stays reusable and clones share its pages.

        A device-state-only stream (``devices_only`` in the manifest) has no configuration section: QEMU is told
        not to expect one (``-global migration.send-configuration=off``).
        """
        manifest_path = snapshot / SNAPSHOT_MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise StartFailed(config.vm_id, f"no readable snapshot in {snapshot}") from exc
        memory = Path(manifest["memory_file"]) if manifest.get("memory_file") else None
        config = config.model_copy(update={"memory_file": memory})
        if manifest.get("disk"):
            await self._check_backing(config, Path(manifest["disk"]))
        restore = _Restore(
            snapshot=snapshot,
            share=memory is not None and memory.parent.resolve() == config.run_dir.resolve(),
            devices_only=bool(manifest.get("devices_only")),
        )
        return await self._launch(config, placement, snapshot=restore)

    async def _check_backing(self, config: VMConfig, disk: Path) -> None:
        """Refuse a rootfs that does not show the snapshot's frozen disk (it would corrupt the guest's fs).

        The qcow2 headers are read directly (`backing_chain`); ``qemu-img`` is asked only when they cannot
        vouch for the disk (an unusual chain, or a chain without it, whose error then comes from qemu-img's view)."""
        chain = backing_chain(config.rootfs)
        if chain is not None and chain_contains(chain, disk):
            return
        proc = await asyncio.create_subprocess_exec(
            self._qemu_img,
            "info",
            "-U",
            "--output=json",
            "--backing-chain",
            str(config.rootfs),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise StartFailed(config.vm_id, f"cannot read rootfs {config.rootfs}", err.decode(errors="replace"))
        if not _chain_contains(json.loads(out), disk):
            raise StartFailed(config.vm_id, f"rootfs {config.rootfs} is not backed by the snapshot's disk {disk}")

    async def _launch(self, config: VMConfig, placement: Placement | None, snapshot: _Restore | None) -> QemuVM:
        run = config.run_dir
        self._check_inputs(config)
        remove_files(run / QMP_SOCKET, run / PIDFILE)
        config.save()
        accel = (await self.accelerator_report(config.kernel)).accelerator
        argv = build_argv(
            config,
            binary=self._binary,
            accel=accel,
            tsc_khz=self._tsc_khz,
            memory_share=snapshot is None or snapshot.share,
            incoming=snapshot is not None,
            incoming_configuration=snapshot is None or not snapshot.devices_only,
        )
        log = _log.bind(vm_id=config.vm_id, accelerator=accel.value)
        pid: int | None = None
        client: QMPClient | None = None
        exited: asyncio.Future[None] | None = None
        try:
            pid = await self._spawn(config, argv, snapshot.snapshot / SNAPSHOT_STATE if snapshot is not None else None)
            exited = asyncio.ensure_future(wait_pid_exit(pid))
            client = QMPClient(f"wrenn-{config.vm_id}")
            await self._until_started(config, pid, client, placement, exited)
            if snapshot is not None:
                if config.memory_file is not None and not snapshot.devices_only:
                    # A migration stream of file-backed RAM written before device-only snapshots: RAM skipped.
                    caps = [{"capability": "x-ignore-shared", "state": True}]
                    await _qmp(client, "migrate-set-capabilities", {"capabilities": caps})
                await _unless_exited(config, exited, _incoming(client, limit=120))
            await _qmp(client, "cont")
        except BaseException as exc:
            await asyncio.shield(self._rollback(config, pid, client))
            if isinstance(exc, _PlacementFailed):
                raise exc.error from None  # placement's own error propagates as documented
            if isinstance(exc, StartFailed) or not isinstance(exc, Exception):
                raise  # cancellation is never swallowed
            raise StartFailed(config.vm_id, type(exc).__name__, str(exc) or tail(run / VMM_LOG)) from exc
        finally:
            await cancel_and_wait(exited)
        log.info("VM running", pid=pid, restored=snapshot is not None)
        return QemuVM(config, pid, client, VMState.RUNNING)

    def _check_inputs(self, config: VMConfig) -> None:
        if not config.run_dir.is_dir():
            raise StartFailed(config.vm_id, f"run directory {config.run_dir} does not exist")
        for what, path in (("kernel", config.kernel), ("initrd", config.initrd), ("rootfs", config.rootfs)):
            if path is not None and not path.is_file():
                raise StartFailed(config.vm_id, f"{what} {path} is not a file")

    async def _spawn(self, config: VMConfig, argv: list[str], state: Path | None) -> int:
        """Bind the QMP socket, open the snapshot `state` (a restore) and spawn QEMU with both as fds `QMP_FD` and
        `INCOMING_FD` (inside the sandbox's namespace for a TAP network); its pid.

        The socket is bound and listening before QEMU exists, so the agent connects at once and QEMU answers as soon
        as it has initialised: no waiting for a ``-daemonize`` parent to exit, no polling for a socket file. QEMU is
        not daemonized: it runs in its own session (it outlives the agent) and is its child until the agent ends."""
        run = config.run_dir
        with contextlib.ExitStack() as own:
            try:
                listener = own.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                listener.bind(str(run / QMP_SOCKET))
                listener.listen(4)
            except OSError as exc:
                raise StartFailed(config.vm_id, f"cannot listen on {run / QMP_SOCKET}", str(exc)) from exc
            fds = {QMP_FD: listener.fileno()}
            if state is not None:
                try:
                    fd = os.open(state, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise StartFailed(config.vm_id, f"cannot open the snapshot state {state}", str(exc)) from exc
                own.callback(os.close, fd)
                fds[INCOMING_FD] = fd
            netns = config.network.netns if isinstance(config.network, TapNetwork) else None
            # QEMU holds its own copies from here on; ours close on leaving.
            return await spawn_in_netns(netns, argv, run / VMM_LOG, run / VMM_LOG, fds=fds)

    async def _until_started(
        self, config: VMConfig, pid: int, client: QMPClient, placement: Placement | None, exited: asyncio.Future[None]
    ) -> None:
        """Connect QMP (it answers once QEMU has initialised) while `placement` runs on the pid; StartFailed when
        QEMU exits or takes longer than `spawn_timeout`, `_PlacementFailed` carrying the placement's own error."""
        placed = asyncio.ensure_future(placement(pid)) if placement is not None else None
        try:
            try:
                async with asyncio.timeout(self._spawn_timeout):
                    await _unless_exited(config, exited, client.connect(str(config.run_dir / QMP_SOCKET)))
            except TimeoutError:
                raise StartFailed(
                    config.vm_id,
                    f"QEMU did not finish initialising in {self._spawn_timeout:.0f} s",
                    tail(config.run_dir / VMM_LOG),
                ) from None
            if placed is not None:
                try:
                    await placed
                except Exception as exc:
                    raise _PlacementFailed(exc) from exc
        finally:
            await cancel_and_wait(placed, ignore=(Exception,))

    async def _rollback(self, config: VMConfig, pid: int | None, client: QMPClient | None) -> None:
        """Undo a half-finished start: kill the VMM, close QMP, remove socket and pidfile. Bounded."""
        if pid is not None and is_process_of(pid, str(config.run_dir / PIDFILE)):
            with contextlib.suppress(TimeoutError):
                await kill_and_wait(pid)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.disconnect()
        remove_files(config.run_dir / QMP_SOCKET, config.run_dir / PIDFILE)

    async def adopt(self, run_dir: Path) -> QemuVM:
        """Re-attach to the QEMU whose pidfile and QMP socket are in `run_dir` (after an agent restart)."""
        try:
            config = VMConfig.load(run_dir)
        except (OSError, ValueError) as exc:
            raise AdoptFailed(f"no VM config in {run_dir}") from exc
        pid = read_pidfile(run_dir / PIDFILE)
        if pid is None or not is_process_of(pid, str(run_dir / PIDFILE)):
            raise AdoptFailed(f"no live QEMU for {config.vm_id} in {run_dir}")
        client = QMPClient(f"wrenn-{config.vm_id}")
        try:
            await client.connect(str(run_dir / QMP_SOCKET))
            status = (await _qmp(client, "query-status"))["status"]
        except (QMPError, OSError, VMMQMPError) as exc:
            with contextlib.suppress(Exception):
                await client.disconnect()
            raise AdoptFailed(f"QMP of {config.vm_id} does not answer: {exc}") from exc
        state = VMState.PAUSED if status in _PAUSED_RUNSTATES else VMState.RUNNING
        _log.info("VM adopted", vm_id=config.vm_id, pid=pid, state=state.value)
        return QemuVM(config, pid, client, state)
