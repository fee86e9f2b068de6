"""Waiting for a guest's envd to answer ``GET /health`` with 204 — the readiness signal for a started VM."""

from __future__ import annotations

import asyncio

import httpx


async def wait_envd(
    address: str, limit: float, interval: float = 0.05, *, client: httpx.AsyncClient | None = None
) -> None:
    """Poll ``http://{address}/health`` until it answers 204; raise `TimeoutError` after `limit` seconds.

    Connection refusals and resets are expected while the guest boots (with user-mode networking the forward
    accepts before the guest listens), so only a 204 ends the wait. Without `client` a short-lived one is made
    (its TLS context costs ~18 ms here: a caller timing the wait passes its own).
    """
    async with asyncio.timeout(limit):
        if client is not None:
            await _poll_health(client, f"http://{address}/health", interval)
            return
        async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as own:
            await _poll_health(own, f"http://{address}/health", interval)


async def _poll_health(client: httpx.AsyncClient, url: str, interval: float) -> None:
    while True:
        try:
            response = await client.get(url)
        except httpx.TransportError:
            pass
        else:
            if response.status_code == 204:
                return
        await asyncio.sleep(interval)
