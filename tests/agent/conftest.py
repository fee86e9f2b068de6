"""Shared fixtures of the host agent's tests: one agent's parts in a short temp dir, over the fake driver."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.agent.fakes import Env
from wrenn.agent._processes import processes_mentioning


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short data dir: VMM control sockets live below it and AF_UNIX paths end at 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="wa-", dir="/tmp"))
    try:
        yield path
    finally:
        for pid in processes_mentioning(str(path)):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def env(short_tmp: Path) -> AsyncIterator[Env]:
    environment = Env(short_tmp)
    yield environment
    await environment.envd.aclose()
