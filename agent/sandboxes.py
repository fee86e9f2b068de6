"""The sandbox manager: creates, destroys, lists and re-adopts this host's sandboxes (one microVM each).

Create, step by step (`wrenn.agent.state.Step`; each step is persisted *before* it is taken)::

    SLOT ─> NETWORK ─> DISK ─> CGROUP ─> VM ───────────────────> INIT ─> RUNNING
    slot     netns,      qcow2    limits    restore from the warm   envd /init: env vars,
             veth, TAP   overlay            snapshot, or cold boot  token, clock (asked until envd answers)

The network may come ready-made from the `NetworkPool` (a slot prepared in the background, egress denied; the create
only applies the sandbox's egress to it). Writes of the record: one before network, disk, cgroup and VM (all begun
together: each undo is idempotent and finds nothing when its step never ran), one when RUNNING. The cgroup is made
while the VMM spawns (its placement waits for it: nothing of the guest runs before the VMM is inside). envd's ``/init``
doubles as the readiness probe (no ``/health`` round trip), after a restore and after a boot alike.

A failure (or cancellation) at any step undoes the steps begun, in reverse, shielded and bounded; the error
propagates. Destroy is the same undo. States (`SandboxState`)::

    CREATING ──> RUNNING ──> STOPPING ──> (record removed)
        │            └── VMM exited on its own ──> FAILED (reported; destroy cleans up)
        └── failure: rolled back, record removed

Restart safety (`open`): every record is read back; RUNNING sandboxes whose VMM can be adopted are kept, the rest
(half-done creates, half-done destroys, VMMs gone or not ours) are undone from their recorded steps; then the host
resources no live sandbox owns (namespaces, links, cgroups, overlays) are removed. Timeouts are the control plane's
job: the agent keeps a sandbox until it is told to destroy it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from wrenn.agent._envd import EnvdClient
from wrenn.agent._images import AgentImage, ImageSource
from wrenn.agent._netpool import POOL_FILE, NetworkPool
from wrenn.agent._processes import kill_processes_mentioning
from wrenn.agent._resources import HostFacts, HostResources
from wrenn.agent._slots import SlotAllocator
from wrenn.agent._tasks import cancel_and_wait
from wrenn.agent.pause import SNAPSHOT_DIR, PauseKeeper
from wrenn.agent.snapshots import KEY_PREFIX, SnapshotMeta, SnapshotStore, new_meta
from wrenn.agent.state import SandboxRecord, StateStore, Step
from wrenn.agent.templates import WarmSnapshot, WarmTemplates
from wrenn.agent.vmm import EXITED_STATES, VM, DiskFormat, Placement, VMConfig, VMDriver, VMMError
from wrenn.protocol.agent import Accelerator, CreateSandbox, HostInfo, SandboxInfo, SandboxState, SnapshotInfo
from wrenn.protocol.errors import Conflict, Exhausted, NotFound, Unavailable, WrennError

_log = structlog.get_logger(__name__)

VERSION = "0.1.0"
DISK_FILE = "disk.qcow2"
RUN_DIR = "run"


@dataclass
class Limits:
    ready_cold: float = 180.0
    ready_restore: float = 60.0
    stop_grace: float = 5.0
    rollback: float = 60.0


@dataclass
class _Sandbox:
    record: SandboxRecord
    vm: VM | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SandboxManager:
    """Owns every sandbox of this host. Open with ``async with`` (or `open`/`aclose`): `open` recovers."""

    def __init__(
        self,
        *,
        store: StateStore,
        driver: VMDriver,
        resources: HostResources,
        images: ImageSource,
        templates: WarmTemplates,
        envd: EnvdClient,
        slots: SlotAllocator,
        limits: Limits | None = None,
        host_id: str = "unregistered",
        network_pool: int = 0,
    ) -> None:
        self._store = store
        self._driver = driver
        self._resources = resources
        self._images = images
        self._templates = templates
        self._envd = envd
        self._slots = slots
        self._limits = limits or Limits()
        self._sandboxes: dict[str, _Sandbox] = {}
        self._forgotten: set[str] = set()
        self._facts: HostFacts | None = None
        self._accelerator: Accelerator | None = None
        self.host_id = host_id
        self._pauser = PauseKeeper(
            store=store,
            driver=driver,
            resources=resources,
            envd=envd,
            ready_limit=self._limits.ready_restore,
            stop_grace=self._limits.stop_grace,
        )
        self._snapshots = SnapshotStore(store.root.parent / "snapshots")
        self._prewarm: asyncio.Task[None] | None = None
        self._pool = NetworkPool(
            resources=resources, slots=slots, path=store.root.parent / POOL_FILE, size=network_pool
        )

    # ---- lifecycle of the manager ----------------------------------------------------------------------------

    async def __aenter__(self) -> SandboxManager:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def open(self, *, prewarm: Sequence[tuple[str, int, int]] = ()) -> None:
        """Recover this host's sandboxes, start the network pool and, in the background, make the warm snapshots
        of the `prewarm` shapes (template, vcpus, memory_mb)."""
        self._facts = await self._resources.open()
        await self._recover()
        self._pool.open()
        if prewarm:
            self._prewarm = asyncio.create_task(self._prewarm_shapes(list(prewarm)), name="prewarm")

    async def _prewarm_shapes(self, shapes: list[tuple[str, int, int]]) -> None:
        """One shape after another; a shape that cannot be made is logged and left to its first create."""
        for template, vcpus, memory_mb in shapes:
            log = _log.bind(template=template, vcpus=vcpus, memory_mb=memory_mb)
            try:
                image = self._images.find(template)
                warm = await self._templates.get(image, vcpus, memory_mb)
            except (WrennError, OSError) as exc:
                log.warning("prewarm skipped", error=str(exc))
                continue
            log.info("prewarmed" if warm is not None else "prewarm: this shape cold-boots")

    async def prewarmed(self) -> None:
        """Wait until the background prewarm (if any) has finished."""
        if self._prewarm is not None:
            await asyncio.wait([self._prewarm])

    async def aclose(self) -> None:
        """Stop the prewarm and the network pool's refill and remove its prepared slots; release VM handles (the
        VMMs keep running and are adopted by the next agent)."""
        await cancel_and_wait(self._prewarm)
        self._prewarm = None
        await self._pool.aclose()
        for sandbox in self._sandboxes.values():
            if sandbox.vm is not None:
                await sandbox.vm.aclose()
        self._sandboxes.clear()

    @property
    def templates(self) -> WarmTemplates:
        return self._templates

    @property
    def resources(self) -> HostResources:
        return self._resources

    @property
    def images(self) -> ImageSource:
        return self._images

    @property
    def network_pool(self) -> NetworkPool:
        return self._pool

    def vmm_pid(self, sandbox_id: str) -> int | None:
        """The VMM pid of a sandbox this agent holds a handle to (benchmarks measure its memory)."""
        sandbox = self._sandboxes.get(sandbox_id)
        return sandbox.vm.pid if sandbox is not None and sandbox.vm is not None else None

    # ---- queries ---------------------------------------------------------------------------------------------

    def get(self, sandbox_id: str) -> SandboxInfo:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            raise NotFound(f"sandbox {sandbox_id} not found on this host")
        return self._info(sandbox)

    def list(self) -> list[SandboxInfo]:
        return [self._info(s) for s in self._sandboxes.values()]

    async def host_info(self) -> HostInfo:
        facts = self._facts or HostFacts(cgroup_version=0, cow_backend="unknown")
        live = [s.record.request for s in self._sandboxes.values()]
        return HostInfo(
            host_id=self.host_id,
            version=VERSION,
            accelerator=await self._get_accelerator(),
            cgroup_version=facts.cgroup_version,
            cow_backend=facts.cow_backend,
            vcpus_total=os.cpu_count() or 1,
            vcpus_used=sum(r.vcpus for r in live),
            memory_mb_total=_memory_mb_total(),
            memory_mb_used=sum(r.memory_mb for r in live),
            disk_mb_free=self._resources.disk_mb_free(self._store.root),
            sandboxes_running=sum(1 for s in self._sandboxes.values() if self._state(s) is SandboxState.RUNNING),
        )

    async def _get_accelerator(self) -> Accelerator:
        if self._accelerator is None:
            try:
                self._accelerator = await self._driver.accelerator()
            except VMMError:
                return Accelerator.TCG  # not probed yet (no image booted): the conservative answer
        return self._accelerator

    def _state(self, sandbox: _Sandbox) -> SandboxState:
        state = sandbox.record.state
        if state is SandboxState.RUNNING and sandbox.vm is not None and sandbox.vm.state in EXITED_STATES:
            return SandboxState.FAILED
        return state

    def _info(self, sandbox: _Sandbox) -> SandboxInfo:
        record = sandbox.record
        request = record.request
        return SandboxInfo(
            sandbox_id=record.sandbox_id,
            template=request.template,
            state=self._state(sandbox),
            vcpus=request.vcpus,
            memory_mb=request.memory_mb,
            disk_mb=request.disk_mb,
            metadata=request.metadata,
            created_at=record.created_at,
            envd_address=record.envd_address or "",
            allow_internet=request.allow_internet,
            accelerator=self._accelerator or Accelerator.TCG,
        )

    # ---- create ----------------------------------------------------------------------------------------------

    async def create(self, request: CreateSandbox) -> SandboxInfo:
        sandbox_id = request.sandbox_id
        log = _log.bind(sandbox_id=sandbox_id, template=request.template)
        if sandbox_id in self._sandboxes:
            raise Conflict(f"sandbox {sandbox_id} already exists on this host")
        snapshot = self._snapshots.find(request.template)  # a snapshot id: restore from it (wrenn.agent.snapshots)
        if snapshot is not None:
            meta = snapshot[0]
            request = request.model_copy(update={"vcpus": meta.vcpus, "memory_mb": meta.memory_mb})
        image = self._images.find(snapshot[0].template if snapshot is not None else request.template)
        self._check_capacity(request)
        # A slot whose network the pool prepared (egress denied), else a fresh one whose network the create sets
        # up. A prepared slot is recorded with NETWORK begun from the first write: undo tears it down like any.
        slot = self._pool.take()
        prepared = slot is not None
        if slot is None:
            slot = self._slots.allocate()
        record = SandboxRecord(
            sandbox_id=sandbox_id,
            request=request,
            slot=slot,
            steps=[Step.SLOT, Step.NETWORK] if prepared else [Step.SLOT],
            created_at=datetime.now(UTC),
        )
        sandbox = _Sandbox(record)
        self._sandboxes[sandbox_id] = sandbox
        self._forgotten.discard(sandbox_id)
        async with sandbox.lock, self._pool.creating():
            try:
                started = asyncio.get_running_loop().time()
                if snapshot is not None:
                    warm: WarmSnapshot | None = snapshot[1]
                else:
                    warm = await self._templates.get(image, request.vcpus, request.memory_mb)
                await self._build(sandbox, image, warm, prepared=prepared, from_snapshot=snapshot is not None)
                record.state = SandboxState.RUNNING
                await self._save(record, durable=False)
                log.info(
                    "sandbox running",
                    restored=record.restored,
                    seconds=round(asyncio.get_running_loop().time() - started, 3),
                )
            except BaseException as exc:
                log.warning("create failed; rolling back", step=record.steps[-1].value, error=repr(exc))
                await self._undo_shielded(sandbox)
                if isinstance(exc, WrennError) or not isinstance(exc, Exception):
                    raise
                raise Unavailable(f"sandbox {sandbox_id}: create failed: {exc}") from exc
        return self._info(sandbox)

    def _check_capacity(self, request: CreateSandbox) -> None:
        used = sum(s.record.request.memory_mb for s in self._sandboxes.values())
        total = _memory_mb_total()
        if used + request.memory_mb > total:
            raise Exhausted(f"host memory exhausted: {used} of {total} MiB in use, {request.memory_mb} asked")

    async def _build(
        self, sandbox: _Sandbox, image: AgentImage, warm: WarmSnapshot | None, *, prepared: bool, from_snapshot: bool
    ) -> None:
        record = sandbox.record
        request = record.request
        assert record.slot is not None
        directory = self._store.sandbox_dir(record.sandbox_id)

        disk = directory / DISK_FILE
        run_dir = directory / RUN_DIR
        record.disk = disk
        record.run_dir = run_dir
        if warm is not None:
            record.template_key = warm.key
            record.restored = True
        # Nothing exists on the host for this sandbox yet (but a prepared network, recorded in `create`). Network,
        # disk, cgroup and VM are recorded as begun in the sandbox's first write (with its slot): every undo is
        # idempotent and finds nothing when its step never ran, so a crash or failure anywhere is undone alike.
        # Network and disk are set up concurrently; the cgroup beside them and on into the VMM's spawn (the
        # driver's placement waits for it), so the VMM does not wait for it.
        await self._begin(record, *(s for s in (Step.NETWORK, Step.DISK, Step.CGROUP, Step.VM) if not record.begun(s)))
        cgroup = asyncio.ensure_future(
            self._resources.create_cgroup(record.sandbox_id, request.vcpus, request.memory_mb)
        )
        try:
            await self._start_vm(sandbox, image, warm, cgroup, disk=disk, run_dir=run_dir, prepared=prepared)
        finally:
            await asyncio.wait([cgroup])  # never leave it half-made under the undo
            failed = None if cgroup.cancelled() else cgroup.exception()  # retrieved either way
        if failed is not None:
            raise failed  # the placement raised it already, unless a driver never placed the VMM: not kept either
        # INIT makes no host state, so it is not written on its own: the RUNNING write right after records it.
        # /init is the readiness probe: on a restore the guest's envd was listening when the snapshot was taken; on
        # a boot envd comes up some time after the VMM, and until it listens the guest refuses the connection (or,
        # before its link is up, does not answer the SYN): both are asked again, with no /health round trip first.
        record.steps.append(Step.INIT)
        await self._envd.init(
            record.envd_address or "",
            # A booted guest's envd and a warm template's (its /init had none) hold no env vars: sending an empty
            # map changes nothing there, and costs the restored guest ms of first-time work under TCG.
            env_vars=request.env_vars if request.env_vars or from_snapshot else None,
            access_token=request.envd_access_token,
            current_token=self._snapshots.guest_token(warm.key) if warm is not None else None,
            ready_limit=self._limits.ready_restore if warm is not None else self._limits.ready_cold,
        )

    async def _start_vm(
        self,
        sandbox: _Sandbox,
        image: AgentImage,
        warm: WarmSnapshot | None,
        cgroup: asyncio.Future[Placement],
        *,
        disk: Path,
        run_dir: Path,
        prepared: bool,
    ) -> None:
        """Network and disk (concurrently), then the VMM, placed into the cgroup `cgroup` is making."""
        record = sandbox.record
        request = record.request
        assert record.slot is not None
        base, base_format = (warm.disk, "qcow2") if warm is not None else (image.rootfs, image.rootfs_format)
        take_network = self._resources.take_network if prepared else self._resources.acquire_network
        lease, made_disk, made_dir = await asyncio.gather(
            take_network(record.sandbox_id, record.slot, allow_internet=request.allow_internet),
            self._resources.create_disk(base, base_format, disk, request.disk_mb),
            asyncio.to_thread(run_dir.mkdir, parents=True, exist_ok=True),
            return_exceptions=True,  # let all finish, so the undo never races a half-made resource
        )
        for outcome in (lease, made_disk, made_dir):
            if isinstance(outcome, BaseException):
                raise outcome
        assert not isinstance(lease, BaseException)
        record.netns = lease.netns
        record.envd_address = lease.envd_address

        async def placement(pid: int) -> None:
            place = await asyncio.shield(cgroup)  # its error, if it failed, is the placement's
            await place(pid)

        config = VMConfig(
            vm_id=record.sandbox_id,
            kernel=image.kernel,
            initrd=image.initrd,
            kernel_cmdline=f"{image.kernel_cmdline} {lease.kernel_args()}".strip(),
            rootfs=disk,
            rootfs_format=DiskFormat.QCOW2,
            vcpus=request.vcpus,
            memory_mb=request.memory_mb,
            network=lease.vm_network,
            run_dir=run_dir,
        )
        if warm is not None:
            sandbox.vm = await self._driver.restore(config, warm.directory, placement)
        else:
            sandbox.vm = await self._driver.start(config, placement)
        self._accelerator = self._accelerator or await self._driver.accelerator()

    async def _begin(self, record: SandboxRecord, *steps: Step) -> None:
        record.steps.extend(steps)
        await self._save(record, durable=False)

    async def _save(self, record: SandboxRecord, *, durable: bool = True) -> None:
        """Persist `record`; the writes of a create need not be durable (why: `wrenn.agent.state`)."""
        await asyncio.to_thread(self._store.save, record, durable=durable)

    # ---- pause and resume (wrenn.agent.pause) -----------------------------------------------------------------

    async def pause(self, sandbox_id: str, *, memory: bool = True) -> SandboxInfo:
        """Save the sandbox to files and end its VMM (Conflict when already paused or not running)."""
        sandbox = self._held(sandbox_id)
        async with sandbox.lock:
            await self._pauser.pause(sandbox, memory=memory)
        return self._info(sandbox)

    async def resume(self, sandbox_id: str) -> tuple[SandboxInfo, bool]:
        """Bring a paused sandbox back in its own namespace and slot; (info, False) when it was running."""
        sandbox = self._held(sandbox_id)
        async with sandbox.lock:
            resumed = await self._pauser.resume(sandbox)
        return self._info(sandbox), resumed

    # ---- snapshots (wrenn.agent.snapshots) --------------------------------------------------------------------

    async def snapshot(self, sandbox_id: str, snapshot_id: str) -> SnapshotInfo:
        """Snapshot a running sandbox under `snapshot_id`: paused, copied, resumed at once (it keeps running)."""
        sandbox = self._held(sandbox_id)
        async with sandbox.lock:
            record = sandbox.record
            if record.state is not SandboxState.RUNNING:
                raise Conflict(f"sandbox {sandbox_id} is {record.state.value}: only a running sandbox is snapshotted")
            if self._snapshots.find(snapshot_id) is not None:
                raise Conflict(f"snapshot {snapshot_id} already exists")
            source = self._snapshots.find(record.request.template)
            template = source[0].template if source is not None else record.request.template
            request = record.request
            meta = new_meta(snapshot_id, template, sandbox_id, request.vcpus, request.memory_mb, request.disk_mb)
            meta = meta.model_copy(update={"envd_token": request.envd_access_token})
            await self._pauser.pause(sandbox, memory=True)
            try:
                pause = self._pauser.load(sandbox_id)
                assert pause is not None
                assert pause.disk is not None
                paused_dir = self._pauser.directory(sandbox_id) / SNAPSHOT_DIR
                await asyncio.to_thread(self._snapshots.capture, meta, paused_dir, pause.disk)
            finally:
                await self._pauser.resume(sandbox)
        _log.info("snapshot taken", sandbox_id=sandbox_id, snapshot_id=snapshot_id)
        return _snapshot_info(meta)

    def list_snapshots(self) -> builtins.list[SnapshotInfo]:
        return [_snapshot_info(m) for m in self._snapshots.list()]

    async def delete_snapshot(self, snapshot_id: str) -> None:
        key = KEY_PREFIX + snapshot_id
        in_use = any(s.record.template_key == key for s in self._sandboxes.values())
        await asyncio.to_thread(self._snapshots.delete, snapshot_id, in_use)

    def _held(self, sandbox_id: str) -> _Sandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            raise NotFound(f"sandbox {sandbox_id} not found on this host")
        return sandbox

    # ---- destroy ---------------------------------------------------------------------------------------------

    async def destroy(self, sandbox_id: str) -> None:
        """End the sandbox and free everything it holds. Idempotent; NotFound only for ids never seen."""
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            if sandbox_id in self._forgotten:
                return
            raise NotFound(f"sandbox {sandbox_id} not found on this host")
        async with sandbox.lock:
            if sandbox_id not in self._sandboxes:
                return  # destroyed (or rolled back) while we waited
            sandbox.record.state = SandboxState.STOPPING
            await self._save(sandbox.record)
            await self._undo_shielded(sandbox)
        _log.info("sandbox destroyed", sandbox_id=sandbox_id)

    async def _undo_shielded(self, sandbox: _Sandbox) -> None:
        """Undo, shielded from cancellation and bounded in time; a cancelled caller still waits for it."""
        task = asyncio.ensure_future(self._undo(sandbox))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), self._limits.rollback)
            raise

    async def _undo(self, sandbox: _Sandbox) -> None:
        record = sandbox.record
        log = _log.bind(sandbox_id=record.sandbox_id)
        try:
            async with asyncio.timeout(self._limits.rollback):
                await self._undo_steps(sandbox)
        except Exception as exc:  # keep the record: the next agent start retries from it
            log.error("undo failed; record kept for the next start", error=repr(exc))
            raise
        self._sandboxes.pop(record.sandbox_id, None)
        self._forgotten.add(record.sandbox_id)
        if record.slot is not None:
            self._slots.free(record.slot)
        await asyncio.to_thread(self._store.remove, record.sandbox_id)

    async def _undo_steps(self, sandbox: _Sandbox) -> None:
        record = sandbox.record
        if record.begun(Step.VM):
            if sandbox.vm is not None:
                with contextlib.suppress(VMMError):
                    await sandbox.vm.stop(grace=self._limits.stop_grace)
                await sandbox.vm.aclose()
                sandbox.vm = None
            if record.run_dir is not None:
                # A VMM we hold no handle to (crash mid-start/restore, adopt refused): by its run dir.
                await asyncio.to_thread(kill_processes_mentioning, str(record.run_dir) + "/")
        if record.begun(Step.CGROUP):
            await self._resources.remove_cgroup(record.sandbox_id)
        if record.begun(Step.DISK) and record.disk is not None:
            await self._resources.remove_disk(record.disk)
        if record.begun(Step.NETWORK) and record.slot is not None:
            await self._resources.release_network(record.sandbox_id, record.slot)

    # ---- restart safety --------------------------------------------------------------------------------------

    async def _recover(self) -> None:
        records, orphans = await asyncio.to_thread(self._store.load_all)
        for directory in orphans:
            _log.warning("removing sandbox directory without a readable record", directory=str(directory))
            await asyncio.to_thread(kill_processes_mentioning, str(directory) + "/")
            await asyncio.to_thread(self._store.remove, directory.name)
        await asyncio.to_thread(self._templates.recover)
        await asyncio.to_thread(self._snapshots.recover)
        for record in records:
            if record.slot is not None:
                self._slots.claim(record.slot)
            sandbox = _Sandbox(record)
            self._sandboxes[record.sandbox_id] = sandbox
            log = _log.bind(sandbox_id=record.sandbox_id, state=record.state.value)
            if await self._pauser.recover(sandbox):
                continue  # paused, or caught mid-pause/resume: settled by wrenn.agent.pause
            if record.state is SandboxState.RUNNING and record.run_dir is not None:
                try:
                    sandbox.vm = await self._driver.adopt(record.run_dir)
                except VMMError as exc:
                    log.warning("cannot adopt the VMM; destroying the sandbox", error=str(exc))
                else:
                    log.info("adopted running sandbox", pid=sandbox.vm.pid)
                    continue
            else:
                log.warning("undoing a half-done create or destroy", steps=[s.value for s in record.steps])
            with contextlib.suppress(Exception):
                await self._undo_shielded(sandbox)
        await self._pool.recover(claimed=self._slots.used)
        keep = set(self._sandboxes)
        await self._resources.cleanup_stale(keep, self._slots.used)


def _snapshot_info(meta: SnapshotMeta) -> SnapshotInfo:
    return SnapshotInfo.model_validate(meta.model_dump(exclude={"envd_token"}))


def _memory_mb_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0
