"""`bootstrap_admin`: the first admin, team and key exactly once, and they work over HTTP."""

from __future__ import annotations

import asyncio

import falcon.testing
import pytest
from pydantic import SecretStr

from wrenn.api import Settings, bootstrap_admin, create_app
from wrenn.api.store import Store, migrate

pytestmark = pytest.mark.postgres


async def test_bootstrap_once_and_the_credentials_work(empty_database: str, settings: Settings) -> None:
    await migrate(empty_database)
    async with Store(empty_database) as store:
        first, second = await asyncio.gather(
            bootstrap_admin(store, email="root@example.test"), bootstrap_admin(store, email="other@example.test")
        )
        again = await bootstrap_admin(store)
        counts = await store.fetch_one(
            "SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM teams) AS teams, "
            "(SELECT count(*) FROM api_keys) AS keys"
        )
    created = [b for b in (first, second) if b is not None]
    assert len(created) == 1
    assert again is None
    assert counts == {"users": 1, "teams": 1, "keys": 1}
    boot = created[0]
    assert boot.api_key.startswith("e2b_")
    assert len(boot.password) >= 16

    app = create_app(settings.model_copy(update={"database_url": empty_database, "jwt_secret": SecretStr("s" * 40)}))
    async with falcon.testing.ASGIConductor(app) as client:
        teams = await client.simulate_get("/v1/teams", headers={"X-API-KEY": boot.api_key})
        assert [t["id"] for t in teams.json] == [str(boot.team_id)]
        login = await client.simulate_post("/v1/auth/login", json={"email": boot.email, "password": boot.password})
        assert login.status_code == 200
        me = await client.simulate_get("/v1/users/me", headers={"Authorization": f"Bearer {login.json['token']}"})
        assert me.json["is_admin"] is True
        assert me.json["teams"] == [{"team_id": str(boot.team_id), "name": "default", "role": "owner"}]
