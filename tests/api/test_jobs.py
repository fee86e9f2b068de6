"""The Postgres job queue against a real database: exclusivity, retries, crashes, dedupe."""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests.api.conftest import FakeClock
from wrenn.api.clock import utc_now
from wrenn.api.jobs import Job, JobQueue, JobState, JobWorkers
from wrenn.api.store import Store

pytestmark = pytest.mark.postgres


def _kind() -> str:
    """A job kind of this test alone, so tests sharing the database never take each other's jobs."""
    return f"test-{secrets.token_hex(4)}"


async def _wait_for(predicate_sql: str, params: tuple[object, ...], store: Store, *, seconds: float = 20.0) -> None:
    async with asyncio.timeout(seconds):
        while True:
            row = await store.fetch_one(predicate_sql, params)
            if row and row["ok"]:
                return
            await asyncio.sleep(0.05)


async def test_concurrent_claims_never_share_a_job(database_url: str, store: Store, clock: FakeClock) -> None:
    kind = _kind()
    producer = JobQueue(store, clock)
    ids = {await producer.enqueue(kind, {"n": n}) for n in range(30)}
    async with Store(database_url, max_size=4) as other_store:
        a, b = JobQueue(store, clock), JobQueue(other_store, clock)
        claims = await asyncio.gather(*[q.claim(f"w-{i}", [kind]) for i, q in enumerate([a, b] * 20)])
    taken = [job.id for job in claims if job is not None]
    assert len(taken) == 30
    assert len(set(taken)) == len(taken)
    assert set(taken) == ids


async def test_two_worker_pools_run_every_job_exactly_once(database_url: str, store: Store) -> None:
    kind = _kind()
    runs: list[tuple[str, int]] = []
    async with Store(database_url, max_size=4) as other_store:
        queues = [JobQueue(store, utc_now), JobQueue(other_store, utc_now)]
        for i, queue in enumerate(queues):

            async def handler(job: Job, who: str = f"pool-{i}") -> None:
                await asyncio.sleep(0)  # let the other pool interleave
                runs.append((who, job.id))

            queue.register(kind, handler)
        for n in range(40):
            await queues[n % 2].enqueue(kind, {"n": n})
        async with JobWorkers(queues[0], count=2, poll_seconds=0.05), JobWorkers(queues[1], count=2, poll_seconds=0.05):
            await _wait_for("SELECT count(*) = 40 AS ok FROM jobs WHERE kind = %s AND state = 'done'", (kind,), store)
    job_ids = [job_id for _, job_id in runs]
    assert len(job_ids) == 40
    assert len(set(job_ids)) == 40


async def test_a_job_survives_a_worker_crash_and_is_retried(store: Store, clock: FakeClock) -> None:
    kind = _kind()
    queue = JobQueue(store, clock, lease_seconds=30)
    started = asyncio.Event()

    async def hang(job: Job) -> None:
        started.set()
        await asyncio.Event().wait()  # the worker "dies" while the handler runs

    queue.register(kind, hang)
    job_id = await queue.enqueue(kind, {"x": 1})
    assert job_id is not None
    crashed = JobWorkers(queue, count=1, poll_seconds=0.05)
    crashed.start()
    async with asyncio.timeout(10):
        await started.wait()
    await crashed.aclose()  # cancelled mid-handler: nothing marks the job done or failed
    assert await queue.state(job_id) is JobState.RUNNING

    survivor_queue = JobQueue(store, clock, lease_seconds=30)
    done: list[Job] = []

    async def finish(job: Job) -> None:
        done.append(job)

    survivor_queue.register(kind, finish)
    survivor = JobWorkers(survivor_queue, count=1)
    assert await survivor.run_once() is None  # still leased to the dead worker
    clock.advance(31)
    ran = await survivor.run_once()
    assert ran is not None
    assert ran.id == job_id
    assert ran.attempts == 2
    assert ran.payload == {"x": 1}
    assert await queue.state(job_id) is JobState.DONE


async def test_failed_job_is_retried_with_backoff_then_succeeds(store: Store, clock: FakeClock) -> None:
    kind = _kind()
    queue = JobQueue(store, clock)
    attempts: list[int] = []

    async def flaky(job: Job) -> None:
        attempts.append(job.attempts)
        if job.attempts == 1:
            raise RuntimeError("transient")

    queue.register(kind, flaky)
    workers = JobWorkers(queue, count=1)
    job_id = await queue.enqueue(kind)
    assert job_id is not None
    assert (await workers.run_once()) is not None
    assert await queue.state(job_id) is JobState.QUEUED
    row = await store.fetch_one("SELECT last_error, run_at FROM jobs WHERE id = %s", (job_id,))
    assert row is not None
    assert "transient" in row["last_error"]
    assert row["run_at"] > clock()
    assert await workers.run_once() is None  # backoff not over yet
    clock.advance(1)
    assert (await workers.run_once()) is not None
    assert attempts == [1, 2]
    assert await queue.state(job_id) is JobState.DONE


async def test_job_fails_for_good_after_max_attempts(store: Store, clock: FakeClock) -> None:
    kind = _kind()
    queue = JobQueue(store, clock)

    async def broken(job: Job) -> None:
        raise ValueError(f"broken {job.attempts}")

    queue.register(kind, broken)
    workers = JobWorkers(queue, count=1)
    job_id = await queue.enqueue(kind, max_attempts=2)
    assert job_id is not None
    await workers.run_once()
    clock.advance(60)
    await workers.run_once()
    assert await queue.state(job_id) is JobState.FAILED
    clock.advance(600)
    assert await workers.run_once() is None
    row = await store.fetch_one("SELECT attempts, last_error FROM jobs WHERE id = %s", (job_id,))
    assert row == {"attempts": 2, "last_error": "ValueError: broken 2"}


async def test_dedupe_key_allows_one_unfinished_job(store: Store, clock: FakeClock) -> None:
    kind = _kind()
    queue = JobQueue(store, clock)
    done: list[int] = []

    async def record(job: Job) -> None:
        done.append(job.id)

    queue.register(kind, record)
    key = f"expire-{secrets.token_hex(4)}"
    first = await queue.enqueue(kind, dedupe_key=key)
    assert first is not None
    assert await queue.enqueue(kind, dedupe_key=key) is None
    await JobWorkers(queue, count=1).run_once()
    assert done == [first]
    again = await queue.enqueue(kind, dedupe_key=key)
    assert again is not None
    assert again != first
    assert await queue.cancel(key) is True
    assert await queue.state(again) is None


async def test_jobs_due_later_wait_for_their_time(store: Store, clock: FakeClock) -> None:
    kind = _kind()
    queue = JobQueue(store, clock)
    seen: list[int] = []

    async def record(job: Job) -> None:
        seen.append(job.id)

    queue.register(kind, record)
    later = clock() + timedelta(seconds=30)
    job_id = await queue.enqueue(kind, run_at=later)
    workers = JobWorkers(queue, count=1)
    assert await workers.run_once() is None
    clock.advance(30)
    assert (await workers.run_once()) is not None
    assert seen == [job_id]


async def test_a_kind_without_handler_is_left_for_a_worker_that_has_one(store: Store, clock: FakeClock) -> None:
    kind = _kind()
    producer = JobQueue(store, clock)
    job_id = await producer.enqueue(kind)
    assert job_id is not None
    assert await JobWorkers(producer, count=1).run_once() is None  # no handler: not claimed, not failed
    assert await producer.state(job_id) is JobState.QUEUED


_CRASHING_WORKER = """
import asyncio, sys
from pathlib import Path
from wrenn.api.clock import utc_now
from wrenn.api.jobs import JobQueue, JobWorkers
from wrenn.api.store import Store

async def main(url, kind, marker):
    async with Store(url, max_size=2) as store:
        queue = JobQueue(store, utc_now, lease_seconds=1.0)
        async def hang(job):
            Path(marker).write_text(str(job.id))
            await asyncio.Event().wait()
        queue.register(kind, hang)
        async with JobWorkers(queue, count=1, poll_seconds=0.05):
            await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_job_survives_a_killed_worker_process(database_url: str, store: Store, tmp_path: Path) -> None:
    """SIGKILL the process running a job: its lease runs out and another worker runs the job again."""
    kind = _kind()
    queue = JobQueue(store, utc_now, lease_seconds=1.0)
    job_id = await queue.enqueue(kind, {"survives": True})
    assert job_id is not None
    marker = tmp_path / "started"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _CRASHING_WORKER, database_url, kind, str(marker))
    try:
        async with asyncio.timeout(30):
            while True:  # the worker process writes the marker once it runs the job
                if marker.exists():
                    break
                await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert marker.read_text() == str(job_id)
    assert await queue.state(job_id) is JobState.RUNNING

    ran: list[Job] = []

    async def finish(job: Job) -> None:
        ran.append(job)

    queue.register(kind, finish)
    survivor = JobWorkers(queue, count=1)
    async with asyncio.timeout(10):
        while not ran:  # polls until the dead worker's lease (1 s) has run out
            await survivor.run_once()
            await asyncio.sleep(0.05)
    assert ran[0].id == job_id
    assert ran[0].attempts == 2
    assert await queue.state(job_id) is JobState.DONE


async def test_enqueue_in_another_process_wakes_idle_workers(database_url: str, store: Store) -> None:
    """The consumer polls only every 60 s, so a run within the timeout can only come from LISTEN/NOTIFY."""
    kind = _kind()
    ran = asyncio.Event()

    async def handler(job: Job) -> None:
        ran.set()

    async with Store(database_url, max_size=2) as consumer_store:
        consumer = JobQueue(consumer_store, utc_now)
        consumer.register(kind, handler)
        async with JobWorkers(consumer, count=1, poll_seconds=60):
            async with asyncio.timeout(10):
                while True:  # wait until the listener is subscribed (it shows in pg_stat_activity)
                    row = await store.fetch_one(
                        "SELECT count(*) > 0 AS ok FROM pg_stat_activity "
                        "WHERE datname = current_database() AND query = 'LISTEN wrenn_jobs'"
                    )
                    if row and row["ok"]:
                        break
                    await asyncio.sleep(0.05)
            # Enqueue through another store and queue object: only the NOTIFY can reach the consumer's workers.
            producer = JobQueue(store, utc_now)
            await producer.enqueue(kind, {"via": "notify"})
            async with asyncio.timeout(10):
                await ran.wait()


async def test_prune_deletes_only_old_finished_jobs(store: Store, clock: FakeClock) -> None:
    kind = _kind()
    queue = JobQueue(store, clock)

    async def ok(job: Job) -> None:
        return None

    queue.register(kind, ok)
    finished = await queue.enqueue(kind)
    await JobWorkers(queue, count=1).run_once()
    clock.advance(8 * 86400)
    waiting = await queue.enqueue(kind, run_at=clock() + timedelta(days=1))
    recent_done = await queue.enqueue(kind)
    await JobWorkers(queue, count=1).run_once()
    assert finished is not None
    assert waiting is not None
    assert recent_done is not None
    assert await queue.prune(timedelta(days=7)) >= 1
    assert await queue.state(finished) is None
    assert await queue.state(waiting) is JobState.QUEUED
    assert await queue.state(recent_done) is JobState.DONE
