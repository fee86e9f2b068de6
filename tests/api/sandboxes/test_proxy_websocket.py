"""WebSockets through the sandbox proxy: to any port of the sandbox, routed by header, cut when it is killed."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.api.sandboxes.conftest import Stack

pytestmark = [pytest.mark.postgres]


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def test_websocket_passes_through_and_is_cut_on_kill(stack: Stack) -> None:
    # The fake agent's sandboxes live at 127.0.0.1: a WebSocket server there is "a port inside the sandbox".
    async with (
        serve(_echo, "127.0.0.1", 0) as server,
        httpx.AsyncClient(base_url=stack.url, headers={"X-API-KEY": stack.api_key}) as api,
    ):
        port = next(iter(server.sockets)).getsockname()[1]
        created = await api.post("/sandboxes", json={"templateID": "base"})
        sid = created.json()["sandboxID"]
        ws_url = stack.url.replace("http://", "ws://") + "/anything"
        routing = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(port)}
        async with connect(ws_url, additional_headers=routing, proxy=None) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\x01")
            assert await ws.recv() == b"\x00\x01"
            # another team's key is refused at the handshake
            with pytest.raises(InvalidStatus):
                await connect(ws_url, additional_headers={**routing, "X-API-KEY": stack.other_key}, proxy=None)
            assert (await api.delete(f"/sandboxes/{sid}")).status_code == 204
            # the echo server is still up, so only the proxy can end this connection
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(10):
                    await ws.recv()
        with pytest.raises(InvalidStatus):
            await connect(ws_url, additional_headers=routing, proxy=None)
