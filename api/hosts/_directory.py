"""`HostDirectory`: the registered hosts and one pooled `AgentClient` per host (opened lazily, closed at shutdown)."""

from __future__ import annotations

import ssl
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
        self._ssl_context: ssl.SSLContext | None = None
        self._transport = transport
        self._clients: dict[str, AgentClient] = {}
        self._stale: list[AgentClient] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        clients, self._clients = [*self._clients.values(), *self._stale], {}
        self._stale = []
        for client in clients:
            await client.aclose()

    def use_ssl_context(self, context: ssl.SSLContext) -> None:
        """Call agents with this (reloading) mutual-TLS context from now on; clients made before are replaced."""
        self._ssl_context = context
        self._stale.extend(self._clients.values())
        self._clients = {}

    def client_for(self, host_id: str, address: str) -> AgentClient:
        client = self._clients.get(host_id)
        if client is not None and client.base_url == address.rstrip("/"):
            return client
        client = AgentClient(address, tls=self._tls, ssl_context=self._ssl_context, transport=self._transport)
        old = self._clients.pop(host_id, None)
        self._clients[host_id] = client
        if old is not None:
            self._stale.append(old)  # the host moved; closed at shutdown (requests may still be in flight)
        return client

    async def client(self, host_id: str) -> AgentClient:
        """The agent client of a host; the database is read only for a host this process has not called yet
        (an address change reaches existing clients through `client_for`, called by placement and reconciler)."""
        cached = self._clients.get(host_id)
        if cached is not None:
            return cached
        host = await get_host(self._store, host_id)
        if host is None:
            raise Unavailable(f"host {host_id} is not registered")
        return self.client_for(host.id, host.address)
