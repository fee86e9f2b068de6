"""A PostgreSQL-backed job queue for background work that must survive restarts (no Redis).

Producers call `JobQueue.enqueue(kind, payload, run_at)`; consumers register an async handler per kind and run
`JobWorkers` (started by the app's lifespan). Delivery is at least once: a worker claims a job with
``FOR UPDATE SKIP LOCKED`` (two workers never hold the same job), holds a lease it keeps extending while the
handler runs, and marks it done; a handler that raises is retried with backoff up to ``max_attempts``; a worker
that dies stops extending its lease and the job is claimed again once the lease runs out. Handlers must
therefore be idempotent.

Job states: ``queued`` -> ``running`` -> ``done`` | ``failed`` (and ``running`` -> ``queued`` on a retry).
"""

from wrenn.api.jobs._queue import Job, JobHandler, JobQueue, JobState
from wrenn.api.jobs._workers import JobWorkers

__all__ = ["Job", "JobHandler", "JobQueue", "JobState", "JobWorkers"]
