"""Host routes: tokens (admins), register, heartbeat, certificate renewal and the CRL (agents, authenticated by
token / host secret), list."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import falcon.asgi
from pydantic import BaseModel

from wrenn.api.auth import principal_of
from wrenn.api.hosts._service import HostService
from wrenn.api.openapi import Access, Operation
from wrenn.protocol.errors import Forbidden, Unauthenticated
from wrenn.protocol.hosts import (
    CreateHostToken,
    HostCertificate,
    HostCrl,
    HostInfo,
    HostToken,
    RegisteredHost,
    RegisterHost,
    RenewHostCertificate,
)

_TAGS = ("hosts",)


class HostView(BaseModel):
    id: str
    name: str
    address: str
    state: str
    vcpus_total: int
    vcpus_used: int
    memory_mb_total: int
    memory_mb_used: int
    disk_mb_free: int
    info: dict[str, Any]
    created_at: datetime
    last_heartbeat_at: datetime


def _require_admin(req: falcon.asgi.Request) -> None:
    if not principal_of(req).is_admin:
        raise Forbidden("only administrators manage hosts")


def _host_secret(req: falcon.asgi.Request) -> str:
    auth = req.get_header("Authorization") or ""
    scheme, _, secret = auth.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthenticated("missing host secret")
    return secret.strip()


def operations(service: HostService) -> list[Operation]:
    async def create_host_token(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, body: CreateHostToken
    ) -> HostToken:
        _require_admin(req)
        return await service.create_token(created_by=principal_of(req).user_id, ttl_s=body.ttl_s)

    async def register_host(req: falcon.asgi.Request, resp: falcon.asgi.Response, body: RegisterHost) -> RegisteredHost:
        return await service.register(body)

    async def host_heartbeat(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, host_id: str, body: HostInfo
    ) -> None:
        await service.heartbeat(host_id, _host_secret(req), body)

    async def renew_host_certificate(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, host_id: str, body: RenewHostCertificate
    ) -> HostCertificate:
        return await service.renew_certificate(host_id, _host_secret(req), body)

    async def host_crl(req: falcon.asgi.Request, resp: falcon.asgi.Response, host_id: str) -> HostCrl:
        return await service.crl(host_id, _host_secret(req))

    async def list_hosts(req: falcon.asgi.Request, resp: falcon.asgi.Response) -> list[HostView]:
        _require_admin(req)
        return [HostView.model_validate(h, from_attributes=True) for h in await service.list_hosts()]

    return [
        Operation(
            "POST",
            "/v1/hosts/tokens",
            create_host_token,
            "Create a one-time host registration token",
            _TAGS,
            Access.ANY,
            request=CreateHostToken,
            response=HostToken,
            status=201,
            errors=(400, 401, 403),
        ),
        Operation(
            "POST",
            "/v1/hosts/register",
            register_host,
            "Register a host agent with a one-time token",
            _TAGS,
            Access.PUBLIC,
            request=RegisterHost,
            response=RegisteredHost,
            status=201,
            errors=(400, 401),
        ),
        Operation(
            "POST",
            "/v1/hosts/{host_id}/heartbeat",
            host_heartbeat,
            "Heartbeat with capacity (Authorization: Bearer <host secret>)",
            _TAGS,
            Access.PUBLIC,
            request=HostInfo,
            status=204,
            errors=(400, 401),
        ),
        Operation(
            "POST",
            "/v1/hosts/{host_id}/certificate",
            renew_host_certificate,
            "Renew the host's certificate from a new CSR (Authorization: Bearer <host secret>)",
            _TAGS,
            Access.PUBLIC,
            request=RenewHostCertificate,
            response=HostCertificate,
            status=201,
            errors=(400, 401, 409),
            description="Names come from the address the host is registered at, never from the CSR. 409 when the "
            "control plane runs no internal CA.",
        ),
        Operation(
            "GET",
            "/v1/hosts/{host_id}/crl",
            host_crl,
            "The internal CA's certificate revocation list (Authorization: Bearer <host secret>)",
            _TAGS,
            Access.PUBLIC,
            response=HostCrl,
            errors=(401, 409),
            description="Re-signed before it is handed out when half of its validity has passed.",
        ),
        Operation(
            "GET",
            "/v1/hosts",
            list_hosts,
            "List hosts (admins)",
            _TAGS,
            Access.ANY,
            response=list[HostView],
            errors=(401, 403),
        ),
    ]
