"""A small async client for Firecracker's HTTP API on its Unix socket (httpx over ``uds``).

Firecracker answers 204 (or 200 with a body for GETs) on success and 400/500 with ``{"fault_message": ...}`` on
failure; every non-2xx answer and every transport failure becomes `FirecrackerAPIError` carrying the request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from wrenn.agent.vmm._errors import FirecrackerAPIError


class FirecrackerAPI:
    """One connection pool to one Firecracker process's API socket. An async context manager."""

    def __init__(self, socket_path: Path, *, request_timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket_path)),
            base_url="http://localhost",
            timeout=httpx.Timeout(request_timeout),
        )

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one call; return the decoded JSON body (None for 204)."""
        try:
            response = await self._client.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise FirecrackerAPIError(method, path, 0, f"{type(exc).__name__}: {exc}") from exc
        if response.is_success:
            return response.json() if response.content else None
        try:
            fault = str(response.json().get("fault_message", response.text))
        except (json.JSONDecodeError, AttributeError):
            fault = response.text
        raise FirecrackerAPIError(method, path, response.status_code, fault)

    async def put(self, path: str, body: dict[str, Any]) -> None:
        await self.request("PUT", path, body)

    async def patch(self, path: str, body: dict[str, Any]) -> None:
        await self.request("PATCH", path, body)

    async def describe(self) -> dict[str, Any]:
        """``GET /``: InstanceInfo (``state`` is "Not started", "Running" or "Paused")."""
        info = await self.request("GET", "/")
        if not isinstance(info, dict):
            raise FirecrackerAPIError("GET", "/", 200, f"unexpected body {info!r}")
        return info

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> FirecrackerAPI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
