"""`JobQueue`: enqueue, claim, complete and fail jobs in the ``jobs`` table."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from wrenn.api.clock import Clock
from wrenn.api.store import Store


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    run_at: datetime
    locked_by: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        return cls(
            id=row["id"],
            kind=row["kind"],
            payload=dict(row["payload"]),
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            run_at=row["run_at"],
            locked_by=row["locked_by"],
        )


JobHandler = Callable[[Job], Awaitable[None]]

# NOTIFY channel: enqueue of due work wakes idle workers in every process, not just this one.
CHANNEL = "wrenn_jobs"

_CLAIM = """
UPDATE jobs SET state = 'running', attempts = attempts + 1, locked_by = %(worker)s,
       locked_until = %(until)s, updated_at = %(now)s
WHERE id = (
    SELECT id FROM jobs
    WHERE kind = ANY(%(kinds)s)
      AND ((state = 'queued' AND run_at <= %(now)s) OR (state = 'running' AND locked_until <= %(now)s))
    ORDER BY run_at, id
    FOR UPDATE SKIP LOCKED
    LIMIT 1
)
RETURNING *
"""


def backoff(attempts: int) -> timedelta:
    """Delay before retry number `attempts`: 1 s, 2 s, 4 s, … capped at 5 minutes."""
    return timedelta(seconds=min(2 ** max(attempts - 1, 0), 300))


class JobQueue:
    """The queue over one `Store`. Handlers are registered per kind before workers start."""

    def __init__(self, store: Store, clock: Clock, *, lease_seconds: float = 60.0) -> None:
        self._store = store
        self._clock = clock
        self.lease = timedelta(seconds=lease_seconds)
        self.handlers: dict[str, JobHandler] = {}
        self._wake: asyncio.Event | None = None

    @property
    def store(self) -> Store:
        return self._store

    def now(self) -> datetime:
        return self._clock()

    def register(self, kind: str, handler: JobHandler) -> None:
        if kind in self.handlers:
            raise ValueError(f"a handler for job kind {kind!r} is already registered")
        self.handlers[kind] = handler

    @property
    def wake(self) -> asyncio.Event:
        """Set when this process enqueues due work, so idle local workers need not wait for their poll."""
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    async def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any] | None = None,
        run_at: datetime | None = None,
        *,
        max_attempts: int = 5,
        dedupe_key: str | None = None,
    ) -> int | None:
        """Add a job; returns its id, or None when an unfinished job with the same `dedupe_key` exists."""
        now = self._clock()
        async with self._store.connection() as conn:
            cur = await conn.execute(
                """
                INSERT INTO jobs (kind, payload, run_at, max_attempts, dedupe_key, created_at, updated_at)
                VALUES (%s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND state IN ('queued', 'running')
                DO NOTHING
                RETURNING id
                """,
                (kind, Jsonb(dict(payload or {})), run_at or now, max_attempts, dedupe_key, now, now),
            )
            row = await cur.fetchone()
            due = run_at is None or run_at <= now
            if row is not None and due:
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, kind))
        if row is None:
            return None
        if due:
            self.wake.set()
        return int(row["id"])

    async def cancel(self, dedupe_key: str) -> bool:
        """Drop the queued (not yet running) job with this dedupe key; True when one was dropped."""
        async with self._store.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM jobs WHERE dedupe_key = %s AND state = 'queued' RETURNING id", (dedupe_key,)
            )
            return await cur.fetchone() is not None

    async def claim(self, worker: str, kinds: list[str] | None = None) -> Job | None:
        """Take the next due job (or one whose lease expired) for `worker`; None when nothing is due."""
        now = self._clock()
        wanted = kinds if kinds is not None else sorted(self.handlers)
        if not wanted:
            return None
        while True:
            async with self._store.connection() as conn:
                cur = await conn.execute(
                    _CLAIM, {"worker": worker, "until": now + self.lease, "now": now, "kinds": wanted}
                )
                row = await cur.fetchone()
            if row is None:
                return None
            job = Job.from_row(row)
            if job.attempts <= job.max_attempts:
                return job
            # Re-claimed after its lease ran out once too often: the workers running it keep dying.
            await self.fail(job, "worker lost the job too many times", retry=False)

    async def extend(self, job: Job) -> bool:
        """Push the lease of a running job forward; False when this worker no longer holds it."""
        now = self._clock()
        async with self._store.connection() as conn:
            cur = await conn.execute(
                "UPDATE jobs SET locked_until = %s, updated_at = %s "
                "WHERE id = %s AND state = 'running' AND locked_by = %s RETURNING id",
                (now + self.lease, now, job.id, job.locked_by),
            )
            return await cur.fetchone() is not None

    async def complete(self, job: Job) -> bool:
        now = self._clock()
        async with self._store.connection() as conn:
            cur = await conn.execute(
                "UPDATE jobs SET state = 'done', locked_by = NULL, locked_until = NULL, updated_at = %s "
                "WHERE id = %s AND state = 'running' AND locked_by = %s RETURNING id",
                (now, job.id, job.locked_by),
            )
            return await cur.fetchone() is not None

    async def fail(self, job: Job, error: str, *, retry: bool = True) -> JobState:
        """Record a failed attempt: back to ``queued`` with backoff, or ``failed`` when attempts are used up."""
        now = self._clock()
        final = not retry or job.attempts >= job.max_attempts
        state = JobState.FAILED if final else JobState.QUEUED
        run_at = now if final else now + backoff(job.attempts)
        async with self._store.connection() as conn:
            await conn.execute(
                "UPDATE jobs SET state = %s, run_at = %s, last_error = %s, locked_by = NULL, locked_until = NULL, "
                "updated_at = %s WHERE id = %s AND state = 'running' AND locked_by IS NOT DISTINCT FROM %s",
                (state.value, run_at, error[:2000], now, job.id, job.locked_by),
            )
        return state

    async def prune(self, older_than: timedelta) -> int:
        """Delete ``done`` and ``failed`` jobs last touched before `older_than` ago; returns how many."""
        async with self._store.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM jobs WHERE state IN ('done', 'failed') AND updated_at < %s", (self._clock() - older_than,)
            )
            return cur.rowcount

    async def state(self, job_id: int) -> JobState | None:
        row = await self._store.fetch_one("SELECT state FROM jobs WHERE id = %s", (job_id,))
        return None if row is None else JobState(row["state"])
