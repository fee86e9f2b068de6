"""Placement: which host gets a new sandbox.

A host qualifies when it is ``ready``, sent a heartbeat recently, and has the vCPUs and memory the sandbox asks
for. Free capacity is the host's total minus the larger of what it last reported in use and what the database has
placed on it (live sandboxes), so sandboxes placed between two heartbeats still count. Among qualifying hosts the
one with the most free memory wins (spreads load). The host rows are locked for the placing transaction, so two
concurrent creates cannot both take the last slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from wrenn.api.store._pool import Connection
from wrenn.protocol.errors import Exhausted, Unavailable

_CANDIDATES = """
SELECT h.id, h.address, h.vcpus_total, h.vcpus_used, h.memory_mb_total, h.memory_mb_used,
       COALESCE(s.vcpus, 0) AS vcpus_placed, COALESCE(s.memory_mb, 0) AS memory_placed
FROM hosts h
LEFT JOIN (
    SELECT host_id, sum(vcpus) AS vcpus, sum(memory_mb) AS memory_mb
    FROM sandboxes WHERE state IN ('creating', 'running') GROUP BY host_id
) s ON s.host_id = h.id
WHERE h.state = 'ready' AND h.last_heartbeat_at > %(fresh)s
ORDER BY h.id
FOR UPDATE OF h
"""


@dataclass(frozen=True, slots=True)
class Placement:
    host_id: str
    address: str
    free_vcpus: int
    free_memory_mb: int


async def place(
    conn: Connection,
    *,
    vcpus: int,
    memory_mb: int,
    now: datetime,
    heartbeat_ttl: timedelta,
    overcommit_vcpus: float = 4.0,
) -> Placement:
    """Pick a host inside the caller's transaction (its rows stay locked until the transaction ends)."""
    cur = await conn.execute(_CANDIDATES, {"fresh": now - heartbeat_ttl})
    rows = await cur.fetchall()
    if not rows:
        raise Unavailable("no host is available to run sandboxes")
    best: Placement | None = None
    for row in rows:
        free_cpu = int(row["vcpus_total"] * overcommit_vcpus) - max(row["vcpus_used"], int(row["vcpus_placed"]))
        free_mem = row["memory_mb_total"] - max(row["memory_mb_used"], int(row["memory_placed"]))
        if free_cpu < vcpus or free_mem < memory_mb:
            continue
        if best is None or free_mem > best.free_memory_mb:
            best = Placement(row["id"], row["address"], free_cpu, free_mem)
    if best is None:
        raise Exhausted(f"no host has {vcpus} vCPU and {memory_mb} MiB free")
    return best
