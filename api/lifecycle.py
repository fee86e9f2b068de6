"""Pause and resume in the control plane: the E2B routes' state machine over the ``sandboxes`` table (migration 0100)
and the host agent's ``/pause`` and ``/resume``.

States (``sandboxes.state``)::

    running ──pause──> pausing ──agent ok──> paused ──connect/resume──> resuming ──agent ok──> running
       ^                  │ agent failed                                   │ agent failed
       └──────────────────┘ (back to running)                              └──> paused (or failed: the agent says so)

Each transition is one conditional UPDATE, so two callers never both act: the loser sees 409 (already paused) or
the sandbox's current state. ``pausing``, ``paused`` and ``resuming`` are live (visible, the reconciler keeps
them), but only ``creating``/``running`` hold host capacity. The timeout policy survives: ``auto_pause`` stays on
the record, and a resume sets a fresh end time (``now + timeout`` of the connect/resume call) with its expiry job.
A crash of the control plane between the UPDATE and the agent's answer leaves ``pausing``/``resuming``;
`settle` asks the agent what is true and records it (a waiting ``connect`` calls it, and the reconciler does for
rows stuck longer than its bound; ``transition_at`` says since when).

Before the agent pauses the VM, ``on_pausing`` is awaited: the proxy stops routing to the sandbox and lets its
in-flight requests finish (bounded by the drain grace) — the row already says ``pausing``, so nothing new is routed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TypeVar

import falcon.asgi
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wrenn.api.hosts import HostDirectory
from wrenn.api.sandboxes._records import SandboxRecord, SandboxState
from wrenn.api.store import Store
from wrenn.protocol.agent import SandboxState as AgentState
from wrenn.protocol.errors import Conflict, Invalid, NotFound, WrennError

_log = structlog.get_logger("wrenn.api.lifecycle")

_TEAM = "(%(team)s::uuid IS NULL OR team_id = %(team)s::uuid)"
_MAX_TIMEOUT_S = 86400
_BODY_LIMIT = 64 * 1024


class PauseRequest(BaseModel):
    """``POST /sandboxes/{id}/pause`` body; optional (older SDKs send none)."""

    model_config = ConfigDict(extra="ignore")

    memory: bool | None = Field(default=None, description="false keeps only the disk; absent or true: everything")


class ResumeRequest(BaseModel):
    """Legacy ``POST /sandboxes/{id}/resume`` body (e2b 2.0-2.5, 1.x)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    timeout: int = Field(default=300, ge=0, le=_MAX_TIMEOUT_S)
    auto_pause: bool | None = Field(default=None, alias="autoPause")


_M = TypeVar("_M", bound=BaseModel)


async def optional_body(req: falcon.asgi.Request, model: type[_M]) -> _M:
    """Parse a JSON body that may be absent or empty (then the model's defaults)."""
    raw = await req.bounded_stream.read(_BODY_LIMIT)
    try:
        return model.model_validate(json.loads(raw) if raw.strip() else {})
    except (ValueError, ValidationError) as exc:
        raise Invalid(f"invalid body: {exc}") from exc


async def _transition(
    store: Store, sandbox_id: str, team_id: uuid.UUID | None, source: SandboxState, target: SandboxState, **sets: object
) -> SandboxRecord | None:
    assignments = "".join(f", {column} = %({column})s" for column in sets)
    row = await store.fetch_one(
        f"UPDATE sandboxes SET state = %(target)s{assignments} "  # noqa: S608 - column names are ours
        f"WHERE id = %(id)s AND state = %(source)s AND {_TEAM} RETURNING *",
        {"target": target.value, "id": sandbox_id, "source": source.value, "team": team_id, **sets},
    )
    return None if row is None else SandboxRecord.from_row(row)


async def _current(store: Store, sandbox_id: str, team_id: uuid.UUID | None) -> SandboxRecord | None:
    row = await store.fetch_one(
        "SELECT * FROM sandboxes WHERE id = %(id)s AND (%(team)s::uuid IS NULL OR team_id = %(team)s::uuid)",
        {"id": sandbox_id, "team": team_id},
    )
    return None if row is None else SandboxRecord.from_row(row)


class PauseResume:
    """Pause and resume of sandboxes; `SandboxService` owns one and tells its listeners (proxy routes, expiry)."""

    def __init__(
        self,
        *,
        store: Store,
        hosts: HostDirectory,
        clock: Callable[[], datetime],
        on_paused: Callable[[SandboxRecord], None],
        on_resumed: Callable[[SandboxRecord], Awaitable[None]],
        on_pausing: Callable[[SandboxRecord], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._hosts = hosts
        self._clock = clock
        self._on_paused = on_paused
        self._on_resumed = on_resumed
        self._on_pausing = on_pausing
        self.transition_wait_s = 120.0
        """How long a connect waits for a pause/resume in flight before asking the agent what is true (a control
        plane that died mid-transition leaves the row ``pausing``/``resuming``; `settle` repairs it)."""

    async def pause(self, team_id: uuid.UUID | None, sandbox_id: str, *, memory: bool = True) -> SandboxRecord:
        """running -> paused. Conflict when paused (or on its way); NotFound when not live for this team."""
        for _attempt in range(2):  # a resume finishing between the two reads leaves it running: try again
            rec = await _transition(
                self._store,
                sandbox_id,
                team_id,
                SandboxState.RUNNING,
                SandboxState.PAUSING,
                pause_memory=memory,
                transition_at=self._clock(),
            )
            if rec is not None:
                break
            current = await _current(self._store, sandbox_id, team_id)
            if current is not None and current.state in {SandboxState.PAUSED, SandboxState.PAUSING}:
                raise Conflict(f"sandbox '{sandbox_id}' is already paused")
            if current is not None and current.state is SandboxState.RESUMING:
                raise Conflict(f"sandbox '{sandbox_id}' is being resumed")
            if current is None or current.state is not SandboxState.RUNNING:
                raise NotFound(f"sandbox '{sandbox_id}' not found")
        else:
            raise Conflict(f"sandbox '{sandbox_id}' is being resumed")
        log = _log.bind(sandbox_id=sandbox_id, host_id=rec.host_id)
        try:
            if self._on_pausing is not None:
                await self._on_pausing(rec)  # the proxy drains: in-flight requests finish, new ones wait or 502
            self._on_paused(rec)  # ...and cuts what outlived the drain, before the VM stops
            agent = await self._hosts.client(rec.host_id or "")
            await agent.pause_sandbox(sandbox_id, memory=memory)
        except Conflict:
            pass  # the agent has it paused already (a retried call after a lost answer)
        except BaseException as exc:
            log.warning("pause failed on the host; the sandbox runs on", error=repr(exc))
            back = await _transition(self._store, sandbox_id, None, SandboxState.PAUSING, SandboxState.RUNNING)
            if back is not None:
                await self._on_resumed(back)
            raise
        paused = await _transition(
            self._store, sandbox_id, None, SandboxState.PAUSING, SandboxState.PAUSED, paused_at=self._clock()
        )
        if paused is None:
            raise NotFound(f"sandbox '{sandbox_id}' was killed while it paused")
        log.info("sandbox paused", memory=memory)
        return paused

    async def resume(
        self, team_id: uuid.UUID | None, sandbox_id: str, *, timeout_s: int, auto_pause: bool | None = None
    ) -> SandboxRecord | None:
        """paused -> running with a fresh end time; None when the sandbox was not paused (the caller decides).

        A sandbox caught mid-pause or mid-resume is waited for (bounded by `transition_wait_s`); a transition still
        unfinished then is settled from the agent's answer (see `settle`) and the resume tried once more."""
        sets: dict[str, object] = {"transition_at": self._clock()}
        if auto_pause is not None:
            sets["auto_pause"] = auto_pause
        deadline = asyncio.get_running_loop().time() + self.transition_wait_s
        settled = False
        while True:
            rec = await _transition(
                self._store, sandbox_id, team_id, SandboxState.PAUSED, SandboxState.RESUMING, **sets
            )
            if rec is not None:
                break
            current = await _current(self._store, sandbox_id, team_id)
            if current is not None and current.state is SandboxState.PAUSED:
                continue  # the pause finished between the two reads: try the transition again
            if current is None or current.state not in {SandboxState.RESUMING, SandboxState.PAUSING}:
                return None
            if asyncio.get_running_loop().time() > deadline:
                if settled:
                    raise Conflict(f"sandbox '{sandbox_id}' is still {current.state.value}; retry")
                await self.settle(current)
                settled = True
                continue
            await asyncio.sleep(0.1)  # another request is moving it; poll its recorded state
        log = _log.bind(sandbox_id=sandbox_id, host_id=rec.host_id)
        try:
            agent = await self._hosts.client(rec.host_id or "")
            info = await agent.resume_sandbox(sandbox_id)
        except BaseException as exc:
            log.warning("resume failed on the host", error=repr(exc))
            await self.settle(rec)
            if isinstance(exc, WrennError) and exc.status == 404:
                raise NotFound(f"sandbox '{sandbox_id}' is gone from its host") from exc
            raise
        now = self._clock()
        end_at = now + timedelta(seconds=timeout_s)
        running = await _transition(
            self._store,
            sandbox_id,
            None,
            SandboxState.RESUMING,
            SandboxState.RUNNING,
            end_at=end_at,
            envd_address=info.envd_address,
            idle_timeout_s=timeout_s,
            ttl_set_at=now,
        )
        if running is None:
            raise NotFound(f"sandbox '{sandbox_id}' was killed while it resumed")
        await self._on_resumed(running)
        log.info("sandbox resumed", timeout=timeout_s)
        return running

    async def settle(self, rec: SandboxRecord) -> SandboxState | None:
        """Record what the agent says about a sandbox left ``pausing``/``resuming`` (failure or crash): running,
        paused, failed on its host, or missing (the host does not have it). Returns the state recorded, None when
        nothing was (the host did not answer, or someone else moved the row first)."""
        try:
            agent = await self._hosts.client(rec.host_id or "")
            info = await agent.get_sandbox(rec.id)
        except NotFound:
            state = SandboxState.MISSING
        except WrennError:
            return None  # host unreachable: leave it for the next reconcile
        else:
            state = {
                AgentState.RUNNING: SandboxState.RUNNING,
                AgentState.PAUSED: SandboxState.PAUSED,
                AgentState.FAILED: SandboxState.FAILED,
                AgentState.STOPPED: SandboxState.MISSING,
                AgentState.STOPPING: SandboxState.MISSING,
            }.get(info.state, rec.state)
        current = await _current(self._store, rec.id, None)
        if current is None or current.state not in {SandboxState.PAUSING, SandboxState.RESUMING}:
            return None
        final: dict[str, object] = {}
        if state in {SandboxState.MISSING, SandboxState.FAILED}:
            reason = "host no longer has it" if state is SandboxState.MISSING else "failed on its host"
            final = {"stopped_at": self._clock(), "stop_reason": f"{current.state.value}: {reason}"}
        done = await _transition(self._store, rec.id, None, current.state, state, **final)
        if done is None:
            return None
        if state is SandboxState.RUNNING:
            await self._on_resumed(done)
        elif final:
            self._on_paused(done)  # gone: the proxy forgets it
        _log.info("settled an interrupted pause/resume", sandbox_id=rec.id, state=state.value)
        return state
