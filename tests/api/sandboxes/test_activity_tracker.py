"""`ActivityTracker` on its own: how touches become writes (leading and trailing edge, at most one per sandbox per
interval, the interval shrunk to a quarter of the idle window, a final flush on close). The writer is a recorder;
the end-to-end effect on real records is tested in test_activity_lifecycle.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from wrenn.api.sandboxes._activity import ActivityTracker


class Recorder:
    def __init__(self) -> None:
        self.writes: list[dict[str, datetime]] = []
        self.written = asyncio.Event()

    async def __call__(self, seen: Mapping[str, datetime]) -> Mapping[str, datetime]:
        self.writes.append(dict(seen))
        self.written.set()
        return {}

    def of(self, sandbox_id: str) -> list[datetime]:
        return [w[sandbox_id] for w in self.writes if sandbox_id in w]


def clock() -> datetime:
    return datetime.now(UTC)


async def _touch_for(tracker: ActivityTracker, sandbox_id: str, seconds: float, idle: int) -> datetime:
    """Touch every 10 ms for ``seconds``; returns a time no later than the last touch."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        last = clock()
        tracker.touch(sandbox_id, idle)
        await asyncio.sleep(0.01)
    return last


async def _wait_for(recorder: Recorder, sandbox_id: str, at_least: datetime) -> None:
    async with asyncio.timeout(5):
        while not recorder.of(sandbox_id) or recorder.of(sandbox_id)[-1] < at_least:
            recorder.written.clear()
            await recorder.written.wait()


async def test_touches_are_coalesced_and_the_last_one_is_written() -> None:
    recorder = Recorder()
    tracker = ActivityTracker(recorder, clock, interval_s=0.25)
    try:
        tracker.touch("a", 60)
        await _wait_for(recorder, "a", datetime.min.replace(tzinfo=UTC))
        assert len(recorder.writes) == 1, "the first touch is written at once (leading edge)"
        last = await _touch_for(tracker, "a", 1.0, idle=60)
        await _wait_for(recorder, "a", last)  # trailing edge: the latest touch gets written
        writes = len(recorder.of("a"))
        assert writes <= 1 + 1.0 / 0.25 + 2, f"{writes} writes for ~100 touches in 1 s at one per 0.25 s"
        assert recorder.of("a")[-1] >= last
    finally:
        await tracker.aclose()


async def test_sandboxes_due_together_share_one_statement() -> None:
    recorder = Recorder()
    tracker = ActivityTracker(recorder, clock, interval_s=0.2)
    try:
        for sandbox_id in ("a", "b", "c"):
            tracker.touch(sandbox_id, 60)
        await _wait_for(recorder, "c", datetime.min.replace(tzinfo=UTC))
        assert recorder.writes[0].keys() == {"a", "b", "c"}
    finally:
        await tracker.aclose()


async def test_the_interval_is_at_most_a_quarter_of_the_idle_window() -> None:
    recorder = Recorder()
    tracker = ActivityTracker(recorder, clock, interval_s=60)  # would allow one write a minute
    try:
        last = await _touch_for(tracker, "a", 1.0, idle=1)  # a 1 s window: at least one write per 0.25 s
        await _wait_for(recorder, "a", last)
        assert len(recorder.of("a")) >= 3
    finally:
        await tracker.aclose()


async def test_close_writes_what_is_pending_and_records_without_a_window_are_skipped() -> None:
    recorder = Recorder()
    tracker = ActivityTracker(recorder, clock, interval_s=60)
    tracker.touch("old", None)  # created before the idle window existed: nothing to extend
    tracker.touch("a", 300)
    await _wait_for(recorder, "a", datetime.min.replace(tzinfo=UTC))
    before = clock()
    tracker.touch("a", 300)  # inside the interval: pending
    tracker.forget("gone")  # forgetting an unknown sandbox is harmless
    await tracker.aclose()
    assert len(recorder.of("a")) == 2
    assert recorder.of("a")[-1] >= before, "closing flushed the pending touch"
    assert recorder.of("old") == []
