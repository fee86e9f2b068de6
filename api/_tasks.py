"""Task helpers for the control plane.

The agent and the API never import each other and share only wire models and error kinds (DESIGN.md), envd ships
alone in every image, and the provisioning toolkit is a library of its own, so each keeps this one small helper;
tests/test_tasks.py runs the same checks against every copy."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None, ignore: tuple[type[BaseException], ...] = ()) -> None:
    """Cancel `tasks` (None entries are skipped) and wait until they have ended.

    A task's own cancellation is swallowed, and so are its exceptions of the `ignore` kinds; any other exception of
    a task is raised (the first, once all have ended). The caller's cancellation is never swallowed: cancelling the
    task that waits here raises `asyncio.CancelledError` in it, as anywhere else (``await task`` under
    ``suppress(CancelledError)`` cannot tell the two apart and loses it)."""
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    if not live:
        return
    await asyncio.wait(live)  # raises only when the caller itself is cancelled
    for task in live:
        if task.cancelled():
            continue
        error = task.exception()
        if error is not None and not isinstance(error, ignore):
            raise error
