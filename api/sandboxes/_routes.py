"""The E2B sandbox REST routes (reference section 2): thin adapters from HTTP to `SandboxService`."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

import falcon.asgi
from pydantic import BaseModel, ConfigDict, Field

from wrenn.api.auth import principal_of
from wrenn.api.lifecycle import PauseRequest, ResumeRequest, optional_body
from wrenn.api.openapi import Access, Operation
from wrenn.api.sandboxes._models import (
    ConnectRequest,
    ListedSandbox,
    NewSandbox,
    RefreshRequest,
    SandboxCreated,
    SandboxDetail,
    SandboxMetric,
    TimeoutRequest,
)
from wrenn.api.sandboxes._service import ListQuery, SandboxService, parse_metadata_query
from wrenn.protocol.errors import Conflict, Invalid

_ERRORS = (400, 401, 404, 500)
_TAGS = ("sandboxes",)
_STATES = frozenset({"running", "paused"})
_IDEMPOTENCY_KEY = re.compile(r"[a-z0-9-]{1,255}")


class V2ListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    metadata: str | None = Field(default=None, description="urlencoded key=value pairs, all must match")
    state: str | None = Field(default=None, description="comma-separated states: running, paused")
    order: Literal["asc", "desc"] = "asc"
    started_after: datetime | None = Field(default=None, alias="startedAfter")
    template: str | None = None
    next_token: str | None = Field(default=None, alias="nextToken")
    limit: int = Field(default=100, ge=1, le=100)


class V1ListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    metadata: str | None = None


def _states(raw: str | None) -> frozenset[str]:
    if not raw:
        return _STATES
    states = frozenset(s.strip() for s in raw.split(",") if s.strip())
    if not states <= _STATES:
        raise Invalid(f"unknown state in {raw!r}: use running, paused")
    return states


def operations(service: SandboxService) -> list[Operation]:
    async def create_sandbox(req: falcon.asgi.Request, resp: falcon.asgi.Response, body: NewSandbox) -> SandboxCreated:
        key = req.get_header("Idempotency-Key")
        if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
            raise Invalid("Idempotency-Key must be 1-255 lowercase letters, digits and hyphens")
        return await service.create(principal_of(req).require_team(), body, idempotency_key=key)

    async def get_sandbox(req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str) -> SandboxDetail:
        return await service.get(principal_of(req).require_team(), sandbox_id)

    async def list_sandboxes_v2(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, query: V2ListQuery
    ) -> list[ListedSandbox]:
        team = principal_of(req).require_team()
        items, next_token = await service.list_page(
            team,
            ListQuery(
                metadata=parse_metadata_query(query.metadata),
                states=_states(query.state),
                template=query.template,
                started_after=query.started_after,
                descending=query.order == "desc",
                limit=query.limit,
                next_token=query.next_token,
            ),
        )
        if next_token:
            resp.set_header("X-Next-Token", next_token)
        resp.set_header("X-Total-Running", str(await service.count_running(team)))
        return items

    async def list_sandboxes(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, query: V1ListQuery
    ) -> list[ListedSandbox]:
        team = principal_of(req).require_team()
        out: list[ListedSandbox] = []
        token: str | None = None
        while True:
            items, token = await service.list_page(
                team,
                ListQuery(parse_metadata_query(query.metadata), _STATES, None, None, False, 100, token),
            )
            out.extend(items)
            if token is None:
                return out

    async def kill_sandbox(req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str) -> None:
        await service.kill(principal_of(req).require_team(), sandbox_id)

    async def set_sandbox_timeout(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str, body: TimeoutRequest
    ) -> None:
        await service.set_timeout(principal_of(req).require_team(), sandbox_id, body.timeout)

    async def connect_sandbox(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str, body: ConnectRequest
    ) -> SandboxCreated:
        created, resumed = await service.connect_or_resume(principal_of(req).require_team(), sandbox_id, body.timeout)
        if resumed:
            resp.status = 201
        return created

    async def pause_sandbox(req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str) -> None:
        body = await optional_body(req, PauseRequest)
        await service.pause(principal_of(req).require_team(), sandbox_id, memory=body.memory is not False)

    async def resume_sandbox(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str, body: ResumeRequest
    ) -> SandboxCreated:
        team = principal_of(req).require_team()
        created, resumed = await service.connect_or_resume(team, sandbox_id, body.timeout, auto_pause=body.auto_pause)
        if not resumed:
            raise Conflict(f"sandbox '{sandbox_id}' is already running")
        return created

    async def refresh_sandbox(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str, body: RefreshRequest
    ) -> None:
        await service.refresh(principal_of(req).require_team(), sandbox_id, body.duration)

    async def sandbox_metrics(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str
    ) -> list[SandboxMetric]:
        return await service.metrics(principal_of(req).require_team(), sandbox_id)

    key = Access.ANY
    create_errors = (400, 401, 404, 429, 500, 503)
    return [
        Operation(
            "POST",
            "/sandboxes",
            create_sandbox,
            "Create a sandbox (201 once envd answers)",
            _TAGS,
            key,
            request=NewSandbox,
            response=SandboxCreated,
            status=201,
            errors=create_errors,
        ),
        Operation(
            "POST",
            "/v2/sandboxes",
            create_sandbox,
            "Create a sandbox (v2 path of newer SDKs)",
            _TAGS,
            key,
            request=NewSandbox,
            response=SandboxCreated,
            status=201,
            errors=create_errors,
            operation_id="create_sandbox_v2",
        ),
        Operation(
            "GET",
            "/sandboxes/{sandbox_id}",
            get_sandbox,
            "Get a running sandbox",
            _TAGS,
            key,
            response=SandboxDetail,
            errors=_ERRORS,
        ),
        Operation(
            "GET",
            "/v2/sandboxes",
            list_sandboxes_v2,
            "List sandboxes (filters, pagination)",
            _TAGS,
            key,
            query=V2ListQuery,
            response=list[ListedSandbox],
            errors=(400, 401, 500),
            response_headers={"X-Next-Token": "token of the next page; absent on the last page"},
        ),
        Operation(
            "GET",
            "/sandboxes",
            list_sandboxes,
            "List running sandboxes (legacy)",
            _TAGS,
            key,
            query=V1ListQuery,
            response=list[ListedSandbox],
            errors=(400, 401, 500),
        ),
        Operation(
            "DELETE", "/sandboxes/{sandbox_id}", kill_sandbox, "Kill a sandbox", _TAGS, key, status=204, errors=_ERRORS
        ),
        Operation(
            "POST",
            "/sandboxes/{sandbox_id}/timeout",
            set_sandbox_timeout,
            "Set the sandbox's time to live, counted from now",
            _TAGS,
            key,
            request=TimeoutRequest,
            status=204,
            errors=_ERRORS,
        ),
        Operation(
            "POST",
            "/sandboxes/{sandbox_id}/connect",
            connect_sandbox,
            "Connect to a sandbox (extends its time to live)",
            _TAGS,
            key,
            request=ConnectRequest,
            response=SandboxCreated,
            errors=(*_ERRORS, 409),
        ),
        Operation(
            "POST",
            "/v2/sandboxes/{sandbox_id}/connect",
            connect_sandbox,
            "Connect to a sandbox (v2 path of newer SDKs)",
            _TAGS,
            key,
            request=ConnectRequest,
            response=SandboxCreated,
            errors=(*_ERRORS, 409),
            operation_id="connect_sandbox_v2",
        ),
        Operation(
            "POST",
            "/sandboxes/{sandbox_id}/pause",
            pause_sandbox,
            "Pause a sandbox (memory, device state and disk to files; 409 when already paused)",
            _TAGS,
            key,
            status=204,
            errors=(*_ERRORS, 409),
        ),
        Operation(
            "POST",
            "/sandboxes/{sandbox_id}/resume",
            resume_sandbox,
            "Resume a paused sandbox (legacy; newer SDKs use connect)",
            _TAGS,
            key,
            request=ResumeRequest,
            response=SandboxCreated,
            status=201,
            errors=(*_ERRORS, 409),
        ),
        Operation(
            "POST",
            "/sandboxes/{sandbox_id}/refreshes",
            refresh_sandbox,
            "Extend the sandbox's time to live (legacy)",
            _TAGS,
            key,
            request=RefreshRequest,
            status=204,
            errors=_ERRORS,
        ),
        Operation(
            "GET",
            "/sandboxes/{sandbox_id}/metrics",
            sandbox_metrics,
            "Sandbox resource metrics",
            _TAGS,
            key,
            response=list[SandboxMetric],
            errors=_ERRORS,
        ),
    ]
