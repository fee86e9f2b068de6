"""HTTP client of one host agent (the API side of protocol/agent.py).

Plain HTTP when no CA is configured (development, `wrenn up` on loopback), HTTPS with the internal CA and a client
certificate otherwise (mutual TLS). Agent errors come back as the same `wrenn.protocol.errors` kinds they were
raised as; a transport failure is `Unavailable`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx
from pydantic import ValidationError

from wrenn.protocol.agent import CreateSandbox, HostInfo, SandboxInfo, SandboxList, SnapshotInfo
from wrenn.protocol.errors import Internal, NotFound, Unavailable, WrennError, error_for_status


@dataclass(frozen=True, slots=True)
class AgentTls:
    """Files for mutual TLS with the agents: the internal CA and the API's client certificate."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if self.cert_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        return ctx


class AgentClient:
    """One agent's API. An async context manager; `aclose()` releases its connections."""

    def __init__(
        self,
        base_url: str,
        *,
        tls: AgentTls | None = None,
        ssl_context: ssl.SSLContext | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        create_timeout_s: float = 120.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._create_timeout_s = create_timeout_s
        verify: ssl.SSLContext | bool = True
        if ssl_context is not None:
            verify = ssl_context
        elif tls is not None:
            verify = tls.context()
        self.ssl_context = ssl_context
        """The context given (None when the client made its own or uses none)."""
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            verify=verify,
            timeout=httpx.Timeout(30.0, connect=5.0),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def health(self) -> HostInfo:
        return HostInfo.model_validate(await self._call("GET", "/v1/health"))

    async def list_sandboxes(self) -> list[SandboxInfo]:
        return SandboxList.model_validate(await self._call("GET", "/v1/sandboxes")).sandboxes

    async def create_sandbox(self, spec: CreateSandbox) -> SandboxInfo:
        body = await self._call(
            "POST", "/v1/sandboxes", json=spec.model_dump(mode="json"), timeout=self._create_timeout_s
        )
        return SandboxInfo.model_validate(body)

    async def get_sandbox(self, sandbox_id: str) -> SandboxInfo:
        return SandboxInfo.model_validate(await self._call("GET", f"/v1/sandboxes/{sandbox_id}"))

    async def pause_sandbox(self, sandbox_id: str, *, memory: bool = True) -> SandboxInfo:
        body = await self._call("POST", f"/v1/sandboxes/{sandbox_id}/pause", json={"memory": memory}, timeout=300.0)
        return SandboxInfo.model_validate(body)

    async def resume_sandbox(self, sandbox_id: str) -> SandboxInfo:
        body = await self._call("POST", f"/v1/sandboxes/{sandbox_id}/resume", timeout=self._create_timeout_s)
        return SandboxInfo.model_validate(body)

    async def snapshot_sandbox(self, sandbox_id: str, snapshot_id: str) -> SnapshotInfo:
        path = f"/v1/sandboxes/{sandbox_id}/snapshots"
        body = await self._call("POST", path, json={"snapshot_id": snapshot_id}, timeout=self._create_timeout_s)
        return SnapshotInfo.model_validate(body)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._call("DELETE", f"/v1/snapshots/{snapshot_id}", timeout=60.0)

    async def destroy_sandbox(self, sandbox_id: str) -> None:
        """Destroy a sandbox; a sandbox the agent never knew counts as destroyed."""
        try:
            await self._call("DELETE", f"/v1/sandboxes/{sandbox_id}", timeout=60.0)
        except NotFound:
            return

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: object | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> object:
        try:
            response = await self._http.request(
                method, path, json=json, timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT
            )
        except httpx.TransportError as exc:
            raise Unavailable(f"host agent {self.base_url} is not reachable: {exc or type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise _agent_error(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise Internal(f"host agent {self.base_url} sent a body that is not JSON") from exc


def _agent_error(response: httpx.Response) -> WrennError:
    try:
        body = response.json()
        message = str(body["message"])
    except (ValueError, KeyError, TypeError, ValidationError):
        message = f"host agent answered {response.status_code}"
    return error_for_status(response.status_code, message)
