"""The host agent's HTTP API (Falcon ASGI): routes of `wrenn.protocol.agent`, one error mapping, lifespan.

    GET    /v1/health            -> 200 HostInfo
    GET    /v1/sandboxes         -> 200 SandboxList
    POST   /v1/sandboxes         CreateSandbox -> 201 SandboxInfo (once envd answers /health and took /init)
    GET    /v1/sandboxes/{id}    -> 200 SandboxInfo
    DELETE /v1/sandboxes/{id}    -> 204 (idempotent)
    POST   /v1/sandboxes/{id}/pause   PauseSandbox -> 200 SandboxInfo (409 already paused)
    POST   /v1/sandboxes/{id}/resume  -> 201 SandboxInfo (resumed) or 200 (was running)
    POST   /v1/sandboxes/{id}/snapshots  CreateSnapshot -> 201 SnapshotInfo
    GET    /v1/snapshots               -> 200 SnapshotList
    DELETE /v1/snapshots/{id}          -> 204 (409 while sandboxes restored from it live)

Errors are ``{"code", "message"}`` with the status of the `wrenn.protocol.errors` kind; a body that does not
validate is 400; anything else is logged with its traceback and answered 500 with a plain message.
`create_agent_app(settings)` returns the app and its `AgentRuntime`; the runtime opens in the ASGI lifespan startup
and closes at shutdown, so `wrenn up` can mount the same app next to the API in one process.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import falcon
import falcon.asgi
import structlog
from pydantic import BaseModel, ValidationError

from wrenn.agent._runtime import AgentRuntime
from wrenn.agent.settings import AgentSettings
from wrenn.protocol.agent import CreateSandbox, CreateSnapshot, PauseSandbox, SandboxList, SnapshotList
from wrenn.protocol.errors import Invalid, WrennError

_log = structlog.get_logger(__name__)


def _send(resp: falcon.asgi.Response, model: BaseModel, status: int = 200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.text = model.model_dump_json()


class _Health:
    def __init__(self, runtime: AgentRuntime) -> None:
        self._runtime = runtime

    async def on_get(self, _req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        _send(resp, await self._runtime.manager.host_info())


class _Sandboxes:
    def __init__(self, runtime: AgentRuntime) -> None:
        self._runtime = runtime

    async def on_get(self, _req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        _send(resp, SandboxList(sandboxes=self._runtime.manager.list()))

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        raw = await req.stream.read()
        try:
            request = CreateSandbox.model_validate_json(raw)
        except ValidationError as exc:
            raise Invalid(_validation_message(exc)) from exc
        structlog.contextvars.bind_contextvars(sandbox_id=request.sandbox_id)
        _send(resp, await self._runtime.manager.create(request), status=201)


class _Sandbox:
    def __init__(self, runtime: AgentRuntime) -> None:
        self._runtime = runtime

    async def on_get(self, _req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str) -> None:
        _send(resp, self._runtime.manager.get(sandbox_id))

    async def on_delete(self, _req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str) -> None:
        structlog.contextvars.bind_contextvars(sandbox_id=sandbox_id)
        await self._runtime.manager.destroy(sandbox_id)
        resp.status = 204


class _Pause:
    def __init__(self, runtime: AgentRuntime) -> None:
        self._runtime = runtime

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str) -> None:
        structlog.contextvars.bind_contextvars(sandbox_id=sandbox_id)
        raw = await req.stream.read()
        try:
            request = PauseSandbox.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            raise Invalid(_validation_message(exc)) from exc
        _send(resp, await self._runtime.manager.pause(sandbox_id, memory=request.memory))


class _Resume:
    def __init__(self, runtime: AgentRuntime) -> None:
        self._runtime = runtime

    async def on_post(self, _req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str) -> None:
        structlog.contextvars.bind_contextvars(sandbox_id=sandbox_id)
        info, resumed = await self._runtime.manager.resume(sandbox_id)
        _send(resp, info, status=201 if resumed else 200)


class _SandboxSnapshots:
    def __init__(self, runtime: AgentRuntime) -> None:
        self._runtime = runtime

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str) -> None:
        structlog.contextvars.bind_contextvars(sandbox_id=sandbox_id)
        try:
            request = CreateSnapshot.model_validate_json(await req.stream.read())
        except ValidationError as exc:
            raise Invalid(_validation_message(exc)) from exc
        _send(resp, await self._runtime.manager.snapshot(sandbox_id, request.snapshot_id), status=201)


class _Snapshots:
    def __init__(self, runtime: AgentRuntime) -> None:
        self._runtime = runtime

    async def on_get(self, _req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        _send(resp, SnapshotList(snapshots=self._runtime.manager.list_snapshots()))


class _Snapshot:
    def __init__(self, runtime: AgentRuntime) -> None:
        self._runtime = runtime

    async def on_delete(self, _req: falcon.asgi.Request, resp: falcon.asgi.Response, snapshot_id: str) -> None:
        await self._runtime.manager.delete_snapshot(snapshot_id)
        resp.status = 204


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"invalid request: {where}: {first['msg']}"


class _RequestContext:
    """Binds a request id to the structured log context of every request."""

    async def process_request(self, req: falcon.asgi.Request, _resp: falcon.asgi.Response) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=req.get_header("X-Request-Id") or uuid.uuid4().hex[:16])


class _Lifespan:
    def __init__(self, runtime: AgentRuntime) -> None:
        self._runtime = runtime

    async def process_startup(self, _scope: dict[str, Any], _event: dict[str, Any]) -> None:
        await self._runtime.start()

    async def process_shutdown(self, _scope: dict[str, Any], _event: dict[str, Any]) -> None:
        await self._runtime.aclose()


async def _wrenn_error(req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: Exception, _params: Any) -> None:
    assert isinstance(exc, WrennError)
    if exc.status >= 500:
        _log.warning("request failed", method=req.method, path=req.path, kind=exc.kind, error=exc.message)
    resp.status = exc.status
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(exc.to_body())


async def _http_error(req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: Exception, _params: Any) -> None:
    assert isinstance(exc, falcon.HTTPError)
    status = exc.status_code
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps({"code": status, "message": exc.title or "error"})


async def _unexpected(req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: Exception, _params: Any) -> None:
    _log.exception("unhandled error", method=req.method, path=req.path)
    resp.status = 500
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps({"code": 500, "message": "internal error"})


def create_agent_app(
    settings: AgentSettings | None = None, runtime: AgentRuntime | None = None
) -> tuple[falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response], AgentRuntime]:
    """Build the agent's ASGI app. The runtime starts in the lifespan startup (pass `runtime` to share one)."""
    runtime = runtime or AgentRuntime(settings or AgentSettings())
    middleware: list[Any] = [_RequestContext(), _Lifespan(runtime)]
    app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response] = falcon.asgi.App(middleware=middleware)
    app.add_route("/v1/health", _Health(runtime))
    app.add_route("/v1/sandboxes", _Sandboxes(runtime))
    app.add_route("/v1/sandboxes/{sandbox_id}", _Sandbox(runtime))
    app.add_route("/v1/sandboxes/{sandbox_id}/pause", _Pause(runtime))
    app.add_route("/v1/sandboxes/{sandbox_id}/resume", _Resume(runtime))
    app.add_route("/v1/sandboxes/{sandbox_id}/snapshots", _SandboxSnapshots(runtime))
    app.add_route("/v1/snapshots", _Snapshots(runtime))
    app.add_route("/v1/snapshots/{snapshot_id}", _Snapshot(runtime))
    # Falcon picks the most specific registered handler, so the order here does not matter for dispatch.
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(WrennError, _wrenn_error)
    return app, runtime
