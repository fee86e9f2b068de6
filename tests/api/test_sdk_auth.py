"""The official e2b SDK against the real API over loopback: Wrenn's keys pass its validation, bad ones are refused."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn
from e2b import AsyncSandbox
from e2b.exceptions import AuthenticationException

from tests.api.conftest import Factory
from wrenn.api import Settings, create_app, deps_of

pytestmark = [pytest.mark.postgres, pytest.mark.sdk]


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[tuple[str, Factory]]:
    """The API under uvicorn on a free loopback port; yields its URL and a factory for tenants."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while True:  # `started` flips once the lifespan ran and the socket listens
                if server.started:
                    break
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}", Factory(deps_of(app))
    finally:
        server.should_exit = True
        await task


async def test_sdk_lists_with_a_wrenn_key(live: tuple[str, Factory]) -> None:
    url, factory = live
    t = await factory.tenant()
    paginator = AsyncSandbox.list(api_key=t.api_key, api_url=url)
    assert await paginator.next_items() == []


async def test_sdk_refuses_unknown_and_revoked_keys(live: tuple[str, Factory]) -> None:
    url, factory = live
    t = await factory.tenant()
    with pytest.raises(AuthenticationException):
        await AsyncSandbox.list(api_key="e2b_" + "0" * 40, api_url=url).next_items()
    async with factory.deps.store.connection() as conn:
        await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (t.api_key_id,))
    with pytest.raises(AuthenticationException):
        await AsyncSandbox.list(api_key=t.api_key, api_url=url).next_items()
