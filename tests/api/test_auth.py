"""Authentication over HTTP: API keys, sessions, and every way they can be wrong."""

from __future__ import annotations

import re
import uuid

import falcon.testing
import jwt
import pytest

from tests.api.conftest import Factory, FakeClock
from wrenn.api import Deps
from wrenn.api.auth import Role, hash_password, new_api_key, verify_password
from wrenn.api.auth._authenticator import FREE_FAILURES

pytestmark = pytest.mark.postgres

_TEAMS = "/v1/teams"


def test_new_api_keys_pass_the_e2b_sdk_validation() -> None:
    # The e2b SDK (>= 2.25) rejects keys that do not match this pattern unless validation is turned off.
    keys = {new_api_key().secret for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert re.fullmatch(r"e2b_[0-9a-f]+", key)
        assert len(key) == 44


def test_password_hashes_verify_and_are_salted() -> None:
    first, second = hash_password("hunter22"), hash_password("hunter22")
    assert first != second
    assert first.startswith("scrypt$")
    assert verify_password("hunter22", first)
    assert not verify_password("hunter23", first)
    assert not verify_password("hunter22", None)
    assert not verify_password("hunter22", "md5$garbage")


async def test_api_key_works_and_touches_last_used(
    client: falcon.testing.ASGIConductor, factory: Factory, deps: Deps, clock: FakeClock
) -> None:
    t = await factory.tenant()
    r = await client.simulate_get(_TEAMS, headers=t.key_headers)
    assert r.status_code == 200, r.text
    assert [team["id"] for team in r.json] == [str(t.team_id)]
    row = await deps.store.fetch_one("SELECT last_used_at FROM api_keys WHERE id = %s", (t.api_key_id,))
    assert row is not None
    assert row["last_used_at"] == clock()
    clock.advance(120)
    await client.simulate_get(_TEAMS, headers=t.key_headers)
    row = await deps.store.fetch_one("SELECT last_used_at FROM api_keys WHERE id = %s", (t.api_key_id,))
    assert row is not None
    assert row["last_used_at"] == clock()


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing credentials"),
        ({"X-API-KEY": "not-a-key"}, "invalid API key"),
        ({"X-API-KEY": "e2b_" + "0" * 40}, "invalid API key"),
        ({"X-API-KEY": "e2b_" + "A" * 40}, "invalid API key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "Bearer"),
        ({"Authorization": "Bearer "}, "Bearer"),
        ({"Authorization": "Bearer not.a.jwt"}, "invalid session token"),
    ],
)
async def test_bad_credentials_are_401(
    client: falcon.testing.ASGIConductor, headers: dict[str, str], message: str
) -> None:
    r = await client.simulate_get(_TEAMS, headers=headers)
    assert r.status_code == 401
    assert r.json["code"] == 401
    assert message in r.json["message"]


async def test_revoked_key_is_401(client: falcon.testing.ASGIConductor, factory: Factory) -> None:
    t = await factory.tenant()
    r = await client.simulate_delete(f"/v1/teams/{t.team_id}/api-keys/{t.api_key_id}", headers=t.session_headers)
    assert r.status_code == 204, r.text
    r = await client.simulate_get(_TEAMS, headers=t.key_headers)
    assert r.status_code == 401
    assert r.json == {"code": 401, "message": "API key revoked"}


async def test_login_issues_a_session_that_expires(
    client: falcon.testing.ASGIConductor, factory: Factory, clock: FakeClock
) -> None:
    t = await factory.tenant()
    r = await client.simulate_post("/v1/auth/login", json={"email": t.email.upper(), "password": t.password})
    assert r.status_code == 200, r.text
    assert r.json["team_id"] == str(t.team_id)
    headers = {"Authorization": f"Bearer {r.json['token']}"}
    assert (await client.simulate_get("/v1/users/me", headers=headers)).status_code == 200
    clock.advance(3601)
    r = await client.simulate_get("/v1/users/me", headers=headers)
    assert r.status_code == 401
    assert r.json["message"] == "session token expired"


@pytest.mark.parametrize(
    "body",
    [
        {"email": "nobody@example.test", "password": "whatever"},
        {"email": "WRONG", "password": "correct horse battery"},
    ],
)
async def test_login_with_wrong_credentials_is_401(
    client: falcon.testing.ASGIConductor, factory: Factory, body: dict[str, str]
) -> None:
    t = await factory.tenant()
    if body["email"] == "WRONG":
        body = {"email": t.email, "password": "wrong password"}
    r = await client.simulate_post("/v1/auth/login", json=body)
    assert r.status_code == 401
    assert r.json == {"code": 401, "message": "wrong email or password"}


async def test_login_for_a_team_one_is_not_in_is_403(client: falcon.testing.ASGIConductor, factory: Factory) -> None:
    t, other = await factory.tenant(), await factory.tenant()
    r = await client.simulate_post(
        "/v1/auth/login", json={"email": t.email, "password": t.password, "team_id": str(other.team_id)}
    )
    assert r.status_code == 403


async def test_token_with_wrong_signature_is_401(
    client: falcon.testing.ASGIConductor, factory: Factory, clock: FakeClock
) -> None:
    t = await factory.tenant()
    now = int(clock().timestamp())
    forged = jwt.encode(
        {"iss": "wrenn", "sub": str(t.user_id), "team": str(t.team_id), "iat": now, "exp": now + 600},
        "some-other-secret-that-is-long-enough-for-hs256",
        algorithm="HS256",
    )
    r = await client.simulate_get("/v1/users/me", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401
    assert r.json["message"] == "invalid session token signature"


async def test_unsigned_token_is_401(client: falcon.testing.ASGIConductor, factory: Factory, clock: FakeClock) -> None:
    t = await factory.tenant()
    now = int(clock().timestamp())
    claims = {"iss": "wrenn", "sub": str(t.user_id), "iat": now, "exp": now + 600}
    unsigned = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]  # alg "none" takes no key
    r = await client.simulate_get("/v1/users/me", headers={"Authorization": f"Bearer {unsigned}"})
    assert r.status_code == 401


async def test_session_of_a_deleted_user_is_401(
    client: falcon.testing.ASGIConductor, factory: Factory, deps: Deps
) -> None:
    user_id, _ = await factory.user()
    token = factory.token(user_id, None)
    async with deps.store.connection() as conn:
        await conn.execute("DELETE FROM users WHERE id = %s", (user_id,))
    r = await client.simulate_get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


async def test_session_for_a_team_left_since_acts_for_no_team(
    client: falcon.testing.ASGIConductor, factory: Factory, deps: Deps
) -> None:
    t = await factory.tenant()
    user_id, _ = await factory.user()
    await factory.join(t.team_id, user_id, Role.MEMBER)
    token = factory.token(user_id, t.team_id)
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.simulate_get(f"/v1/teams/{t.team_id}", headers=headers)).status_code == 200
    async with deps.store.connection() as conn:
        await conn.execute("DELETE FROM memberships WHERE user_id = %s", (user_id,))
    me = await client.simulate_get("/v1/users/me", headers=headers)
    assert me.json["acting_team_id"] is None
    assert (await client.simulate_get(f"/v1/teams/{t.team_id}", headers=headers)).status_code == 404


async def test_api_key_of_unknown_team_id_format(client: falcon.testing.ASGIConductor) -> None:
    r = await client.simulate_get(f"/v1/teams/{uuid.uuid4()}", headers={"X-API-KEY": "e2b_" + "1" * 40})
    assert r.status_code == 401


async def test_logout_revokes_every_session_of_the_user(
    client: falcon.testing.ASGIConductor, factory: Factory, clock: FakeClock
) -> None:
    t = await factory.tenant()
    other = await factory.tenant()
    clock.advance(1)
    second = factory.token(t.user_id, t.team_id)
    clock.advance(1)
    r = await client.simulate_post("/v1/auth/logout", headers={"Authorization": f"Bearer {second}"})
    assert r.status_code == 204
    for token in (t.token, second):
        r = await client.simulate_get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
        assert (r.status_code, r.json["message"]) == (401, "session revoked")
    assert (await client.simulate_get("/v1/users/me", headers=other.session_headers)).status_code == 200
    assert (await client.simulate_get("/v1/teams", headers=t.key_headers)).status_code == 200  # keys unaffected
    login = await client.simulate_post("/v1/auth/login", json={"email": t.email, "password": t.password})
    fresh = {"Authorization": f"Bearer {login.json['token']}"}
    assert (await client.simulate_get("/v1/users/me", headers=fresh)).status_code == 200
    assert (await client.simulate_post("/v1/auth/logout", headers=t.key_headers)).status_code == 401


async def test_password_change_needs_the_current_password_and_logs_out(
    client: falcon.testing.ASGIConductor, factory: Factory, deps: Deps, clock: FakeClock
) -> None:
    t = await factory.tenant()
    clock.advance(1)
    hash_before = await deps.store.fetch_one("SELECT password_hash FROM users WHERE id = %s", (t.user_id,))
    wrong = await client.simulate_post(
        "/v1/auth/password",
        json={"current_password": "not it", "new_password": "brand new password"},
        headers=t.session_headers,
    )
    assert wrong.status_code == 403
    assert await deps.store.fetch_one("SELECT password_hash FROM users WHERE id = %s", (t.user_id,)) == hash_before
    assert (await client.simulate_get("/v1/users/me", headers=t.session_headers)).status_code == 200
    short = await client.simulate_post(
        "/v1/auth/password", json={"current_password": t.password, "new_password": "short"}, headers=t.session_headers
    )
    assert short.status_code == 400
    changed = await client.simulate_post(
        "/v1/auth/password",
        json={"current_password": t.password, "new_password": "brand new password"},
        headers=t.session_headers,
    )
    assert changed.status_code == 204
    assert (await client.simulate_get("/v1/users/me", headers=t.session_headers)).status_code == 401
    old = await client.simulate_post("/v1/auth/login", json={"email": t.email, "password": t.password})
    new = await client.simulate_post("/v1/auth/login", json={"email": t.email, "password": "brand new password"})
    assert (old.status_code, new.status_code) == (401, 200)


@pytest.mark.parametrize("known", [True, False])
async def test_repeated_failed_logins_lock_the_email_for_a_while(
    client: falcon.testing.ASGIConductor, factory: Factory, clock: FakeClock, known: bool
) -> None:
    t = await factory.tenant()
    email = t.email if known else f"ghost-{uuid.uuid4().hex[:8]}@example.test"
    for _ in range(FREE_FAILURES):
        r = await client.simulate_post("/v1/auth/login", json={"email": email, "password": "guess"})
        assert r.status_code == 401
    locked = await client.simulate_post("/v1/auth/login", json={"email": email.upper(), "password": t.password})
    assert locked.status_code == 429
    assert locked.json["message"] == "too many failed logins; try again in 61 s"
    other = await factory.tenant()  # other emails are not affected
    ok = await client.simulate_post("/v1/auth/login", json={"email": other.email, "password": other.password})
    assert ok.status_code == 200
    clock.advance(61)
    after = await client.simulate_post("/v1/auth/login", json={"email": email, "password": t.password})
    assert after.status_code == (200 if known else 401)
    if known:  # a success clears the count: one more failure does not lock again
        again = await client.simulate_post("/v1/auth/login", json={"email": email, "password": "guess"})
        assert again.status_code == 401
        assert (
            await client.simulate_post("/v1/auth/login", json={"email": email, "password": t.password})
        ).status_code == 200
    else:  # that was the sixth failure in a row: locked again, for twice as long
        relocked = await client.simulate_post("/v1/auth/login", json={"email": email, "password": "guess"})
        assert relocked.status_code == 429
        assert relocked.json["message"] == "too many failed logins; try again in 121 s"
