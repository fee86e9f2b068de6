"""The agent's envd client: ``POST /init`` as the readiness probe of a restore (refusals retried until the limit, a
clear error when nothing ever answers), against a real loopback server. No root needed."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from wrenn.agent._envd import EnvdClient
from wrenn.protocol.errors import Unavailable


@pytest.fixture
async def client() -> AsyncIterator[EnvdClient]:
    async with EnvdClient(timeout=5) as envd:
        yield envd


def bound_socket() -> socket.socket:
    """A loopback socket bound to a port but not listening yet: connections to it are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


async def test_init_waits_through_refusals_until_envd_listens(client: EnvdClient) -> None:
    sock = bound_socket()
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    attempts = 0
    refused_twice = asyncio.Event()
    post = client._client.post

    async def counting_post(*args: object, **kwargs: object) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        if attempts >= 2:
            refused_twice.set()
        return await post(*args, **kwargs)  # type: ignore[arg-type]

    client._client.post = counting_post  # type: ignore[method-assign]
    bodies: list[dict[str, object]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        bodies.append(json.loads(await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    task = asyncio.create_task(client.init(address, env_vars={"A": "1"}, access_token="tok", ready_limit=30))
    try:
        await asyncio.wait_for(refused_twice.wait(), 30)
        assert not task.done()
        sock.listen()
        server = await asyncio.start_server(serve, sock=sock)
        async with server:
            await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
        sock.close()
    assert len(bodies) == 1  # refused attempts never reached envd; the one that did was sent once
    assert bodies[0]["envVars"] == {"A": "1"}
    assert bodies[0]["accessToken"] == "tok"


async def test_init_probe_gives_up_with_a_clear_error(client: EnvdClient) -> None:
    sock = bound_socket()
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    try:
        with pytest.raises(Unavailable, match=r"envd at 127\.0\.0\.1:\d+ did not answer POST /init within 0\.6 s"):
            await client.init(address, env_vars={}, access_token=None, ready_limit=0.6)
    finally:
        sock.close()


async def test_init_without_probe_fails_after_a_few_refusals(client: EnvdClient) -> None:
    sock = bound_socket()
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    try:
        with pytest.raises(Unavailable, match="POST /init failed"):
            await client.init(address, env_vars={}, access_token=None)
    finally:
        sock.close()
