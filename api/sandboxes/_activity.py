"""`ActivityTracker`: proxy traffic keeps a running sandbox from timing out, without a database write per request.

`touch(sandbox_id, idle_timeout_s)` is called for every forwarded request and every chunk a stream carries; it costs
a dict lookup. The tracker writes (one `records.record_activity` statement for every sandbox that is due) at most
once per sandbox per *interval*: the first touch after a quiet interval is written at once (leading edge), touches
inside the interval are remembered and the latest is written when the interval ends (trailing edge).

Why this never lets an active sandbox time out early: a write at time w sets ``end_at >= w + T`` (T = its idle
timeout). A touch at t that is not written at once has ``t - w < N`` (N = interval), so ``end_at > t + T - N``, and
its own write follows by ``w + N <= t + N``. With ``N <= T / 4`` the end time always lies after that write.
Hence the interval is ``min(interval_s, T / 4)``.

The writer is one task owned by the tracker, started on the first touch and ended by `aclose` (which writes what is
still pending). Failures are logged and the activity dropped: the sandbox then times out on its previous end time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import structlog

from wrenn.api._tasks import cancel_and_wait
from wrenn.api.clock import Clock

_log = structlog.get_logger("wrenn.api.sandboxes.activity")

Writer = Callable[[Mapping[str, datetime]], Awaitable[Mapping[str, datetime]]]


@dataclass(slots=True)
class _Entry:
    interval: float
    written_at: float  # monotonic time of the last write (or -inf)
    pending: datetime | None = None  # latest activity not yet written


class ActivityTracker:
    def __init__(
        self,
        write: Writer,
        clock: Clock,
        *,
        interval_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._clock = clock
        self._interval = interval_s
        self._monotonic = monotonic
        self._entries: dict[str, _Entry] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.writes = 0
        """Statements issued (tests and benchmarks read it)."""

    def touch(self, sandbox_id: str, idle_timeout_s: int | None) -> None:
        if idle_timeout_s is None:
            return  # a record without an idle window (created before migration 0102): nothing to extend
        interval = max(min(self._interval, idle_timeout_s / 4), 0.05)  # the window may change (set_timeout)
        entry = self._entries.get(sandbox_id)
        if entry is None:
            entry = self._entries[sandbox_id] = _Entry(interval=interval, written_at=float("-inf"))
        entry.interval = interval
        first = entry.pending is None
        entry.pending = self._clock()
        if first:
            self._wake.set()  # possibly due now, or earlier than what the writer sleeps towards
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._run(), name="wrenn-activity")

    def forget(self, sandbox_id: str) -> None:
        """The sandbox stopped or paused: drop what is pending for it."""
        self._entries.pop(sandbox_id, None)

    async def flush(self) -> None:
        """Write everything pending now, due or not."""
        now = self._monotonic()
        due: dict[str, datetime] = {}
        for sandbox_id, entry in self._entries.items():
            if entry.pending is not None:
                due[sandbox_id] = entry.pending
                entry.pending, entry.written_at = None, now
        await self._write_safely(due)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.flush()

    async def _write_safely(self, due: Mapping[str, datetime]) -> None:
        if not due:
            return
        self.writes += 1
        try:
            await self._write(due)
        except Exception as exc:  # noqa: BLE001  # activity is best effort; the loop must go on
            _log.warning("activity not recorded", sandboxes=len(due), error=repr(exc))

    async def _run(self) -> None:
        while True:
            now = self._monotonic()
            due: dict[str, datetime] = {}
            next_at: float | None = None
            for sandbox_id, entry in list(self._entries.items()):
                if entry.pending is None:
                    if now - entry.written_at >= entry.interval:
                        del self._entries[sandbox_id]  # quiet: the next touch is written at once anyway
                    continue
                at = entry.written_at + entry.interval
                if at <= now:
                    due[sandbox_id] = entry.pending
                    entry.pending, entry.written_at = None, now
                elif next_at is None or at < next_at:
                    next_at = at
            if due:
                await self._write_safely(due)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if next_at is None else max(next_at - now, 0.0)):
                    await self._wake.wait()
