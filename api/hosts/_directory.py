"""`HostDirectory`: the registered hosts and one pooled `AgentClient` per host (opened lazily, closed at shutdown).

With mutual TLS the directory is given a context *provider* (`wrenn.provision.ca.ReloadingClientContext.current`):
when it hands out a different context (the CRL was re-signed, the CA files changed), each host's client is replaced
on its next use, so a revoked agent certificate is refused from then on. Replaced clients are closed after
`STALE_CLOSE_S` (requests in flight on them finish first)."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import httpx

from wrenn.api.hosts._client import AgentClient, AgentTls
from wrenn.api.hosts._records import get_host
from wrenn.api.store import Store
from wrenn.protocol.errors import Unavailable


class HostDirectory:
    def __init__(
        self, store: Store, *, tls: AgentTls | None = None, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._store = store
        self._tls = tls
        self._ssl_context: Callable[[], ssl.SSLContext] | None = None
        self._transport = transport
        self._clients: dict[str, AgentClient] = {}
        self._stale: list[tuple[float, AgentClient]] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        clients, self._clients = [*self._clients.values(), *(c for _, c in self._stale)], {}
        self._stale = []
        for client in clients:
            await client.aclose()

    def use_ssl_context(self, context: ssl.SSLContext | Callable[[], ssl.SSLContext]) -> None:
        """Call agents with this mutual-TLS context (or the one `context()` returns at each use) from now on;
        clients made before are replaced."""
        self._ssl_context = context if callable(context) else (lambda: context)
        self._retire(*self._clients.values())
        self._clients = {}

    def _context(self) -> ssl.SSLContext | None:
        return self._ssl_context() if self._ssl_context is not None else None

    def _retire(self, *clients: AgentClient) -> None:
        self._stale.extend((time.monotonic(), client) for client in clients)

    def client_for(self, host_id: str, address: str) -> AgentClient:
        context = self._context()
        client = self._clients.get(host_id)
        if client is not None and client.base_url == address.rstrip("/") and client.ssl_context is context:
            return client
        client = AgentClient(address, tls=self._tls, ssl_context=context, transport=self._transport)
        old = self._clients.pop(host_id, None)
        self._clients[host_id] = client
        if old is not None:
            self._retire(old)  # moved host or new TLS context; closed later (requests may still be in flight)
        return client

    async def client(self, host_id: str) -> AgentClient:
        """The agent client of a host; the database is read only for a host this process has not called yet
        (an address change reaches existing clients through `client_for`, called by placement and reconciler)."""
        await self._close_stale()
        cached = self._clients.get(host_id)
        if cached is not None:
            if cached.ssl_context is self._context():
                return cached
            return self.client_for(host_id, cached.base_url)
        host = await get_host(self._store, host_id)
        if host is None:
            raise Unavailable(f"host {host_id} is not registered")
        return self.client_for(host.id, host.address)

    async def _close_stale(self) -> None:
        now = time.monotonic()
        due = [client for retired, client in self._stale if now - retired >= STALE_CLOSE_S]
        if due:
            self._stale = [(retired, c) for retired, c in self._stale if now - retired < STALE_CLOSE_S]
            for client in due:
                await client.aclose()


STALE_CLOSE_S = 600.0
"""How long a replaced client stays open for the requests still running on it (a create waits up to 120 s)."""
