"""Routes for teams and their members under ``/v1/teams``."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import falcon.asgi

from wrenn.api.auth import Principal, Role, principal_of
from wrenn.api.openapi import Operation
from wrenn.api.tenancy import _repo
from wrenn.api.tenancy._access import team_role
from wrenn.api.tenancy._models import Member, MemberAdd, MemberUpdate, Team, TeamCreate
from wrenn.protocol import Conflict, Forbidden, NotFound

if TYPE_CHECKING:
    from wrenn.api.deps import Deps

_TAGS = ("teams",)
_TEAM = "/v1/teams/{team_id:uuid}"
_MEMBER = _TEAM + "/members/{user_id:uuid}"


def _may_touch_owner(principal: Principal, caller_role: Role | None) -> None:
    if not (principal.is_admin or caller_role is Role.OWNER):
        raise Forbidden("only an owner can grant, change or remove the owner role")


def operations(deps: Deps) -> list[Operation]:
    store = deps.store

    async def list_teams(req: falcon.asgi.Request, resp: falcon.asgi.Response) -> list[Team]:
        principal = principal_of(req)
        async with store.connection() as conn:
            if principal.api_key_id is not None:
                team = await _repo.get_team(conn, principal.require_team(), None)
                return [team.model_copy(update={"role": Role.MEMBER})] if team else []
            return await _repo.list_teams(conn, viewer=principal.user_id, only_member=not principal.is_admin)

    async def create_team(req: falcon.asgi.Request, resp: falcon.asgi.Response, *, body: TeamCreate) -> Team:
        user_id = principal_of(req).require_user()
        now = deps.clock()
        async with store.transaction() as conn:
            row = await _repo.insert_team(conn, team_id=deps.ids.uuid(), name=body.name, now=now)
            await _repo.insert_membership(conn, team_id=row["id"], user_id=user_id, role=Role.OWNER, now=now)
        return Team(id=row["id"], name=row["name"], created_at=row["created_at"], role=Role.OWNER)

    async def get_team(req: falcon.asgi.Request, resp: falcon.asgi.Response, team_id: uuid.UUID) -> Team:
        principal = principal_of(req)
        async with store.connection() as conn:
            role = await team_role(conn, principal, team_id)
            team = await _repo.get_team(conn, team_id, None)
        if team is None:
            raise NotFound("team not found")
        return team.model_copy(update={"role": role})

    async def list_members(req: falcon.asgi.Request, resp: falcon.asgi.Response, team_id: uuid.UUID) -> list[Member]:
        async with store.connection() as conn:
            await team_role(conn, principal_of(req), team_id)
            return await _repo.list_members(conn, team_id)

    async def add_member(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, team_id: uuid.UUID, *, body: MemberAdd
    ) -> Member:
        principal = principal_of(req)
        async with store.transaction() as conn:
            caller_role = await team_role(conn, principal, team_id, manage=True)
            if body.role is Role.OWNER:
                _may_touch_owner(principal, caller_role)
            if body.user_id is not None:
                user = await _repo.get_user(conn, body.user_id)
            else:
                user = await _repo.find_user_by_email(conn, body.email or "")
            if user is None:
                raise NotFound("no such user")
            await _repo.insert_membership(conn, team_id=team_id, user_id=user.id, role=body.role, now=deps.clock())
            member = await _repo.get_member(conn, team_id, user.id)
        resp.status = 201
        return member  # type: ignore[return-value]  # just inserted in this transaction

    async def update_member(
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        team_id: uuid.UUID,
        user_id: uuid.UUID,
        *,
        body: MemberUpdate,
    ) -> Member:
        principal = principal_of(req)
        async with store.transaction() as conn:
            caller_role = await team_role(conn, principal, team_id, manage=True)
            await _repo.lock_memberships(conn, team_id)
            target = await _repo.get_member(conn, team_id, user_id)
            if target is None:
                raise NotFound("member not found")
            if Role.OWNER in (target.role, body.role) and target.role is not body.role:
                _may_touch_owner(principal, caller_role)
                if target.role is Role.OWNER and await _repo.count_owners(conn, team_id) <= 1:
                    raise Conflict("a team needs at least one owner")
            await _repo.set_role(conn, team_id, user_id, body.role)
        return target.model_copy(update={"role": body.role})

    async def remove_member(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, team_id: uuid.UUID, user_id: uuid.UUID
    ) -> None:
        principal = principal_of(req)
        async with store.transaction() as conn:
            leaving = principal.user_id == user_id and principal.api_key_id is None
            caller_role = await team_role(conn, principal, team_id, manage=not leaving)
            await _repo.lock_memberships(conn, team_id)
            target = await _repo.get_member(conn, team_id, user_id)
            if target is None:
                raise NotFound("member not found")
            if target.role is Role.OWNER:
                if not leaving:
                    _may_touch_owner(principal, caller_role)
                if await _repo.count_owners(conn, team_id) <= 1:
                    raise Conflict("a team needs at least one owner")
            await _repo.delete_membership(conn, team_id, user_id)

    return [
        Operation(
            "GET", "/v1/teams", list_teams, "List the caller's teams (all teams for admins)", _TAGS,
            response=list[Team],
        ),
        Operation(
            "POST", "/v1/teams", create_team, "Create a team owned by the caller", _TAGS,
            request=TeamCreate, response=Team, status=201, errors=(403,),
        ),
        Operation("GET", _TEAM, get_team, "Get a team", _TAGS, response=Team, errors=(404,)),
        Operation(
            "GET", _TEAM + "/members", list_members, "List a team's members", _TAGS,
            response=list[Member], errors=(404,),
        ),
        Operation(
            "POST", _TEAM + "/members", add_member, "Add a user to a team", _TAGS,
            request=MemberAdd, response=Member, status=201, errors=(403, 404, 409),
        ),
        Operation(
            "PATCH", _MEMBER, update_member, "Change a member's role", _TAGS,
            request=MemberUpdate, response=Member, errors=(403, 404, 409),
        ),
        Operation(
            "DELETE", _MEMBER, remove_member, "Remove a member from a team (or leave it)", _TAGS,
            status=204, errors=(403, 404, 409),
        ),
    ]  # fmt: skip
