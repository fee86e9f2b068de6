"""Session routes: ``POST /v1/auth/login`` (email + password -> JWT), ``POST /v1/auth/logout`` (revoke all of the
user's sessions) and ``POST /v1/auth/password`` (change the password; also revokes the sessions)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

import falcon.asgi
from pydantic import BaseModel, ConfigDict, Field

from wrenn.api.auth._principal import principal_of
from wrenn.api.openapi import Access, Operation

if TYPE_CHECKING:
    from wrenn.api.deps import AsgiApp, Deps


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)
    team_id: uuid.UUID | None = Field(default=None, description="team to act for; default: the user's first team")


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


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

    async def logout(req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await deps.auth.revoke_sessions(principal_of(req).require_user())

    async def change_password(req: falcon.asgi.Request, resp: falcon.asgi.Response, *, body: PasswordChange) -> None:
        user_id = principal_of(req).require_user()
        await deps.auth.change_password(user_id, body.current_password, body.new_password)

    deps.routes.add(
        Operation(
            "POST",
            "/v1/auth/logout",
            logout,
            "Log out everywhere: every session token of the user issued so far stops working",
            ("auth",),
            Access.SESSION,
            status=204,
        ),
        Operation(
            "POST",
            "/v1/auth/password",
            change_password,
            "Change the caller's password (needs the current one); logs out every session",
            ("auth",),
            Access.SESSION,
            request=PasswordChange,
            status=204,
            errors=(403,),
        ),
        Operation(
            "POST",
            "/v1/auth/login",
            login,
            "Log in with email and password; returns a short-lived session token (JWT)",
            ("auth",),
            Access.PUBLIC,
            request=LoginRequest,
            response=LoginResponse,
            errors=(403, 429),
        ),
    )
