"""Reconciler: compares the database with what each host agent really runs, and repairs the difference.

One pass, per host that is not removed:
- the agent does not answer -> the host is marked ``unreachable`` (the scheduler skips it; a heartbeat revives it);
- a sandbox the database has as running or paused that the agent does not list, or lists as stopped/failed ->
  ``missing`` (a paused sandbox is its files on the host: when the agent lists it as paused it is kept, resumable);
- a row left ``pausing``/``resuming`` for longer than ``transition_grace`` (its API process died or hung mid-call)
  -> settled from the agent's answer (`PauseResume.settle`, the same code a waiting ``connect`` uses);
- a sandbox the agent runs that the database has no live record of (a create rolled back while the agent was
  away, a kill whose destroy call failed) and that is older than a grace period -> destroyed on the agent.
The pass also stops running sandboxes whose end time passed (a safety net under the expiry jobs) and fails records
stuck in ``creating`` for longer than any create can take (their API process died, or the "running" write was
lost), destroying what their host started.

`Reconciler` runs passes every ``interval_s`` in a task owned by the app's lifespan (an async context manager).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Self

import structlog

from wrenn.api._tasks import cancel_and_wait
from wrenn.api.clock import Clock
from wrenn.api.hosts import HostDirectory, HostService, HostState, set_state
from wrenn.api.sandboxes import SandboxService, SandboxState
from wrenn.api.store import Store
from wrenn.protocol.agent import SandboxState as AgentState
from wrenn.protocol.errors import WrennError

_log = structlog.get_logger("wrenn.api.reconciler")

_GONE = (AgentState.STOPPED, AgentState.FAILED, AgentState.STOPPING)
_CHECKED = frozenset({SandboxState.RUNNING, SandboxState.PAUSED})
_IN_TRANSITION = frozenset({SandboxState.PAUSING, SandboxState.RESUMING})


@dataclass
class PassReport:
    hosts_checked: int = 0
    hosts_unreachable: list[str] = field(default_factory=list)
    marked_missing: list[str] = field(default_factory=list)
    orphans_destroyed: list[str] = field(default_factory=list)
    failed_creates: list[str] = field(default_factory=list)
    settled: dict[str, str] = field(default_factory=dict)
    expired: int = 0


async def reconcile_once(
    *,
    store: Store,
    hosts: HostService,
    directory: HostDirectory,
    sandboxes: SandboxService,
    clock: Clock,
    orphan_grace: timedelta = timedelta(minutes=2),
    creating_grace: timedelta = timedelta(minutes=15),
    transition_grace: timedelta = timedelta(minutes=2),
) -> PassReport:
    report = PassReport(
        expired=await sandboxes.expire_overdue(), failed_creates=await sandboxes.fail_stale_creates(creating_grace)
    )
    for host in await hosts.list_hosts():
        if host.state is HostState.REMOVED:
            continue
        report.hosts_checked += 1
        agent = directory.client_for(host.id, host.address)
        try:
            running = await agent.list_sandboxes()
        except WrennError as exc:
            _log.warning("host agent unreachable", host_id=host.id, error=exc.message)
            if host.state is HostState.READY:
                await set_state(store, host.id, HostState.UNREACHABLE)
            report.hosts_unreachable.append(host.id)
            continue
        on_agent = {s.sandbox_id: s for s in running}
        known = {rec.id: rec for rec in await sandboxes.live_on_host(host.id)}
        stuck_before = clock() - transition_grace
        for rec in known.values():
            seen = on_agent.get(rec.id)
            if rec.state in _IN_TRANSITION:
                since = rec.transition_at or rec.started_at
                if since < stuck_before:
                    settled = await sandboxes.lifecycle.settle(rec)
                    if settled is not None:
                        report.settled[rec.id] = settled.value
                continue
            if rec.state not in _CHECKED:
                continue  # creating: the create call owns it
            if seen is None or seen.state in _GONE:
                reason = "host no longer runs it" if rec.state is SandboxState.RUNNING else "host lost its paused files"
                await sandboxes.mark_lost(rec, reason)
                report.marked_missing.append(rec.id)
        now = clock()
        for sandbox_id, info in on_agent.items():
            if sandbox_id in known or info.state in _GONE or now - info.created_at < orphan_grace:
                continue
            with contextlib.suppress(WrennError):
                await agent.destroy_sandbox(sandbox_id)
                report.orphans_destroyed.append(sandbox_id)
    if (
        report.marked_missing
        or report.orphans_destroyed
        or report.hosts_unreachable
        or report.failed_creates
        or report.settled
    ):
        _log.info(
            "reconciled",
            missing=report.marked_missing,
            orphans=report.orphans_destroyed,
            unreachable=report.hosts_unreachable,
            failed_creates=report.failed_creates,
            settled=report.settled,
        )
    return report


class Reconciler:
    """Runs `reconcile_once` every ``interval_s`` until closed; a failing pass is logged, the loop goes on."""

    def __init__(
        self,
        *,
        store: Store,
        hosts: HostService,
        directory: HostDirectory,
        sandboxes: SandboxService,
        clock: Clock,
        interval_s: float,
        transition_grace: timedelta = timedelta(minutes=2),
    ) -> None:
        self._args = {
            "store": store,
            "hosts": hosts,
            "directory": directory,
            "sandboxes": sandboxes,
            "clock": clock,
            "transition_grace": transition_grace,
        }
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="wrenn-reconciler")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await reconcile_once(**self._args)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001  # one bad pass must not stop the loop
                _log.exception("reconcile pass failed")
