"""`cancel_and_wait`, the one helper each component keeps for stopping its background tasks: every copy cancels,
waits, swallows only what it should, and never swallows the caller's own cancellation."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

COPIES = ["wrenn.agent._tasks", "wrenn.api._tasks", "wrenn.envd._tasks", "wrenn.provision._tasks"]

CancelAndWait = Callable[..., Awaitable[None]]


@pytest.fixture(params=COPIES)
def cancel_and_wait(request: pytest.FixtureRequest) -> CancelAndWait:
    helper: CancelAndWait = importlib.import_module(request.param).cancel_and_wait
    return helper


async def test_cancels_and_waits_until_the_tasks_have_ended(cancel_and_wait: CancelAndWait) -> None:
    cleaned: list[str] = []

    async def worker(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.01)  # cleanup that takes a moment
            cleaned.append(name)

    tasks = [asyncio.create_task(worker(n)) for n in ("a", "b")]
    await asyncio.sleep(0)
    await cancel_and_wait(tasks[0], None, tasks[1])
    assert sorted(cleaned) == ["a", "b"], "each task's cleanup ran before the helper returned"
    assert all(t.cancelled() for t in tasks)
    await cancel_and_wait()  # nothing to do


async def test_the_callers_cancellation_is_not_swallowed(cancel_and_wait: CancelAndWait) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():  # ignores cancellation until released
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    inner = asyncio.create_task(stubborn())
    after: list[str] = []

    async def closer() -> None:
        await cancel_and_wait(inner)
        after.append("went on")  # must not run: the closer itself was cancelled

    outer = asyncio.create_task(closer())
    await asyncio.sleep(0.01)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert after == []
    release.set()
    await inner


async def test_ignored_errors_are_swallowed_and_others_raised(cancel_and_wait: CancelAndWait) -> None:
    async def fails(error: BaseException) -> Any:
        raise error

    ignored = asyncio.create_task(fails(OSError("gone")))
    raised = asyncio.create_task(fails(ValueError("bug")))
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="bug"):
        await cancel_and_wait(ignored, raised, ignore=(OSError,))
    plain = asyncio.create_task(fails(OSError("gone")))
    await asyncio.sleep(0)
    with pytest.raises(OSError, match="gone"):
        await cancel_and_wait(plain)
