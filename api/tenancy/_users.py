"""Routes for users under ``/v1/users``: the caller (``me``) and, for admins, everyone."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import falcon.asgi

from wrenn.api.auth import Principal, hash_password, principal_of
from wrenn.api.openapi import Operation
from wrenn.api.tenancy import _repo
from wrenn.api.tenancy._models import Me, User, UserCreate
from wrenn.protocol import Forbidden, NotFound

if TYPE_CHECKING:
    from wrenn.api.deps import Deps

_TAGS = ("users",)


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("needs a Wrenn administrator")


def operations(deps: Deps) -> list[Operation]:
    store = deps.store

    async def get_me(req: falcon.asgi.Request, resp: falcon.asgi.Response) -> Me:
        principal = principal_of(req)
        user_id = principal.require_user()
        async with store.connection() as conn:
            user = await _repo.get_user(conn, user_id)
            if user is None:
                raise NotFound("user not found")
            teams = await _repo.teams_of_user(conn, user_id)
        return Me(**user.model_dump(), teams=teams, acting_team_id=principal.team_id)

    async def list_users(req: falcon.asgi.Request, resp: falcon.asgi.Response) -> list[User]:
        _require_admin(principal_of(req))
        async with store.connection() as conn:
            return await _repo.list_users(conn)

    async def create_user(req: falcon.asgi.Request, resp: falcon.asgi.Response, *, body: UserCreate) -> User:
        _require_admin(principal_of(req))
        password_hash = await asyncio.to_thread(hash_password, body.password)  # scrypt: keep the loop free
        async with store.connection() as conn:
            return await _repo.insert_user(
                conn,
                user_id=deps.ids.uuid(),
                email=body.email,
                password_hash=password_hash,
                is_admin=body.is_admin,
                now=deps.clock(),
            )

    return [
        Operation("GET", "/v1/users/me", get_me, "The calling user and their teams", _TAGS, response=Me, errors=(403,)),
        Operation("GET", "/v1/users", list_users, "List all users (admins)", _TAGS, response=list[User], errors=(403,)),
        Operation(
            "POST", "/v1/users", create_user, "Create a user (admins)", _TAGS,
            request=UserCreate, response=User, status=201, errors=(403, 409),
        ),
    ]  # fmt: skip
