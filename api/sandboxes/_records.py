"""The control plane's sandbox record and its SQL (table ``sandboxes``, migration 0051)."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from wrenn.api.store import Store
from wrenn.api.store._pool import Connection


class SandboxState(enum.StrEnum):
    """Lifecycle of a sandbox as the control plane records it.

    creating -> running -> stopped; creating -> failed; running -> missing (the host lost it, reconciler).
    running -> pausing -> paused -> resuming -> running (`wrenn.api.lifecycle`, migration 0100).
    Live states are visible through the E2B API and kept by the reconciler; only ``creating``/``running`` hold
    host capacity.
    """

    CREATING = "creating"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    STOPPED = "stopped"
    FAILED = "failed"
    MISSING = "missing"


LIVE_STATES = (
    SandboxState.CREATING.value,
    SandboxState.RUNNING.value,
    SandboxState.PAUSING.value,
    SandboxState.PAUSED.value,
    SandboxState.RESUMING.value,
)


@dataclass(frozen=True, slots=True)
class SandboxRecord:
    id: str
    team_id: uuid.UUID
    host_id: str | None
    template: str
    state: SandboxState
    metadata: dict[str, str]
    vcpus: int
    memory_mb: int
    disk_mb: int
    envd_address: str | None
    envd_version: str
    envd_token: str | None
    allow_internet: bool
    auto_pause: bool
    created_at: datetime
    started_at: datetime
    end_at: datetime
    stopped_at: datetime | None
    stop_reason: str | None
    idempotency_key: str | None = None
    auto_resume: bool = False
    idle_timeout_s: int | None = None
    """The TTL last granted (create, set_timeout, resume): activity keeps ``end_at`` at least this far ahead."""
    ttl_set_at: datetime | None = None
    """When an explicit call last set the TTL; activity never moves ``end_at`` past this + `ACTIVITY_CAP`."""
    transition_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> SandboxRecord:
        return cls(
            id=row["id"],
            team_id=row["team_id"],
            host_id=row["host_id"],
            template=row["template"],
            state=SandboxState(row["state"]),
            metadata=dict(row["metadata"]),
            vcpus=row["vcpus"],
            memory_mb=row["memory_mb"],
            disk_mb=row["disk_mb"],
            envd_address=row["envd_address"],
            envd_version=row["envd_version"],
            envd_token=row["envd_token"],
            allow_internet=row["allow_internet"],
            auto_pause=row["auto_pause"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            end_at=row["end_at"],
            stopped_at=row["stopped_at"],
            stop_reason=row["stop_reason"],
            idempotency_key=row.get("idempotency_key"),
            auto_resume=bool(row.get("auto_resume", False)),
            idle_timeout_s=row.get("idle_timeout_s"),
            ttl_set_at=row.get("ttl_set_at"),
            transition_at=row.get("transition_at"),
        )


async def insert(conn: Connection, rec: SandboxRecord) -> None:
    await conn.execute(
        """
        INSERT INTO sandboxes (id, team_id, host_id, template, state, metadata, vcpus, memory_mb, disk_mb,
                               envd_address, envd_version, envd_token, allow_internet, auto_pause,
                               created_at, started_at, end_at, idempotency_key, auto_resume, idle_timeout_s,
                               ttl_set_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        """,
        (
            rec.id,
            rec.team_id,
            rec.host_id,
            rec.template,
            rec.state.value,
            Jsonb(rec.metadata),
            rec.vcpus,
            rec.memory_mb,
            rec.disk_mb,
            rec.envd_address,
            rec.envd_version,
            rec.envd_token,
            rec.allow_internet,
            rec.auto_pause,
            rec.created_at,
            rec.started_at,
            rec.end_at,
            rec.idempotency_key,
            rec.auto_resume,
            rec.idle_timeout_s,
            rec.ttl_set_at,
        ),
    )


async def get(store: Store, sandbox_id: str) -> SandboxRecord | None:
    row = await store.fetch_one("SELECT * FROM sandboxes WHERE id = %s", (sandbox_id,))
    return None if row is None else SandboxRecord.from_row(row)


async def get_by_idempotency_key(store: Store, team_id: uuid.UUID, key: str) -> SandboxRecord | None:
    row = await store.fetch_one(
        "SELECT * FROM sandboxes WHERE team_id = %s AND idempotency_key = %s AND state = ANY(%s)",
        (team_id, key, list(LIVE_STATES)),
    )
    return None if row is None else SandboxRecord.from_row(row)


async def get_live(store: Store, sandbox_id: str, team_id: uuid.UUID | None) -> SandboxRecord | None:
    """A live sandbox, visible to ``team_id`` (None: any team, for admins and internal callers)."""
    row = await store.fetch_one(
        "SELECT * FROM sandboxes WHERE id = %s AND state = ANY(%s) AND (%s::uuid IS NULL OR team_id = %s::uuid)",
        (sandbox_id, list(LIVE_STATES), team_id, team_id),
    )
    return None if row is None else SandboxRecord.from_row(row)


async def relaxed_write(store: Store, sql: str, params: Any) -> dict[str, Any] | None:
    """One write on the sandbox hot path, committed without waiting for the WAL flush (``synchronous_commit
    off`` for this transaction only: ≈ 0.6 ms instead of ≈ 5 ms here).

    A PostgreSQL crash can lose the last few hundred milliseconds of such commits, never corrupt anything; every
    write made this way is one the reconciler repairs from the agents' lists (a lost "running" leaves a stale
    ``creating`` record -> failed + destroyed; a lost "stopped" leaves a record the agent no longer runs -> missing).
    """
    async with store.transaction() as conn:
        await conn.execute("SET LOCAL synchronous_commit TO off")
        cur = await conn.execute(sql, params)
        return await cur.fetchone()


async def mark_running(store: Store, sandbox_id: str, *, envd_address: str) -> SandboxRecord | None:
    row = await relaxed_write(
        store,
        "UPDATE sandboxes SET state = 'running', envd_address = %s WHERE id = %s AND state = 'creating' RETURNING *",
        (envd_address, sandbox_id),
    )
    return None if row is None else SandboxRecord.from_row(row)


async def delete(store: Store, sandbox_id: str) -> None:
    async with store.connection() as conn:
        await conn.execute("DELETE FROM sandboxes WHERE id = %s", (sandbox_id,))


async def stop_running(
    store: Store, sandbox_id: str, team_id: uuid.UUID | None, *, reason: str, at: datetime
) -> SandboxRecord | None:
    """Stop a running sandbox of ``team_id`` in one statement; None when there is no such sandbox."""
    row = await relaxed_write(
        store,
        "UPDATE sandboxes SET state = 'stopped', stopped_at = %s, stop_reason = %s "
        "WHERE id = %s AND state IN ('running', 'pausing', 'paused', 'resuming') "
        "AND (%s::uuid IS NULL OR team_id = %s::uuid) RETURNING *",
        (at, reason, sandbox_id, team_id, team_id),
    )
    return None if row is None else SandboxRecord.from_row(row)


async def stop(store: Store, sandbox_id: str, *, state: SandboxState, reason: str, at: datetime) -> bool:
    """Move a live sandbox to a final state; False when it was not live (someone else stopped it first)."""
    row = await relaxed_write(
        store,
        "UPDATE sandboxes SET state = %s, stopped_at = %s, stop_reason = %s "
        "WHERE id = %s AND state = ANY(%s) RETURNING id",
        (state.value, at, reason, sandbox_id, list(LIVE_STATES)),
    )
    return row is not None


async def set_end(
    store: Store, sandbox_id: str, team_id: uuid.UUID | None, end_at: datetime, *, timeout_s: int, at: datetime
) -> bool:
    """``set_timeout``: the end time is overwritten and ``timeout_s`` becomes the sandbox's idle window."""
    row = await store.fetch_one(
        "UPDATE sandboxes SET end_at = %s, idle_timeout_s = %s, ttl_set_at = %s WHERE id = %s AND state = 'running' "
        "AND (%s::uuid IS NULL OR team_id = %s::uuid) RETURNING id",
        (end_at, timeout_s, at, sandbox_id, team_id, team_id),
    )
    return row is not None


async def extend_end(
    store: Store, sandbox_id: str, team_id: uuid.UUID | None, end_at: datetime, *, at: datetime
) -> bool:
    """Push the end time out to ``end_at`` unless it is already later (connect and refresh only extend)."""
    row = await store.fetch_one(
        "UPDATE sandboxes SET end_at = GREATEST(end_at, %s), ttl_set_at = %s WHERE id = %s AND state = 'running' "
        "AND (%s::uuid IS NULL OR team_id = %s::uuid) RETURNING id",
        (end_at, at, sandbox_id, team_id, team_id),
    )
    return row is not None


ACTIVITY_CAP = timedelta(seconds=86400)
"""Activity never moves a sandbox's end past the last explicit TTL call + this (E2B's longest TTL, 24 h)."""


async def record_activity(store: Store, seen: Mapping[str, datetime]) -> dict[str, datetime]:
    """Activity seen at ``seen[id]`` keeps each running sandbox's end at least ``idle_timeout_s`` after it (never
    shortened, never past ``ttl_set_at + ACTIVITY_CAP``). One statement for all of them; returns the new end times
    of the sandboxes that were running. A lost commit (``synchronous_commit off``) only costs one bump."""
    if not seen:
        return {}
    ids = list(seen)
    async with store.transaction() as conn:
        await conn.execute("SET LOCAL synchronous_commit TO off")
        cur = await conn.execute(
            """
            UPDATE sandboxes s SET end_at = GREATEST(
                s.end_at,
                LEAST(a.seen + make_interval(secs => s.idle_timeout_s), COALESCE(s.ttl_set_at, s.started_at) + %s))
            FROM unnest(%s::text[], %s::timestamptz[]) AS a(id, seen)
            WHERE s.id = a.id AND s.state = 'running' AND s.idle_timeout_s IS NOT NULL
            RETURNING s.id, s.end_at
            """,
            (ACTIVITY_CAP, ids, [seen[i] for i in ids]),
        )
        return {row["id"]: row["end_at"] for row in await cur.fetchall()}


async def list_live(
    store: Store,
    *,
    team_id: uuid.UUID | None,
    metadata: Mapping[str, str],
    template: str | None,
    started_after: datetime | None,
    after: tuple[datetime, str] | None,
    descending: bool,
    limit: int,
    states: tuple[str, ...] = ("running",),
) -> list[SandboxRecord]:
    """One page of sandboxes in `states`, keyset-paginated on (started_at, id)."""
    order = "DESC" if descending else "ASC"
    cmp = "<" if descending else ">"
    sql = [
        "SELECT * FROM sandboxes WHERE state = ANY(%(states)s)",
        "AND (%(team)s::uuid IS NULL OR team_id = %(team)s::uuid)",
        "AND metadata @> %(meta)s",
    ]
    params: dict[str, Any] = {"team": team_id, "meta": Jsonb(dict(metadata)), "limit": limit, "states": list(states)}
    if template is not None:
        sql.append("AND template = %(template)s")
        params["template"] = template
    if started_after is not None:
        sql.append("AND started_at > %(started_after)s")
        params["started_after"] = started_after
    if after is not None:
        sql.append(f"AND (started_at, id) {cmp} (%(after_ts)s, %(after_id)s)")
        params["after_ts"], params["after_id"] = after
    sql.append(f"ORDER BY started_at {order}, id {order} LIMIT %(limit)s")
    rows = await store.fetch_all(" ".join(sql), params)
    return [SandboxRecord.from_row(r) for r in rows]


async def count_running(store: Store, team_id: uuid.UUID | None) -> int:
    row = await store.fetch_one(
        "SELECT count(*) AS n FROM sandboxes WHERE state = 'running' AND (%s::uuid IS NULL OR team_id = %s::uuid)",
        (team_id, team_id),
    )
    return int(row["n"]) if row else 0


async def stale_creating(store: Store, before: datetime) -> list[SandboxRecord]:
    """Records still ``creating`` although their create began before ``before`` (an API process died mid-create,
    or its "running" write was lost)."""
    rows = await store.fetch_all(
        "SELECT * FROM sandboxes WHERE state = 'creating' AND created_at < %s ORDER BY created_at LIMIT 100", (before,)
    )
    return [SandboxRecord.from_row(r) for r in rows]


async def live_on_host(store: Store, host_id: str) -> list[SandboxRecord]:
    rows = await store.fetch_all(
        "SELECT * FROM sandboxes WHERE host_id = %s AND state = ANY(%s)", (host_id, list(LIVE_STATES))
    )
    return [SandboxRecord.from_row(r) for r in rows]


async def expired(store: Store, now: datetime, limit: int = 100) -> list[str]:
    rows = await store.fetch_all(
        "SELECT id FROM sandboxes WHERE state = 'running' AND end_at <= %s ORDER BY end_at LIMIT %s", (now, limit)
    )
    return [r["id"] for r in rows]
