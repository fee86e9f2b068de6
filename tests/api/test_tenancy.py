"""The management API: teams, members, API keys and users, with the tenancy rules and cross-team isolation."""

from __future__ import annotations

import uuid
from typing import Any

import falcon.testing
import pytest

from tests.api.conftest import Factory, Tenant
from wrenn.api import Deps
from wrenn.api.auth import Role

pytestmark = pytest.mark.postgres


async def _counts(deps: Deps, team_id: uuid.UUID) -> dict[str, Any]:
    """Everything a request against `team_id` could have changed, to show a refused request changed nothing."""
    row = await deps.store.fetch_one(
        """
        SELECT (SELECT count(*) FROM teams) AS teams,
               (SELECT count(*) FROM users) AS users,
               (SELECT array_agg(user_id::text || ':' || role ORDER BY user_id) FROM memberships WHERE team_id = %(t)s)
                   AS members,
               (SELECT count(*) FROM api_keys WHERE team_id = %(t)s) AS keys,
               (SELECT count(*) FROM api_keys WHERE team_id = %(t)s AND revoked_at IS NOT NULL) AS revoked
        """,
        {"t": team_id},
    )
    assert row is not None
    return row


def _session(factory: Factory, user_id: uuid.UUID, team_id: uuid.UUID | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {factory.token(user_id, team_id)}"}


# Every route that names a team, with a body where it takes one. {team}, {user} and {key} are the victim's.
_TEAM_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/teams/{team}", None),
    ("GET", "/v1/teams/{team}/members", None),
    ("POST", "/v1/teams/{team}/members", {"email": "{attacker_email}", "role": "owner"}),
    ("PATCH", "/v1/teams/{team}/members/{user}", {"role": "member"}),
    ("DELETE", "/v1/teams/{team}/members/{user}", None),
    ("GET", "/v1/teams/{team}/api-keys", None),
    ("POST", "/v1/teams/{team}/api-keys", {"name": "stolen"}),
    ("DELETE", "/v1/teams/{team}/api-keys/{key}", None),
]


@pytest.mark.parametrize("credential", ["api_key", "session"])
@pytest.mark.parametrize(("method", "template", "body"), _TEAM_ROUTES)
async def test_another_team_sees_nothing_and_changes_nothing(
    client: falcon.testing.ASGIConductor,
    factory: Factory,
    deps: Deps,
    credential: str,
    method: str,
    template: str,
    body: dict[str, Any] | None,
) -> None:
    victim, attacker = await factory.tenant(), await factory.tenant()
    path = template.format(team=victim.team_id, user=victim.user_id, key=victim.api_key_id)
    if body is not None:
        body = {k: (attacker.email if v == "{attacker_email}" else v) for k, v in body.items()}
    headers = attacker.key_headers if credential == "api_key" else attacker.session_headers
    before = await _counts(deps, victim.team_id)
    r = await client.simulate_request(method, path, headers=headers, json=body)
    assert r.status_code == 404, r.text
    assert r.json == {"code": 404, "message": "team not found"}
    assert await _counts(deps, victim.team_id) == before


async def test_lists_show_only_the_callers_teams(client: falcon.testing.ASGIConductor, factory: Factory) -> None:
    a, b = await factory.tenant(), await factory.tenant()
    for t in (a, b):
        for headers in (t.key_headers, t.session_headers):
            r = await client.simulate_get("/v1/teams", headers=headers)
            assert [team["id"] for team in r.json] == [str(t.team_id)]
    me = await client.simulate_get("/v1/users/me", headers=a.session_headers)
    assert [team["team_id"] for team in me.json["teams"]] == [str(a.team_id)]


async def test_admins_see_every_team(client: falcon.testing.ASGIConductor, factory: Factory) -> None:
    a = await factory.tenant()
    admin_id, _ = await factory.user(is_admin=True)
    headers = _session(factory, admin_id, None)
    listed = await client.simulate_get("/v1/teams", headers=headers)
    assert str(a.team_id) in {team["id"] for team in listed.json}
    got = await client.simulate_get(f"/v1/teams/{a.team_id}", headers=headers)
    assert got.status_code == 200
    assert got.json["role"] is None
    members = await client.simulate_get(f"/v1/teams/{a.team_id}/members", headers=headers)
    assert [m["user_id"] for m in members.json] == [str(a.user_id)]
    assert (await client.simulate_get(f"/v1/teams/{uuid.uuid4()}", headers=headers)).status_code == 404


async def test_create_team_makes_the_caller_owner(client: falcon.testing.ASGIConductor, factory: Factory) -> None:
    t = await factory.tenant()
    r = await client.simulate_post("/v1/teams", json={"name": "  research  "}, headers=t.session_headers)
    assert r.status_code == 201, r.text
    assert r.json["name"] == "research"
    assert r.json["role"] == "owner"
    listed = await client.simulate_get("/v1/teams", headers=t.session_headers)
    assert {team["id"] for team in listed.json} == {str(t.team_id), r.json["id"]}


async def test_api_keys_cannot_create_teams(client: falcon.testing.ASGIConductor, factory: Factory, deps: Deps) -> None:
    t = await factory.tenant()
    before = await _counts(deps, t.team_id)
    r = await client.simulate_post("/v1/teams", json={"name": "x"}, headers=t.key_headers)
    assert r.status_code == 403
    assert await _counts(deps, t.team_id) == before


async def test_api_key_lifecycle(client: falcon.testing.ASGIConductor, factory: Factory) -> None:
    t = await factory.tenant()
    keys = f"/v1/teams/{t.team_id}/api-keys"
    created = await client.simulate_post(keys, json={"name": "ci"}, headers=t.session_headers)
    assert created.status_code == 201, created.text
    secret = created.json["key"]
    assert secret.startswith(created.json["prefix"])
    listed = await client.simulate_get(keys, headers=t.session_headers)
    assert {k["name"] for k in listed.json} == {"test", "ci"}
    assert all("key" not in k and "key_hash" not in k for k in listed.json)
    assert secret not in listed.text
    works = await client.simulate_get("/v1/teams", headers={"X-API-KEY": secret})
    assert works.status_code == 200
    revoked = await client.simulate_delete(f"{keys}/{created.json['id']}", headers=t.session_headers)
    assert revoked.status_code == 204
    assert (await client.simulate_get("/v1/teams", headers={"X-API-KEY": secret})).status_code == 401
    listed = await client.simulate_get(keys, headers=t.key_headers)
    assert [k["revoked_at"] is not None for k in listed.json if k["id"] == created.json["id"]] == [True]
    missing = await client.simulate_delete(f"{keys}/{uuid.uuid4()}", headers=t.session_headers)
    assert missing.status_code == 404


async def test_api_keys_cannot_mint_keys(client: falcon.testing.ASGIConductor, factory: Factory, deps: Deps) -> None:
    t = await factory.tenant()
    before = await _counts(deps, t.team_id)
    r = await client.simulate_post(f"/v1/teams/{t.team_id}/api-keys", json={"name": "x"}, headers=t.key_headers)
    assert r.status_code == 403
    assert await _counts(deps, t.team_id) == before


async def _member(factory: Factory, t: Tenant, role: Role) -> tuple[uuid.UUID, dict[str, str]]:
    user_id, _ = await factory.user()
    await factory.join(t.team_id, user_id, role)
    return user_id, _session(factory, user_id, t.team_id)


async def test_members_cannot_manage(client: falcon.testing.ASGIConductor, factory: Factory, deps: Deps) -> None:
    t = await factory.tenant()
    member_id, headers = await _member(factory, t, Role.MEMBER)
    outsider_id, outsider_email = await factory.user()
    before = await _counts(deps, t.team_id)
    team = f"/v1/teams/{t.team_id}"
    refused = [
        await client.simulate_post(f"{team}/members", json={"email": outsider_email}, headers=headers),
        await client.simulate_patch(f"{team}/members/{t.user_id}", json={"role": "member"}, headers=headers),
        await client.simulate_delete(f"{team}/members/{t.user_id}", headers=headers),
        await client.simulate_delete(f"{team}/api-keys/{t.api_key_id}", headers=headers),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403, 403]
    assert await _counts(deps, t.team_id) == before
    # …but a member can see the team, create a key, revoke that key and leave.
    assert (await client.simulate_get(f"{team}/members", headers=headers)).status_code == 200
    key = await client.simulate_post(f"{team}/api-keys", json={"name": "mine"}, headers=headers)
    assert key.status_code == 201
    assert (await client.simulate_delete(f"{team}/api-keys/{key.json['id']}", headers=headers)).status_code == 204
    assert (await client.simulate_delete(f"{team}/members/{member_id}", headers=headers)).status_code == 204
    del outsider_id


async def test_team_admins_manage_members_but_not_owners(
    client: falcon.testing.ASGIConductor, factory: Factory, deps: Deps
) -> None:
    t = await factory.tenant()
    _, headers = await _member(factory, t, Role.ADMIN)
    new_id, new_email = await factory.user()
    team = f"/v1/teams/{t.team_id}"
    added = await client.simulate_post(f"{team}/members", json={"email": new_email}, headers=headers)
    assert added.status_code == 201, added.text
    assert added.json["role"] == "member"
    again = await client.simulate_post(f"{team}/members", json={"user_id": str(new_id)}, headers=headers)
    assert again.status_code == 409
    promoted = await client.simulate_patch(f"{team}/members/{new_id}", json={"role": "admin"}, headers=headers)
    assert promoted.json["role"] == "admin"
    before = await _counts(deps, t.team_id)
    refused = [
        await client.simulate_patch(f"{team}/members/{new_id}", json={"role": "owner"}, headers=headers),
        await client.simulate_patch(f"{team}/members/{t.user_id}", json={"role": "member"}, headers=headers),
        await client.simulate_delete(f"{team}/members/{t.user_id}", headers=headers),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403]
    assert await _counts(deps, t.team_id) == before
    unknown = await client.simulate_post(f"{team}/members", json={"email": "ghost@example.test"}, headers=headers)
    assert unknown.status_code == 404
    assert (await client.simulate_delete(f"{team}/members/{new_id}", headers=headers)).status_code == 204


async def test_a_team_keeps_at_least_one_owner(
    client: falcon.testing.ASGIConductor, factory: Factory, deps: Deps
) -> None:
    t = await factory.tenant()
    team = f"/v1/teams/{t.team_id}"
    before = await _counts(deps, t.team_id)
    demote = await client.simulate_patch(
        f"{team}/members/{t.user_id}", json={"role": "admin"}, headers=t.session_headers
    )
    leave = await client.simulate_delete(f"{team}/members/{t.user_id}", headers=t.session_headers)
    assert (demote.status_code, leave.status_code) == (409, 409)
    assert await _counts(deps, t.team_id) == before
    second_id, _ = await factory.user()
    await factory.join(t.team_id, second_id, Role.MEMBER)
    promote = await client.simulate_patch(
        f"{team}/members/{second_id}", json={"role": "owner"}, headers=t.session_headers
    )
    assert promote.status_code == 200
    assert (await client.simulate_delete(f"{team}/members/{t.user_id}", headers=t.session_headers)).status_code == 204


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"email": "new-{n}@example.test", "password": "long enough"}, 201),
        ({"email": "not-an-email", "password": "long enough"}, 400),
        ({"email": "short-{n}@example.test", "password": "short"}, 400),
        ({"email": "x-{n}@example.test", "password": "long enough", "role": "god"}, 400),
    ],
)
async def test_admins_create_users(
    client: falcon.testing.ASGIConductor, factory: Factory, deps: Deps, body: dict[str, str], status: int
) -> None:
    admin_id, _ = await factory.user(is_admin=True)
    body = {k: v.format(n=uuid.uuid4().hex[:8]) for k, v in body.items()}
    users_before = await deps.store.fetch_one("SELECT count(*) AS n FROM users")
    r = await client.simulate_post("/v1/users", json=body, headers=_session(factory, admin_id, None))
    assert r.status_code == status, r.text
    users_after = await deps.store.fetch_one("SELECT count(*) AS n FROM users")
    assert users_before is not None
    assert users_after is not None
    assert users_after["n"] - users_before["n"] == (1 if status == 201 else 0)
    if status == 201:
        dup = await client.simulate_post("/v1/users", json=body, headers=_session(factory, admin_id, None))
        assert dup.status_code == 409
        login = await client.simulate_post("/v1/auth/login", json={"email": body["email"], "password": "long enough"})
        assert login.status_code == 200
        assert login.json["team_id"] is None


async def test_only_admins_list_or_create_users(client: falcon.testing.ASGIConductor, factory: Factory) -> None:
    t = await factory.tenant()
    for headers in (t.session_headers, t.key_headers):
        assert (await client.simulate_get("/v1/users", headers=headers)).status_code == 403
        r = await client.simulate_post(
            "/v1/users", json={"email": "e@example.test", "password": "long enough"}, headers=headers
        )
        assert r.status_code == 403
    admin_id, _ = await factory.user(is_admin=True)
    listed = await client.simulate_get("/v1/users", headers=_session(factory, admin_id, None))
    assert str(t.user_id) in {u["id"] for u in listed.json}


async def test_me_needs_a_user(client: falcon.testing.ASGIConductor, factory: Factory) -> None:
    t = await factory.tenant()
    assert (await client.simulate_get("/v1/users/me", headers=t.key_headers)).status_code == 403
