"""`SandboxService`: the one implementation of the sandbox lifecycle behind the E2B REST routes, the proxy and jobs.

Create: validate -> check the template -> place on a host and record ``creating`` (one transaction, host rows
locked) -> ask the agent (returns once envd answers) -> record ``running`` and queue the expiry job. A failure after
the record exists removes it again and destroys whatever the agent may have started, so a failed create leaves
nothing behind. Kill, timeout expiry and the reconciler all end in `_stop`, which tells the listeners (the proxy
cuts the sandbox's open streams).

Visibility: every call takes the caller's team; a sandbox of another team is `NotFound`, exactly like one that
does not exist.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote

import httpx
import psycopg
import structlog

from wrenn.api import scheduler
from wrenn.api.auth import hash_api_key
from wrenn.api.clock import Clock, Ids
from wrenn.api.hosts import HostDirectory
from wrenn.api.jobs import Job, JobQueue
from wrenn.api.lifecycle import PauseResume
from wrenn.api.proxy import ENVD_PORT, ProxyTarget
from wrenn.api.sandboxes import _records as records
from wrenn.api.sandboxes._activity import ActivityTracker
from wrenn.api.sandboxes._models import (
    Lifecycle,
    ListedSandbox,
    NewSandbox,
    SandboxCreated,
    SandboxDetail,
    SandboxMetric,
)
from wrenn.api.sandboxes._records import SandboxRecord, SandboxState
from wrenn.api.store import Store
from wrenn.protocol.agent import CreateSandbox
from wrenn.protocol.errors import Conflict, Invalid, NotFound, WrennError

_log = structlog.get_logger("wrenn.api.sandboxes")

EXPIRE_JOB = "sandbox.expire"
CLIENT_ID = "wrenn"
_RESUMABLE = frozenset({SandboxState.PAUSING, SandboxState.PAUSED, SandboxState.RESUMING})
_AUTO_RESUME_TIMEOUT_S = 300  # records from before migration 0102 carry no idle window


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """The knobs of the sandbox domain (from `Settings`)."""

    templates: frozenset[str]
    domain: str | None
    envd_version: str = "0.6.13"
    vcpus: int = 1
    memory_mb: int = 512
    disk_mb: int = 2048
    heartbeat_ttl_s: float = 60.0
    internet_default: bool = False
    vcpu_overcommit: float = 16.0
    activity_interval_s: float = 5.0
    """At most one end-time bump per sandbox per this many seconds for proxy traffic (`ActivityTracker`)."""
    drain_grace_s: float = 10.0
    """How long a pause lets in-flight proxy requests finish before it cuts them."""


@dataclass(frozen=True, slots=True)
class ListQuery:
    metadata: dict[str, str]
    states: frozenset[str]
    template: str | None
    started_after: datetime | None
    descending: bool
    limit: int
    next_token: str | None


def parse_metadata_query(raw: str | None) -> dict[str, str]:
    """The SDK's ``metadata`` query: ``urlencode({quote(k): quote(v)})``, so values are quoted twice."""
    if not raw:
        return {}
    try:
        return {unquote(k): unquote(v) for k, v in parse_qsl(raw, keep_blank_values=True, strict_parsing=True)}
    except ValueError as exc:
        raise Invalid("metadata filter must be key=value pairs joined by '&'") from exc


def _encode_token(rec: SandboxRecord) -> str:
    raw = json.dumps([rec.started_at.isoformat(), rec.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        started, sandbox_id = json.loads(raw)
        return datetime.fromisoformat(started), str(sandbox_id)
    except (ValueError, TypeError) as exc:
        raise Invalid("invalid nextToken") from exc


class SandboxService:
    def __init__(
        self,
        *,
        store: Store,
        queue: JobQueue,
        hosts: HostDirectory,
        clock: Clock,
        ids: Ids,
        config: SandboxConfig,
    ) -> None:
        self._store = store
        self._queue = queue
        self._hosts = hosts
        self._clock = clock
        self._ids = ids
        self.config = config
        self._stop_listeners: list[Callable[[str], object]] = []
        self._start_listeners: list[Callable[[ProxyTarget], object]] = []
        self._pausing_listeners: list[Callable[[str, float], Awaitable[object]]] = []
        self.activity = ActivityTracker(
            lambda seen: records.record_activity(store, seen), clock, interval_s=config.activity_interval_s
        )
        self._http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.resolve_snapshot: Callable[[uuid.UUID, str], Awaitable[tuple[str, int, int] | None]] = _no_snapshots
        self.lifecycle = PauseResume(
            store=store,
            hosts=hosts,
            clock=clock,
            on_pausing=self._pausing,
            on_paused=self._paused,
            on_resumed=self._resumed,
        )

    def on_stop(self, listener: Callable[[str], object]) -> None:
        """Call ``listener(sandbox_id)`` whenever a sandbox stops (killed, expired, lost)."""
        self._stop_listeners.append(listener)

    def on_start(self, listener: Callable[[ProxyTarget], object]) -> None:
        """Call ``listener(target)`` when a sandbox starts running (the proxy learns its route without a query)."""
        self._start_listeners.append(listener)

    def on_pausing(self, listener: Callable[[str, float], Awaitable[object]]) -> None:
        """Await ``listener(sandbox_id, grace_s)`` before a sandbox's VM is paused (the proxy drains it)."""
        self._pausing_listeners.append(listener)

    def register_jobs(self) -> None:
        self._queue.register(EXPIRE_JOB, self._expire_job)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _enqueue_expiry(self, sandbox_id: str, end_at: datetime) -> None:
        """One expiry job per sandbox and end time (activity re-queues it; see `_expire_job`)."""
        key = f"{EXPIRE_JOB}:{sandbox_id}:{end_at.timestamp():.3f}"
        await self._queue.enqueue(EXPIRE_JOB, {"sandbox_id": sandbox_id}, run_at=end_at, dedupe_key=key)

    async def _queue_expiry(self, sandbox_id: str, end_at: datetime) -> None:
        try:
            await self._enqueue_expiry(sandbox_id, end_at)
        except WrennError as exc:
            _log.warning(
                "expiry job not queued; the reconciler sweep will stop it", sandbox_id=sandbox_id, error=exc.message
            )

    async def aclose(self) -> None:
        await self.activity.aclose()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- E2B operations -------------------------------------------------------------------------------------

    async def create(
        self, team_id: uuid.UUID, body: NewSandbox, *, idempotency_key: str | None = None
    ) -> SandboxCreated:
        vcpus, memory_mb, template = self.config.vcpus, self.config.memory_mb, body.template_id
        if body.template_id not in self.config.templates:
            snapshot = await self.resolve_snapshot(team_id, body.template_id)  # wrenn.api.snapshots
            if snapshot is None:
                raise NotFound(f"template '{body.template_id}' not found")
            template, vcpus, memory_mb = snapshot
        if idempotency_key is not None:
            earlier = await records.get_by_idempotency_key(self._store, team_id, idempotency_key)
            if earlier is not None:
                return self._repeat(earlier)
        now = self._clock()
        sandbox_id = self._ids.short(20)
        token = secrets.token_hex(16) if body.secure else None
        internet = self.config.internet_default if body.allow_internet_access is None else body.allow_internet_access
        rec = SandboxRecord(
            id=sandbox_id,
            team_id=team_id,
            host_id=None,
            template=template,
            state=SandboxState.CREATING,
            metadata=dict(body.metadata),
            vcpus=vcpus,
            memory_mb=memory_mb,
            disk_mb=self.config.disk_mb,
            envd_address=None,
            envd_version=self.config.envd_version,
            envd_token=token,
            allow_internet=internet,
            auto_pause=body.auto_pause,
            created_at=now,
            started_at=now,
            end_at=now + timedelta(seconds=body.timeout),
            stopped_at=None,
            stop_reason=None,
            idempotency_key=idempotency_key,
            auto_resume=body.auto_resume is not None and body.auto_resume.enabled,
            idle_timeout_s=body.timeout,
            ttl_set_at=now,
        )
        try:
            async with self._store.transaction() as conn:
                await conn.execute("SET LOCAL synchronous_commit TO off")  # see records.relaxed_write
                placement = await scheduler.place(
                    conn,
                    vcpus=rec.vcpus,
                    memory_mb=rec.memory_mb,
                    now=now,
                    heartbeat_ttl=timedelta(seconds=self.config.heartbeat_ttl_s),
                    overcommit_vcpus=self.config.vcpu_overcommit,
                )
                rec = replace(rec, host_id=placement.host_id)
                await records.insert(conn, rec)
        except psycopg.errors.UniqueViolation:
            # the same Idempotency-Key raced us: answer like the request that won
            earlier = await records.get_by_idempotency_key(self._store, team_id, idempotency_key or "")
            if earlier is None:
                raise
            return self._repeat(earlier)
        log = _log.bind(sandbox_id=sandbox_id, host_id=placement.host_id, team_id=str(team_id))
        agent = self._hosts.client_for(placement.host_id, placement.address)
        spec = CreateSandbox(
            sandbox_id=sandbox_id,
            template=rec.template,
            vcpus=rec.vcpus,
            memory_mb=rec.memory_mb,
            disk_mb=rec.disk_mb,
            env_vars=dict(body.env_vars),
            metadata=rec.metadata,
            timeout_s=body.timeout,
            envd_access_token=token,
            allow_internet=internet,
        )
        try:
            # The expiry job is queued in the background, off the response path (its durable commit costs ~5 ms);
            # it acts only on a running sandbox past its end, and should it be lost the reconciler's overdue
            # sweep stops the sandbox instead.
            self._background(self._queue_expiry(sandbox_id, rec.end_at))
            info = await agent.create_sandbox(spec)
            running = await records.mark_running(self._store, sandbox_id, envd_address=info.envd_address)
            if running is None:
                raise NotFound(f"sandbox '{sandbox_id}' was removed while it was created")
            self._notify_start(running)
        except BaseException as exc:
            await asyncio.shield(self._undo_create(sandbox_id, agent.destroy_sandbox))
            if isinstance(exc, WrennError) and exc.status == 404 and "template" in exc.message.lower():
                raise NotFound(f"template '{body.template_id}' not found on its host: {exc.message}") from exc
            raise
        log.info("sandbox created", template=rec.template, timeout=body.timeout)
        return SandboxCreated(
            template_id=rec.template,
            sandbox_id=sandbox_id,
            client_id=CLIENT_ID,
            envd_version=rec.envd_version,
            envd_access_token=token,
            domain=self.config.domain,
        )

    def _repeat(self, rec: SandboxRecord) -> SandboxCreated:
        """The answer to a create repeated with the same Idempotency-Key."""
        if rec.state is not SandboxState.RUNNING:
            raise Conflict("a create with this Idempotency-Key is still in progress")
        return self._created(rec)

    def _created(self, rec: SandboxRecord) -> SandboxCreated:
        """What create, connect and resume answer for a running sandbox (E2B's `Sandbox` body)."""
        return SandboxCreated(
            template_id=rec.template,
            sandbox_id=rec.id,
            client_id=CLIENT_ID,
            envd_version=rec.envd_version,
            envd_access_token=rec.envd_token,
            domain=self.config.domain,
        )

    async def _undo_create(self, sandbox_id: str, destroy: Callable[[str], object]) -> None:
        try:
            async with asyncio.timeout(60):
                result = destroy(sandbox_id)
                if asyncio.iscoroutine(result):
                    await result
        except Exception:  # noqa: BLE001  # best effort; the reconciler destroys leftovers
            _log.warning("could not destroy a half-created sandbox", sandbox_id=sandbox_id, exc_info=True)
        await records.delete(self._store, sandbox_id)

    async def get(self, team_id: uuid.UUID | None, sandbox_id: str) -> SandboxDetail:
        rec = await self._live(team_id, sandbox_id, paused_too=True)
        return SandboxDetail(
            **self._listed(rec).model_dump(),
            envd_access_token=rec.envd_token,
            allow_internet_access=rec.allow_internet,
            domain=self.config.domain,
            lifecycle=Lifecycle(auto_resume=rec.auto_resume, on_timeout="pause" if rec.auto_pause else "kill"),
        )

    async def list_page(self, team_id: uuid.UUID | None, query: ListQuery) -> tuple[list[ListedSandbox], str | None]:
        wanted = query.states & {"running", "paused"}
        states = tuple(
            sorted(
                wanted
                | ({"resuming"} if "running" in wanted else set())
                | ({"pausing"} if "paused" in wanted else set())
            )
        )
        if not states:
            return [], None
        after = _decode_token(query.next_token) if query.next_token else None
        recs = await records.list_live(
            self._store,
            team_id=team_id,
            metadata=query.metadata,
            template=query.template,
            started_after=query.started_after,
            after=after,
            descending=query.descending,
            limit=query.limit + 1,
            states=states,
        )
        next_token = _encode_token(recs[query.limit - 1]) if len(recs) > query.limit else None
        return [self._listed(r) for r in recs[: query.limit]], next_token

    async def count_running(self, team_id: uuid.UUID | None) -> int:
        return await records.count_running(self._store, team_id)

    async def kill(self, team_id: uuid.UUID | None, sandbox_id: str) -> None:
        rec = await records.stop_running(self._store, sandbox_id, team_id, reason="killed", at=self._clock())
        if rec is None:
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        self._notify(rec.id)
        await self._destroy_on_host(rec, "killed")

    async def set_timeout(self, team_id: uuid.UUID | None, sandbox_id: str, timeout_s: int) -> None:
        """E2B ``set_timeout``: the end is now + timeout (overwritten, may shorten) and the idle window becomes
        ``timeout_s`` (docs/pause-resume.md, "Activity and the timeout")."""
        now = self._clock()
        end_at = now + timedelta(seconds=timeout_s)
        if not await records.set_end(self._store, sandbox_id, team_id, end_at, timeout_s=timeout_s, at=now):
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        await self._enqueue_expiry(sandbox_id, end_at)

    async def connect(self, team_id: uuid.UUID | None, sandbox_id: str, timeout_s: int) -> SandboxCreated:
        """Connect to a running sandbox: extends (never shortens) its TTL. Paused sandboxes come with pause."""
        now = self._clock()
        end_at = now + timedelta(seconds=timeout_s)
        if not await records.extend_end(self._store, sandbox_id, team_id, end_at, at=now):
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        rec = await self._live(team_id, sandbox_id)
        await self._enqueue_expiry(sandbox_id, rec.end_at)
        return self._created(rec)

    async def pause(self, team_id: uuid.UUID | None, sandbox_id: str, *, memory: bool = True) -> None:
        """E2B pause: 204; Conflict (409) when already paused; NotFound (404). See `wrenn.api.lifecycle`."""
        await self.lifecycle.pause(team_id, sandbox_id, memory=memory)

    async def connect_or_resume(
        self, team_id: uuid.UUID | None, sandbox_id: str, timeout_s: int, *, auto_pause: bool | None = None
    ) -> tuple[SandboxCreated, bool]:
        """Connect, resuming a paused sandbox first; True when it was resumed (E2B answers 201, else 200)."""
        rec = await self.lifecycle.resume(team_id, sandbox_id, timeout_s=timeout_s, auto_pause=auto_pause)
        if rec is None:
            return await self.connect(team_id, sandbox_id, timeout_s), False
        return self._created(rec), True

    async def _pausing(self, rec: SandboxRecord) -> None:
        """Before the VM stops: the proxy stops routing to it and drains its in-flight requests (bounded)."""
        for listener in self._pausing_listeners:
            try:
                await listener(rec.id, self.config.drain_grace_s)
            except Exception:  # noqa: BLE001  # a failed drain must not stop the pause; streams get cut below
                _log.warning("drain before pause failed", sandbox_id=rec.id, exc_info=True)

    def _paused(self, rec: SandboxRecord) -> None:
        self._notify(rec.id)  # the proxy forgets the route and cuts whatever outlived the drain

    async def _resumed(self, rec: SandboxRecord) -> None:
        self._notify_start(rec)
        await self._enqueue_expiry(rec.id, rec.end_at)

    async def refresh(self, team_id: uuid.UUID | None, sandbox_id: str, duration_s: int) -> None:
        """The legacy keep-alive ping (``POST /sandboxes/{id}/refreshes``): extends, never shortens."""
        now = self._clock()
        end_at = now + timedelta(seconds=duration_s)
        if not await records.extend_end(self._store, sandbox_id, team_id, end_at, at=now):
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        rec = await self._live(team_id, sandbox_id)
        await self._enqueue_expiry(sandbox_id, rec.end_at)

    async def metrics(self, team_id: uuid.UUID | None, sandbox_id: str) -> list[SandboxMetric]:
        """One sample read from envd's ``GET /metrics`` now; [] when envd has none (no history is kept yet)."""
        rec = await self._live(team_id, sandbox_id)
        if rec.envd_address is None:
            return []
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=5.0)
        headers = {"X-Access-Token": rec.envd_token} if rec.envd_token else {}
        try:
            response = await self._http.get(f"http://{rec.envd_address}/metrics", headers=headers)
            data = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            data = None
        if not isinstance(data, Mapping):
            return []
        now = self._clock()
        try:
            return [
                SandboxMetric(
                    timestamp=now,
                    timestamp_unix=int(now.timestamp()),
                    cpu_count=int(data.get("cpu_count", rec.vcpus)),
                    cpu_used_pct=float(data.get("cpu_used_pct", 0.0)),
                    mem_used=int(data.get("mem_used", 0)),
                    mem_total=int(data.get("mem_total", rec.memory_mb << 20)),
                    mem_cache=int(data.get("mem_cache", 0)),
                    disk_used=int(data.get("disk_used", 0)),
                    disk_total=int(data.get("disk_total", rec.disk_mb << 20)),
                )
            ]
        except (TypeError, ValueError):
            return []

    # -- proxy backend --------------------------------------------------------------------------------------

    async def proxy_target(self, sandbox_id: str) -> ProxyTarget | None:
        rec = await records.get(self._store, sandbox_id)
        if rec is None or rec.envd_address is None:
            return None
        return _target(rec)

    def touch(self, sandbox_id: str, idle_timeout_s: int | None) -> None:
        """Proxy traffic reached a running sandbox: coalesced into end-time bumps (`ActivityTracker`)."""
        self.activity.touch(sandbox_id, idle_timeout_s)

    async def auto_resume(self, sandbox_id: str) -> None:
        """Resume a paused sandbox created with ``autoResume: {enabled: true}`` for proxy traffic, with the idle
        window it had (its last TTL). Returns once it runs (or ran already); raises when it cannot resume."""
        rec = await records.get(self._store, sandbox_id)
        if rec is not None and rec.state is SandboxState.RUNNING:
            return  # resumed meanwhile (another request, another API process)
        if rec is None or rec.state not in _RESUMABLE:
            raise NotFound(f"sandbox '{sandbox_id}' is not paused")
        if not rec.auto_resume:
            raise Conflict(f"sandbox '{sandbox_id}' was not created with auto-resume")
        timeout_s = rec.idle_timeout_s if rec.idle_timeout_s is not None else _AUTO_RESUME_TIMEOUT_S
        if await self.lifecycle.resume(None, sandbox_id, timeout_s=timeout_s) is not None:
            _log.info("sandbox auto-resumed by proxy traffic", sandbox_id=sandbox_id, timeout=timeout_s)

    def _notify_start(self, rec: SandboxRecord) -> None:
        target = _target(rec)
        for listener in self._start_listeners:
            with contextlib.suppress(Exception):
                listener(target)

    async def team_of_api_key(self, api_key: str) -> str | None:
        row = await self._store.fetch_one(
            "SELECT team_id FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL", (hash_api_key(api_key),)
        )
        return None if row is None else str(row["team_id"])

    async def sandbox_for_token(self, access_token: str) -> str | None:
        row = await self._store.fetch_one(
            "SELECT id FROM sandboxes WHERE envd_token = %s AND state = 'running' AND envd_token IS NOT NULL",
            (access_token,),
        )
        return None if row is None else str(row["id"])

    async def sandbox_for_signature(
        self, path: str, operation: str, username: str, signature: str, expiration: str
    ) -> str | None:
        """Find the running sandbox whose token signs this URL (reference 3.5). One hash per running sandbox with a
        token: fine for a single node; a fleet would want the sandbox id in the URL (per-sandbox host names)."""
        if not signature.startswith("v1_"):
            return None
        rows = await self._store.fetch_all(
            "SELECT id, envd_token FROM sandboxes WHERE state = 'running' AND envd_token IS NOT NULL LIMIT 10000"
        )
        suffix = f":{expiration}" if expiration else ""
        for row in rows:
            raw = f"{path}:{operation}:{username}:{row['envd_token']}{suffix}".encode()
            digest = base64.b64encode(hashlib.sha256(raw).digest()).rstrip(b"=").decode()
            if hmac.compare_digest(f"v1_{digest}", signature):
                return str(row["id"])
        return None

    # -- background -----------------------------------------------------------------------------------------

    async def _expire_job(self, job: Job) -> None:
        sandbox_id = str(job.payload.get("sandbox_id", ""))
        rec = await records.get(self._store, sandbox_id)
        if rec is not None and rec.state is SandboxState.CREATING:
            raise Conflict(f"sandbox '{sandbox_id}' is still being created; expiry retried")
        if rec is None or rec.state is not SandboxState.RUNNING:
            return
        if rec.end_at > self._clock():
            # extended: by a call that queued its own job (deduplicated) or by activity, which queues none
            await self._enqueue_expiry(rec.id, rec.end_at)
            return
        await self._time_out(rec)

    async def _time_out(self, rec: SandboxRecord) -> None:
        """The sandbox's ``onTimeout``: pause (autoPause) or kill."""
        if rec.auto_pause:
            try:
                await self.lifecycle.pause(None, rec.id)
            except (Conflict, NotFound):
                return  # paused, killed or resumed meanwhile
            return
        await self._stop(rec, SandboxState.STOPPED, "timeout")

    async def expire_overdue(self) -> int:
        """Stop every running sandbox past its end time (a safety net under the expiry jobs)."""
        count = 0
        for sandbox_id in await records.expired(self._store, self._clock()):
            rec = await records.get(self._store, sandbox_id)
            if rec is not None and rec.state is SandboxState.RUNNING:
                await self._time_out(rec)
                count += 1
        return count

    async def fail_stale_creates(self, older_than: timedelta) -> list[str]:
        """Records stuck in ``creating`` (the creating API process died, or its "running" write was lost) become
        ``failed``, and whatever their host started is destroyed."""
        failed = []
        for rec in await records.stale_creating(self._store, self._clock() - older_than):
            reason = "create never finished"
            if await records.stop(self._store, rec.id, state=SandboxState.FAILED, reason=reason, at=self._clock()):
                failed.append(rec.id)
                self._notify(rec.id)
                await self._destroy_on_host(rec, reason)
        return failed

    async def mark_lost(self, rec: SandboxRecord, reason: str) -> None:
        """The reconciler found the host no longer runs this sandbox."""
        if await records.stop(self._store, rec.id, state=SandboxState.MISSING, reason=reason, at=self._clock()):
            self._notify(rec.id)

    async def live_on_host(self, host_id: str) -> Sequence[SandboxRecord]:
        return await records.live_on_host(self._store, host_id)

    # -- internals ------------------------------------------------------------------------------------------

    async def _live(self, team_id: uuid.UUID | None, sandbox_id: str, *, paused_too: bool = False) -> SandboxRecord:
        rec = await records.get_live(self._store, sandbox_id, team_id)
        visible = {SandboxState.RUNNING}
        if paused_too:  # mid-transition sandboxes show as where they are heading (see `_listed`)
            visible |= {SandboxState.PAUSING, SandboxState.PAUSED, SandboxState.RESUMING}
        if rec is None or rec.state not in visible:
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        return rec

    async def _stop(self, rec: SandboxRecord, state: SandboxState, reason: str) -> None:
        """Record the stop first (the API answers 404 at once), then destroy on the host; idempotent."""
        if not await records.stop(self._store, rec.id, state=state, reason=reason, at=self._clock()):
            return
        self._notify(rec.id)
        await self._destroy_on_host(rec, reason)

    async def _destroy_on_host(self, rec: SandboxRecord, reason: str) -> None:
        if rec.host_id is not None:
            try:
                agent = await self._hosts.client(rec.host_id)
                await agent.destroy_sandbox(rec.id)
            except WrennError as exc:
                # The record is final; the reconciler destroys what the host still runs.
                _log.warning("destroy on host failed", sandbox_id=rec.id, host_id=rec.host_id, error=exc.message)
        _log.info("sandbox stopped", sandbox_id=rec.id, reason=reason)

    def _notify(self, sandbox_id: str) -> None:
        self.activity.forget(sandbox_id)
        for listener in self._stop_listeners:
            with contextlib.suppress(Exception):
                listener(sandbox_id)

    def _listed(self, rec: SandboxRecord) -> ListedSandbox:
        return ListedSandbox(
            template_id=rec.template,
            sandbox_id=rec.id,
            client_id=CLIENT_ID,
            started_at=rec.started_at,
            end_at=rec.end_at,
            cpu_count=rec.vcpus,
            memory_mb=rec.memory_mb,
            disk_size_mb=rec.disk_mb,
            state="paused" if rec.state in {SandboxState.PAUSED, SandboxState.PAUSING} else "running",
            envd_version=rec.envd_version,
            metadata=rec.metadata,
        )


async def _no_snapshots(_team_id: uuid.UUID, _template_id: str) -> tuple[str, int, int] | None:
    return None


def _target(rec: SandboxRecord) -> ProxyTarget:
    host, _, port = (rec.envd_address or "").rpartition(":")
    return ProxyTarget(
        sandbox_id=rec.id,
        team_id=str(rec.team_id),
        host=host or "127.0.0.1",
        envd_port=int(port) if port.isdigit() else ENVD_PORT,
        access_token=rec.envd_token,
        running=rec.state is SandboxState.RUNNING,
        paused=rec.state in _RESUMABLE,
        auto_resume=rec.auto_resume,
        idle_timeout_s=rec.idle_timeout_s,
    )
