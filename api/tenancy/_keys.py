"""Routes for a team's API keys under ``/v1/teams/{team_id}/api-keys``: create (shown once), list, revoke."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import falcon.asgi

from wrenn.api.auth import new_api_key, principal_of
from wrenn.api.openapi import Operation
from wrenn.api.tenancy import _repo
from wrenn.api.tenancy._access import team_role
from wrenn.api.tenancy._models import ApiKey, ApiKeyCreate, ApiKeyCreated
from wrenn.protocol import Forbidden, NotFound

if TYPE_CHECKING:
    from wrenn.api.deps import Deps

_TAGS = ("api-keys",)
_KEYS = "/v1/teams/{team_id:uuid}/api-keys"


def operations(deps: Deps) -> list[Operation]:
    store = deps.store

    async def list_api_keys(req: falcon.asgi.Request, resp: falcon.asgi.Response, team_id: uuid.UUID) -> list[ApiKey]:
        async with store.connection() as conn:
            await team_role(conn, principal_of(req), team_id)
            return await _repo.list_api_keys(conn, team_id)

    async def create_api_key(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, team_id: uuid.UUID, *, body: ApiKeyCreate
    ) -> ApiKeyCreated:
        principal = principal_of(req)
        async with store.transaction() as conn:
            await team_role(conn, principal, team_id)
            user_id = principal.require_user()
            key = new_api_key()
            record = await _repo.insert_api_key(
                conn,
                key_id=deps.ids.uuid(),
                team_id=team_id,
                name=body.name,
                key=key,
                created_by=user_id,
                now=deps.clock(),
            )
        return ApiKeyCreated(**record.model_dump(), key=key.secret)

    async def revoke_api_key(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, team_id: uuid.UUID, key_id: uuid.UUID
    ) -> None:
        principal = principal_of(req)
        async with store.transaction() as conn:
            role = await team_role(conn, principal, team_id)
            user_id = principal.require_user()
            record = await _repo.get_api_key(conn, team_id, key_id)
            if record is None:
                raise NotFound("API key not found")
            if not (principal.is_admin or (role is not None and role.manages) or record.created_by == user_id):
                raise Forbidden("only the key's creator or a team owner or admin can revoke it")
            await _repo.revoke_api_key(conn, team_id, key_id, deps.clock())

    return [
        Operation(
            "GET", _KEYS, list_api_keys, "List a team's API keys (without secrets)", _TAGS,
            response=list[ApiKey], errors=(404,),
        ),
        Operation(
            "POST", _KEYS, create_api_key, "Create an API key; the secret is in this response only", _TAGS,
            request=ApiKeyCreate, response=ApiKeyCreated, status=201, errors=(403, 404),
        ),
        Operation(
            "DELETE", _KEYS + "/{key_id:uuid}", revoke_api_key, "Revoke an API key", _TAGS,
            status=204, errors=(403, 404),
        ),
    ]  # fmt: skip
