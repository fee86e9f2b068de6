"""WebSocket pass-through for the sandbox proxy: the client's ASGI WebSocket relayed message by message to the
sandbox port over a `websockets` client connection, until either side closes or the sandbox is killed.

The upstream handshake happens first, so the client is only accepted (with the subprotocol the sandbox chose) when
the sandbox really answers; otherwise the handshake is refused (HTTP 403 from the ASGI server).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from wrenn.api._tasks import cancel_and_wait

Message = MutableMapping[str, Any]

# Headers the websockets client sets itself, or that describe the client's hop only.
_OWN = frozenset(
    {
        "host",
        "connection",
        "upgrade",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-authenticate",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
        "user-agent",
        "content-length",
    }
)

GOING_AWAY = 1001
UPSTREAM_FAILED = 1011


async def relay_websocket(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
    url: str,
    headers: dict[str, str],
    cut: asyncio.Event,
    *,
    on_data: Callable[[], None] | None = None,
) -> bool:
    """Relay one WebSocket; False when the sandbox did not accept the upstream handshake. ``on_data`` is called
    for every message either way (activity)."""
    first = await receive()
    if first["type"] != "websocket.connect":
        return True
    forwarded = [(k, v) for k, v in headers.items() if k not in _OWN]
    try:
        upstream = await connect(
            url,
            additional_headers=forwarded,
            subprotocols=scope.get("subprotocols") or None,
            compression=None,
            proxy=None,
            user_agent_header=None,
            open_timeout=10,
            ping_interval=None,
            max_size=None,
        )
    except (OSError, TimeoutError, InvalidHandshake):
        await send({"type": "websocket.close", "code": UPSTREAM_FAILED})
        return False
    try:
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
        await _pump(upstream, receive, send, cut, on_data or _nothing)
    finally:
        await upstream.close()
    return True


async def _pump(
    upstream: ClientConnection,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
    cut: asyncio.Event,
    on_data: Callable[[], None],
) -> None:
    client_closed = False

    async def from_client() -> None:
        nonlocal client_closed
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                client_closed = True
                await upstream.close(code=message.get("code", 1000) or 1000)
                return
            on_data()
            if message.get("bytes") is not None:
                await upstream.send(message["bytes"])
            elif message.get("text") is not None:
                await upstream.send(message["text"])

    async def from_upstream() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for data in upstream:
                on_data()
                if isinstance(data, bytes):
                    await send({"type": "websocket.send", "bytes": data})
                else:
                    await send({"type": "websocket.send", "text": data})

    tasks = [
        asyncio.create_task(from_client()),
        asyncio.create_task(from_upstream()),
        asyncio.create_task(cut.wait()),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(*tasks, ignore=(ConnectionClosed, OSError))
    if client_closed:
        return
    code = GOING_AWAY if cut.is_set() else (upstream.close_code or 1000)
    with contextlib.suppress(OSError, RuntimeError):
        await send({"type": "websocket.close", "code": code})


def _nothing() -> None:
    pass
