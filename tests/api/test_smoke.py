from __future__ import annotations

import falcon.testing
import pytest

from tests.api.conftest import Factory

pytestmark = pytest.mark.postgres


async def test_me_with_session(client: falcon.testing.ASGIConductor, factory: Factory) -> None:
    t = await factory.tenant()
    r = await client.simulate_get("/v1/users/me", headers=t.session_headers)
    assert r.status_code == 200, r.text
    assert r.json["email"] == t.email
    assert r.json["teams"][0]["role"] == "owner"
