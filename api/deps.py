"""`Deps`: what every domain module's ``register(app, deps)`` receives — the app's shared services.

Built by `create_app`; the store's pool opens in the lifespan, so modules keep `deps` and use its members from
handlers and hooks, never at registration time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import falcon.asgi
import httpx

from wrenn.api.auth import Authenticator
from wrenn.api.clock import Clock, Ids
from wrenn.api.jobs import JobQueue
from wrenn.api.openapi import Routes
from wrenn.api.settings import Settings
from wrenn.api.store import Store

AsgiApp = falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]
Hook = Callable[[], Awaitable[None]]
HttpClientFactory = Callable[..., httpx.AsyncClient]


@dataclass
class Deps:
    settings: Settings
    clock: Clock
    ids: Ids
    store: Store
    queue: JobQueue
    auth: Authenticator
    routes: Routes
    http: HttpClientFactory  # httpx.AsyncClient(**kwargs); tests pass one with a MockTransport
    startup: list[Hook] = field(default_factory=list)  # run in order after the store and workers are up
    shutdown: list[Hook] = field(default_factory=list)  # run in reverse order before they go down
    extras: dict[str, Any] = field(default_factory=dict)  # per-module state a module wants to find again

    def on_startup(self, hook: Hook) -> Hook:
        self.startup.append(hook)
        return hook

    def on_shutdown(self, hook: Hook) -> Hook:
        self.shutdown.append(hook)
        return hook
