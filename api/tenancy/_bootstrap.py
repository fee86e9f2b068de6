"""`bootstrap_admin`: the first admin user, team and API key of a fresh installation (what `wrenn up` calls)."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

from wrenn.api.auth import Role, hash_password, new_api_key
from wrenn.api.clock import Clock, Ids, utc_now
from wrenn.api.store import Store
from wrenn.api.tenancy import _repo

# pg_advisory_xact_lock key: two processes bootstrapping the same database at once create one admin, not two.
_LOCK = 0x5752454E4E  # "WRENN"


@dataclass(frozen=True)
class Bootstrap:
    """What the first start created. The password and the API key exist only here: show them once."""

    user_id: uuid.UUID
    email: str
    password: str
    team_id: uuid.UUID
    team_name: str
    api_key_id: uuid.UUID
    api_key: str


async def bootstrap_admin(
    store: Store,
    *,
    email: str = "admin@wrenn.local",
    password: str | None = None,
    team_name: str = "default",
    key_name: str = "bootstrap",
    clock: Clock = utc_now,
    ids: Ids | None = None,
) -> Bootstrap | None:
    """Create an admin user, a team they own and an API key — only when the database has no user yet.

    Returns None when users exist already (a restart), so calling it on every start is safe.
    """
    ids = ids or Ids()
    password = password or secrets.token_urlsafe(18)
    async with store.transaction() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        if await _repo.count_users(conn) > 0:
            return None
        now = clock()
        user = await _repo.insert_user(
            conn, user_id=ids.uuid(), email=email, password_hash=hash_password(password), is_admin=True, now=now
        )
        team = await _repo.insert_team(conn, team_id=ids.uuid(), name=team_name, now=now)
        await _repo.insert_membership(conn, team_id=team["id"], user_id=user.id, role=Role.OWNER, now=now)
        key = new_api_key()
        record = await _repo.insert_api_key(
            conn, key_id=ids.uuid(), team_id=team["id"], name=key_name, key=key, created_by=user.id, now=now
        )
    return Bootstrap(
        user_id=user.id,
        email=email,
        password=password,
        team_id=team["id"],
        team_name=team_name,
        api_key_id=record.id,
        api_key=key.secret,
    )
