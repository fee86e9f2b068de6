"""The E2B-compatible sandbox API: `SandboxService` (the lifecycle) and its REST routes.

`register(app, deps)` adds the routes and the expiry job handler and keeps the service in
``deps.extras["sandboxes"]``; `create_public_app(settings)` is the app to serve: the REST API behind the sandbox
traffic proxy, with the reconciler running in the lifespan.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import falcon.asgi

from wrenn.api.deps import Deps
from wrenn.api.hosts import directory_of
from wrenn.api.proxy import SandboxProxy
from wrenn.api.sandboxes._models import NewSandbox, SandboxCreated, SandboxDetail
from wrenn.api.sandboxes._records import SandboxRecord, SandboxState
from wrenn.api.sandboxes._routes import operations
from wrenn.api.sandboxes._service import EXPIRE_JOB, ListQuery, SandboxConfig, SandboxService
from wrenn.api.settings import Settings

__all__ = [
    "EXPIRE_JOB",
    "ListQuery",
    "NewSandbox",
    "SandboxConfig",
    "SandboxCreated",
    "SandboxDetail",
    "SandboxRecord",
    "SandboxService",
    "SandboxState",
    "create_public_app",
    "register",
    "service_of",
]


def service_of(deps: Deps) -> SandboxService:
    service = deps.extras.get("sandboxes")
    if not isinstance(service, SandboxService):
        raise RuntimeError("the sandboxes module is not registered")
    return service


def register(app: falcon.asgi.App[Any, Any], deps: Deps) -> None:
    s = deps.settings
    service = SandboxService(
        store=deps.store,
        queue=deps.queue,
        hosts=directory_of(deps),
        clock=deps.clock,
        ids=deps.ids,
        config=SandboxConfig(
            templates=frozenset(s.sandbox_templates),
            domain=s.domain or None,
            envd_version=s.envd_version,
            vcpus=s.sandbox_vcpus,
            memory_mb=s.sandbox_memory_mb,
            disk_mb=s.sandbox_disk_mb,
            heartbeat_ttl_s=s.host_heartbeat_ttl_s,
            internet_default=s.sandbox_internet,
            vcpu_overcommit=s.scheduler_vcpu_overcommit,
            activity_interval_s=s.sandbox_activity_interval_s,
            drain_grace_s=s.proxy_drain_grace_s,
        ),
    )
    service.lifecycle.transition_wait_s = s.transition_settle_s
    service.register_jobs()
    deps.extras["sandboxes"] = service
    deps.on_shutdown(service.aclose)
    deps.routes.add(*operations(service))

    async def start_reconciler() -> None:
        from wrenn.api.reconciler import Reconciler  # reconciler imports this package

        hosts = deps.extras.get("hosts")
        if hosts is None:
            return
        reconciler = Reconciler(
            store=deps.store,
            hosts=hosts,
            directory=directory_of(deps),
            sandboxes=service,
            clock=deps.clock,
            interval_s=s.reconcile_interval_s,
            transition_grace=timedelta(seconds=s.transition_settle_s),
        )
        reconciler.start()
        deps.on_shutdown(reconciler.aclose)

    deps.on_startup(start_reconciler)


def create_public_app(settings: Settings, **kwargs: Any) -> SandboxProxy:
    """The app to serve on the public port: the sandbox proxy in front of the REST API."""
    from wrenn.api.app import create_app, deps_of

    app = create_app(settings, **kwargs)
    deps = deps_of(app)
    proxy = SandboxProxy(app, service_of(deps), domain=settings.domain, resume_wait_s=settings.proxy_resume_wait_s)
    service_of(deps).on_stop(proxy.cut)
    service_of(deps).on_start(proxy.remember)
    service_of(deps).on_pausing(proxy.drain)
    deps.on_shutdown(proxy.aclose)
    return proxy
