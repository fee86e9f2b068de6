"""``GET /health``: the control plane answers and reaches its database (for load balancers and `wrenn up`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import falcon.asgi
from pydantic import BaseModel

from wrenn.api.openapi import Access, Operation

if TYPE_CHECKING:
    from wrenn.api.deps import AsgiApp, Deps


class Health(BaseModel):
    status: str
    database: str


def register(app: AsgiApp, deps: Deps) -> None:
    async def get_health(req: falcon.asgi.Request, resp: falcon.asgi.Response) -> Health:
        # Store.connection() turns a dead database into Unavailable, which the error handler makes a 503.
        await deps.store.fetch_one("SELECT 1 AS ok")
        return Health(status="ok", database="ok")

    deps.routes.add(
        Operation(
            "GET",
            "/health",
            get_health,
            "Liveness: the API runs and reaches PostgreSQL",
            ("meta",),
            Access.PUBLIC,
            response=Health,
            errors=(503,),
        )
    )
