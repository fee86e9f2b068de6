"""``POST /v1/auth/login``: email and password in, a session token out."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

import falcon.asgi
from pydantic import BaseModel, ConfigDict, Field

from wrenn.api.openapi import Access, Operation

if TYPE_CHECKING:
    from wrenn.api.deps import AsgiApp, Deps


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)
    team_id: uuid.UUID | None = Field(default=None, description="team to act for; default: the user's first team")


class LoginResponse(BaseModel):
    token: str
    token_type: str = "bearer"  # noqa: S105  # the OAuth token type, not a secret
    expires_at: datetime
    user_id: uuid.UUID
    team_id: uuid.UUID | None


def register(app: AsgiApp, deps: Deps) -> None:
    async def login(req: falcon.asgi.Request, resp: falcon.asgi.Response, *, body: LoginRequest) -> LoginResponse:
        session = await deps.auth.login(body.email, body.password, body.team_id)
        return LoginResponse(
            token=session.token, expires_at=session.expires_at, user_id=session.user_id, team_id=session.team_id
        )

    deps.routes.add(
        Operation(
            "POST",
            "/v1/auth/login",
            login,
            "Log in with email and password; returns a short-lived session token (JWT)",
            ("auth",),
            Access.PUBLIC,
            request=LoginRequest,
            response=LoginResponse,
            errors=(403,),
        )
    )
