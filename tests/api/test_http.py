"""HTTP edges shared by every route: malformed and oversized bodies, unknown routes, the error shape, lifespan."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import falcon.asgi
import falcon.testing
import pytest
import structlog
import structlog.testing

from tests.api.conftest import Factory
from wrenn.api import Deps, Settings, create_app
from wrenn.api.clock import utc_now
from wrenn.api.openapi import Access, Operation
from wrenn.protocol import Conflict, Unavailable

pytestmark = pytest.mark.postgres


async def _team_count(deps: Deps) -> int:
    row = await deps.store.fetch_one("SELECT count(*) AS n FROM teams")
    assert row is not None
    return int(row["n"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"name": "x"', "malformed JSON body"),
        (b"\xff\xfe", "malformed JSON body"),
        (b"", "request body required"),
        (b"[1, 2]", "invalid body"),
        (b'{"name": ""}', "invalid body: name"),
        (b'{"name": 7}', "invalid body: name"),
        (b'{"name": "x", "owner": "me"}', "invalid body: owner"),
    ],
)
async def test_bad_bodies_are_400_and_create_nothing(
    client: falcon.testing.ASGIConductor, factory: Factory, deps: Deps, body: bytes, message: str
) -> None:
    t = await factory.tenant()
    before = await _team_count(deps)
    r = await client.simulate_post(
        "/v1/teams", body=body, headers={**t.session_headers, "Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json["code"] == 400
    assert r.json["message"].startswith(message)
    assert await _team_count(deps) == before


async def test_oversized_body_is_413_and_creates_nothing(
    client: falcon.testing.ASGIConductor, factory: Factory, deps: Deps, settings: Settings
) -> None:
    t = await factory.tenant()
    before = await _team_count(deps)
    huge = b'{"name": "' + b"x" * settings.max_body_bytes + b'"}'
    r = await client.simulate_post("/v1/teams", body=huge, headers=t.session_headers)
    assert r.status_code == 413
    assert r.json == {"code": 413, "message": f"request body larger than {settings.max_body_bytes} bytes"}
    assert await _team_count(deps) == before


async def test_credentials_are_checked_before_the_body(client: falcon.testing.ASGIConductor) -> None:
    r = await client.simulate_post("/v1/teams", body=b"{broken")
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nowhere", 404),
        ("GET", "/v1/teams/not-a-uuid", 404),
        ("PUT", "/v1/teams", 405),
        ("DELETE", "/v1/auth/login", 405),
    ],
)
async def test_router_errors_use_the_error_body(
    client: falcon.testing.ASGIConductor, method: str, path: str, status: int
) -> None:
    r = await client.simulate_request(method, path, headers={"X-API-KEY": "e2b_" + "0" * 40})
    assert r.status_code == status
    assert r.json["code"] == status
    assert isinstance(r.json["message"], str)


def _with_test_routes(app: falcon.asgi.App[Any, Any], deps: Deps) -> None:
    async def explode(req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        raise RuntimeError("secret internals: password=hunter2")

    async def conflict(req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        raise Conflict("sandbox is paused")

    async def unavailable(req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        raise Unavailable("host agent unreachable")

    deps.routes.add(
        Operation("GET", "/test/explode", explode, "raises a bug", access=Access.PUBLIC),
        Operation("GET", "/test/conflict", conflict, "raises Conflict", access=Access.PUBLIC),
        Operation("GET", "/test/unavailable", unavailable, "raises Unavailable", access=Access.PUBLIC),
    )


async def test_error_kinds_map_to_statuses_and_bugs_do_not_leak(settings: Settings) -> None:
    app = create_app(settings, configure=_with_test_routes)
    async with falcon.testing.ASGIConductor(app) as client:
        bug = await client.simulate_get("/test/explode")
        conflict = await client.simulate_get("/test/conflict")
        unavailable = await client.simulate_get("/test/unavailable")
    assert (bug.status_code, bug.json) == (500, {"code": 500, "message": "internal error"})
    assert "hunter2" not in bug.text
    assert (conflict.status_code, conflict.json) == (409, {"code": 409, "message": "sandbox is paused"})
    assert unavailable.status_code == 503


async def test_request_id_is_echoed_or_made(client: falcon.testing.ASGIConductor) -> None:
    given = await client.simulate_get("/health", headers={"X-Request-ID": "abc123"})
    assert given.headers["X-Request-ID"] == "abc123"
    made = await client.simulate_get("/health")
    assert len(made.headers["X-Request-ID"]) == 16


async def test_health_reports_the_database(client: falcon.testing.ASGIConductor) -> None:
    r = await client.simulate_get("/health")
    assert (r.status_code, r.json) == (200, {"status": "ok", "database": "ok"})


async def test_lifespan_runs_hooks_in_order_and_undoes_them(settings: Settings) -> None:
    events: list[str] = []

    def configure(app: falcon.asgi.App[Any, Any], deps: Deps) -> None:
        async def first_up() -> None:
            events.append("up-1")

        async def second_up() -> None:
            events.append("up-2")

        async def first_down() -> None:
            events.append("down-1")

        async def second_down() -> None:
            events.append("down-2")

        deps.on_startup(first_up)
        deps.on_startup(second_up)
        deps.on_shutdown(first_down)
        deps.on_shutdown(second_down)

    app = create_app(settings, configure=configure)
    async with falcon.testing.ASGIConductor(app) as client:
        assert events == ["up-1", "up-2"]
        assert (await client.simulate_get("/health")).status_code == 200
    assert events == ["up-1", "up-2", "down-2", "down-1"]


async def test_failed_startup_closes_what_it_opened(settings: Settings) -> None:
    opened: list[Deps] = []

    def configure(app: falcon.asgi.App[Any, Any], deps: Deps) -> None:
        async def broken() -> None:
            opened.append(deps)
            raise RuntimeError("module failed to start")

        deps.on_startup(broken)

    app = create_app(settings.model_copy(update={"job_workers": 1}), configure=configure)
    with pytest.raises(RuntimeError):
        async with falcon.testing.ASGIConductor(app):
            pass
    [deps] = opened
    with pytest.raises(RuntimeError, match="not open"):
        _ = deps.store.pool


async def test_app_runs_job_workers_when_asked(settings: Settings) -> None:
    ran: list[dict[str, Any]] = []
    kind = f"test-app-{uuid.uuid4().hex[:8]}"

    def configure(app: falcon.asgi.App[Any, Any], deps: Deps) -> None:
        async def handler(job: Any) -> None:
            ran.append(job.payload)

        deps.queue.register(kind, handler)

    app = create_app(
        settings.model_copy(update={"job_workers": 1, "job_poll_seconds": 0.05}), configure=configure, clock=utc_now
    )
    async with falcon.testing.ASGIConductor(app):
        deps = app.deps
        job_id = await deps.queue.enqueue(kind, {"hello": "world"})
        assert job_id is not None
        async with asyncio.timeout(10):
            while True:
                if ran:
                    break
                await asyncio.sleep(0.02)
    assert ran == [{"hello": "world"}]


async def test_error_logs_carry_the_request_id(settings: Settings) -> None:
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        app = create_app(settings, configure=_with_test_routes)
        async with falcon.testing.ASGIConductor(app) as client:
            r = await client.simulate_get("/test/explode", headers={"X-Request-ID": "req-42"})
    finally:
        structlog.reset_defaults()
    assert r.status_code == 500
    [entry] = [e for e in capture.entries if e["event"] == "unhandled error"]
    assert entry["request_id"] == "req-42"
    assert entry["path"] == "/test/explode"
