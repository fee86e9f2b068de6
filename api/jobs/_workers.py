"""`JobWorkers`: the tasks that take jobs off the queue and run their handlers, owned by the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self

import psycopg
import structlog

from wrenn.api._tasks import cancel_and_wait
from wrenn.api.jobs._queue import CHANNEL, Job, JobQueue
from wrenn.api.store import psycopg_url

_log = structlog.get_logger("wrenn.api.jobs")


class JobWorkers:
    """`count` worker tasks over one queue. ``async with JobWorkers(...)`` starts them; leaving stops them.

    Each task loops: claim a due job, run its handler while a side task keeps the lease alive, then mark it done
    or failed. When nothing is due it waits for the queue's wake event or `poll_seconds`, whichever comes first.
    A listener task holds one extra connection doing ``LISTEN wrenn_jobs`` and sets the wake event when any
    process enqueues due work of a kind this process handles. Idle workers also delete finished jobs older than
    `retention`, at most once per `retention`/24 per process.
    Stopping cancels the tasks; a job interrupted that way keeps its lease and is re-run after it expires.
    """

    def __init__(
        self,
        queue: JobQueue,
        *,
        count: int = 2,
        poll_seconds: float = 1.0,
        name: str | None = None,
        listen: bool = True,
        retention: timedelta = timedelta(days=7),
    ):
        self._queue = queue
        self._count = count
        self._poll = poll_seconds
        self._name = name or f"{os.uname().nodename}-{os.getpid()}-{secrets.token_hex(3)}"
        self._listen_enabled = listen
        self._retention = retention
        self._last_prune: datetime | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def start(self) -> None:
        if self._tasks:
            raise RuntimeError("job workers already started")
        self._tasks = [
            asyncio.create_task(self._loop(f"{self._name}/{i}"), name=f"wrenn-job-worker-{i}")
            for i in range(self._count)
        ]
        if self._listen_enabled and self._count > 0:
            self._tasks.append(asyncio.create_task(self._listen(), name="wrenn-job-listener"))

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)

    async def run_once(self, worker: str | None = None) -> Job | None:
        """Claim and run at most one job; returns it (or None when nothing was due)."""
        job = await self._queue.claim(worker or f"{self._name}/once")
        if job is not None:
            await self._run(job)
        return job

    async def _loop(self, worker: str) -> None:
        wake = self._queue.wake
        while True:
            try:
                job = await self._queue.claim(worker)
            except Exception:  # noqa: BLE001  # a database hiccup must not kill the worker; retried next poll
                _log.exception("job claim failed", worker=worker)
                job = None
            if job is not None:
                await self._run(job)
                continue
            await self._maybe_prune()
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._poll)

    async def _maybe_prune(self) -> None:
        now = self._queue.now()
        if self._last_prune is not None and now - self._last_prune < self._retention / 24:
            return
        self._last_prune = now
        try:
            pruned = await self._queue.prune(self._retention)
        except Exception:  # noqa: BLE001  # housekeeping; the next idle moment tries again
            _log.exception("job pruning failed")
            return
        if pruned:
            _log.info("finished jobs pruned", count=pruned)

    async def _listen(self) -> None:
        """Turn NOTIFYs from any process into wake-ups; reconnect after a pause when the connection drops."""
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(psycopg_url(self._queue.store.url), autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    async for note in conn.notifies():
                        if note.payload in self._queue.handlers:
                            self._queue.wake.set()
            except Exception:  # noqa: BLE001  # polling still finds the work; only the wake-up is late
                _log.warning("job listener lost its connection; retrying", exc_info=True)
            await asyncio.sleep(self._poll)

    async def _run(self, job: Job) -> None:
        handler = self._queue.handlers.get(job.kind)
        log = _log.bind(job_id=job.id, job_kind=job.kind, attempt=job.attempts)
        if handler is None:
            await self._queue.fail(job, f"no handler for job kind {job.kind!r}", retry=False)
            return
        keeper = asyncio.create_task(self._keep_lease(job))
        try:
            await handler(job)
        except Exception as exc:  # noqa: BLE001  # any handler failure is recorded on the job and retried
            state = await self._queue.fail(job, f"{type(exc).__name__}: {exc}")
            log.warning("job failed", error=str(exc), next_state=state.value)
        else:
            await self._queue.complete(job)
        finally:
            await cancel_and_wait(keeper)

    async def _keep_lease(self, job: Job) -> None:
        interval = max(self._queue.lease.total_seconds() / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self._queue.extend(job):
                    return
            except Exception:  # noqa: BLE001  # keep trying; the lease is long enough to miss a beat
                _log.exception("job lease extension failed", job_id=job.id)
