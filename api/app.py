"""`create_app`: builds the Falcon ASGI app from settings; the lifespan opens and closes what it needs.

Nothing happens at import or in `create_app` beyond wiring: the database pool, migrations, job workers and the
modules' start-up hooks run in `_Lifespan.process_startup` and are undone in reverse (also when start-up fails
half-way). Domain modules plug in through `MODULES`: each has ``register(app, deps)``.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import falcon
import falcon.asgi
import httpx
import structlog

from wrenn.api import auth, errors, health, hosts, openapi, sandboxes, snapshots, tenancy
from wrenn.api.auth import Authenticator, SessionTokens
from wrenn.api.clock import Clock, Ids, utc_now
from wrenn.api.deps import Deps, HttpClientFactory
from wrenn.api.jobs import JobQueue, JobWorkers
from wrenn.api.openapi import Routes
from wrenn.api.settings import Settings
from wrenn.api.store import Store, migrate

_log = structlog.get_logger("wrenn.api")

# The domain modules, in registration order. Each exposes register(app, deps).
MODULES: list[ModuleType] = [openapi, health, auth, tenancy, hosts, sandboxes, snapshots]


class _RequestContext:
    """Binds a request id to the log context of every request, and echoes it back."""

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        request_id = req.get_header("X-Request-ID") or secrets.token_hex(8)
        req.context.request_id = request_id
        req.context.principal = None
        structlog.contextvars.bind_contextvars(request_id=request_id)
        resp.set_header("X-Request-ID", request_id)

    async def process_response(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, resource: object, req_succeeded: bool
    ) -> None:
        structlog.contextvars.unbind_contextvars("request_id")


class WrennApp(falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]):
    """A Falcon ASGI app that keeps its `Deps` (for tests and `wrenn up`, which need the services)."""

    deps: Deps


class _Lifespan:
    """Falcon lifespan middleware: start-up opens store -> migrations -> workers -> hooks; shutdown reverses."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._stack: contextlib.AsyncExitStack | None = None

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        deps = self._deps
        async with contextlib.AsyncExitStack() as stack:
            await deps.store.open()
            stack.push_async_callback(deps.store.aclose)
            if deps.settings.apply_migrations:
                applied = await migrate(deps.settings.database_url)
                if applied:
                    _log.info("migrations applied", migrations=applied)
            if deps.settings.job_workers > 0:
                workers = JobWorkers(
                    deps.queue, count=deps.settings.job_workers, poll_seconds=deps.settings.job_poll_seconds
                )
                await stack.enter_async_context(workers)
            for hook in deps.startup:
                await hook()
            for hook in deps.shutdown:
                stack.push_async_callback(hook)
            self._stack = stack.pop_all()

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()


def create_app(
    settings: Settings,
    *,
    clock: Clock = utc_now,
    ids: Ids | None = None,
    http: HttpClientFactory = httpx.AsyncClient,
    modules: list[ModuleType] | None = None,
    configure: Callable[[WrennApp, Deps], None] | None = None,
) -> WrennApp:
    """The control-plane app. `configure` runs after the modules registered (tests add routes or hooks there)."""
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
    if secret is None:
        secret = secrets.token_urlsafe(48)
        _log.warning("no WRENN_JWT_SECRET: sessions are signed with a per-process key and die with the process")
    store = Store(settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
    tokens = SessionTokens(secret, ttl_seconds=settings.session_ttl_seconds, clock=clock)
    authenticator = Authenticator(store, tokens, clock)
    routes = Routes(authenticator.authenticate, max_body_bytes=settings.max_body_bytes)
    deps = Deps(
        settings=settings,
        clock=clock,
        ids=ids or Ids(),
        store=store,
        queue=JobQueue(store, clock, lease_seconds=settings.job_lease_seconds),
        auth=authenticator,
        routes=routes,
        http=http,
    )
    app = WrennApp(middleware=[_Lifespan(deps), _RequestContext()])
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    for module in modules if modules is not None else MODULES:
        module.register(app, deps)
    if configure is not None:
        configure(app, deps)
    routes.install(app)
    app.deps = deps
    return app


def deps_of(app: object) -> Deps:
    if not isinstance(app, WrennApp):
        raise TypeError("not an app made by create_app")
    return app.deps
