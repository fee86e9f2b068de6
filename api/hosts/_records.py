"""Host and registration-token records and their SQL (tables ``hosts``, ``host_tokens``, migration 0050)."""

from __future__ import annotations

import enum
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from wrenn.api.store import Store
from wrenn.api.store._pool import Connection
from wrenn.protocol.agent import HostInfo


class HostState(enum.StrEnum):
    """ready: takes sandboxes; unreachable: missed heartbeats or failed a call; draining: keeps what it runs,
    gets nothing new; removed: gone for good."""

    READY = "ready"
    UNREACHABLE = "unreachable"
    DRAINING = "draining"
    REMOVED = "removed"


def secret_hash(secret: str) -> str:
    """Tokens and host secrets are 256-bit random strings: a plain sha256 is a safe verifier."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class HostRecord:
    id: str
    name: str
    address: str
    state: HostState
    vcpus_total: int
    vcpus_used: int
    memory_mb_total: int
    memory_mb_used: int
    disk_mb_free: int
    info: dict[str, Any]
    created_at: datetime
    last_heartbeat_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> HostRecord:
        return cls(
            id=row["id"],
            name=row["name"],
            address=row["address"],
            state=HostState(row["state"]),
            vcpus_total=row["vcpus_total"],
            vcpus_used=row["vcpus_used"],
            memory_mb_total=row["memory_mb_total"],
            memory_mb_used=row["memory_mb_used"],
            disk_mb_free=row["disk_mb_free"],
            info=dict(row["info"]),
            created_at=row["created_at"],
            last_heartbeat_at=row["last_heartbeat_at"],
        )


async def insert_token(
    store: Store, token: str, *, created_by: uuid.UUID | None, now: datetime, expires_at: datetime
) -> None:
    async with store.connection() as conn:
        await conn.execute(
            "INSERT INTO host_tokens (token_hash, created_by, created_at, expires_at) VALUES (%s, %s, %s, %s)",
            (secret_hash(token), created_by, now, expires_at),
        )


async def consume_token(conn: Connection, token: str, *, host_id: str, now: datetime) -> bool:
    """Mark an unused, unexpired token used by ``host_id``; False when there is no such token."""
    cur = await conn.execute(
        "UPDATE host_tokens SET used_at = %s, host_id = %s "
        "WHERE token_hash = %s AND used_at IS NULL AND expires_at > %s RETURNING token_hash",
        (now, host_id, secret_hash(token), now),
    )
    return await cur.fetchone() is not None


def _capacity(info: HostInfo) -> dict[str, Any]:
    return {
        "vcpus_total": info.vcpus_total,
        "vcpus_used": info.vcpus_used,
        "memory_mb_total": info.memory_mb_total,
        "memory_mb_used": info.memory_mb_used,
        "disk_mb_free": info.disk_mb_free,
        "info": Jsonb(info.model_dump(mode="json")),
    }


async def insert_host(
    conn: Connection, *, host_id: str, name: str, address: str, secret: str, info: HostInfo, now: datetime
) -> None:
    await conn.execute(
        """
        INSERT INTO hosts (id, name, address, secret_hash, state, info, vcpus_total, vcpus_used, memory_mb_total,
                           memory_mb_used, disk_mb_free, created_at, last_heartbeat_at)
        VALUES (%(id)s, %(name)s, %(address)s, %(secret)s, 'ready', %(info)s, %(vcpus_total)s, %(vcpus_used)s,
                %(memory_mb_total)s, %(memory_mb_used)s, %(disk_mb_free)s, %(now)s, %(now)s)
        """,
        {"id": host_id, "name": name, "address": address, "secret": secret_hash(secret), "now": now, **_capacity(info)},
    )


async def heartbeat(store: Store, host_id: str, secret: str, info: HostInfo, now: datetime) -> bool:
    """Record a heartbeat; False when the host is unknown or the secret is wrong."""
    row = await store.fetch_one(
        """
        UPDATE hosts SET info = %(info)s, vcpus_total = %(vcpus_total)s, vcpus_used = %(vcpus_used)s,
               memory_mb_total = %(memory_mb_total)s, memory_mb_used = %(memory_mb_used)s,
               disk_mb_free = %(disk_mb_free)s, last_heartbeat_at = %(now)s,
               state = CASE WHEN state = 'unreachable' THEN 'ready' ELSE state END
        WHERE id = %(id)s AND secret_hash = %(secret)s AND state <> 'removed'
        RETURNING id
        """,
        {"id": host_id, "secret": secret_hash(secret), "now": now, **_capacity(info)},
    )
    return row is not None


async def authenticate(store: Store, host_id: str, secret: str) -> HostRecord | None:
    """The host whose id and secret these are (not removed); None otherwise."""
    row = await store.fetch_one(
        "SELECT * FROM hosts WHERE id = %s AND secret_hash = %s AND state <> 'removed'", (host_id, secret_hash(secret))
    )
    return None if row is None else HostRecord.from_row(row)


async def get_host(store: Store, host_id: str) -> HostRecord | None:
    row = await store.fetch_one("SELECT * FROM hosts WHERE id = %s", (host_id,))
    return None if row is None else HostRecord.from_row(row)


async def list_hosts(store: Store) -> list[HostRecord]:
    rows = await store.fetch_all("SELECT * FROM hosts WHERE state <> 'removed' ORDER BY created_at, id")
    return [HostRecord.from_row(r) for r in rows]


async def set_state(store: Store, host_id: str, state: HostState) -> None:
    async with store.connection() as conn:
        await conn.execute("UPDATE hosts SET state = %s WHERE id = %s", (state.value, host_id))
