"""`Authenticator`: turns the credentials on a request into a `Principal`, and passwords into sessions."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import falcon.asgi

from wrenn.api.auth._keys import API_KEY_PATTERN, hash_api_key
from wrenn.api.auth._passwords import hash_password, verify_password
from wrenn.api.auth._principal import Principal, Role
from wrenn.api.auth._tokens import Session, SessionTokens
from wrenn.api.clock import Clock
from wrenn.api.openapi import Access
from wrenn.api.store import Store
from wrenn.protocol import Exhausted, Forbidden, Unauthenticated

_TOUCH_EVERY = timedelta(seconds=60)  # last_used_at precision; saves a write on every request
# Password guessing: after this many failures in a row an email is locked out for a while, doubling each further
# failure up to an hour. A success clears the count.
FREE_FAILURES = 5
_FIRST_LOCKOUT = timedelta(seconds=60)
_MAX_LOCKOUT = timedelta(hours=1)


class Authenticator:
    def __init__(self, store: Store, tokens: SessionTokens, clock: Clock) -> None:
        self._store = store
        self.tokens = tokens
        self._clock = clock

    async def authenticate(self, req: falcon.asgi.Request, access: Access) -> Principal:
        """The principal for an operation that accepts `access`; Unauthenticated when none is usable."""
        key = req.get_header("X-API-KEY")
        if key is not None and access in (Access.API_KEY, Access.ANY):
            return await self.from_api_key(key)
        authorization = req.get_header("Authorization")
        if authorization is not None and access in (Access.SESSION, Access.ANY):
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("Authorization must be 'Bearer <token>'")
            return await self.from_token(token.strip())
        wanted = {
            Access.API_KEY: "an X-API-KEY header",
            Access.SESSION: "an Authorization: Bearer session token",
            Access.ANY: "an X-API-KEY header or an Authorization: Bearer session token",
        }.get(access, "credentials")
        raise Unauthenticated(f"missing credentials: this operation needs {wanted}")

    async def from_api_key(self, key: str) -> Principal:
        if not API_KEY_PATTERN.fullmatch(key):
            raise Unauthenticated("invalid API key")
        row = await self._store.fetch_one(
            "SELECT id, team_id, last_used_at, revoked_at FROM api_keys WHERE key_hash = %s", (hash_api_key(key),)
        )
        if row is None:
            raise Unauthenticated("invalid API key")
        if row["revoked_at"] is not None:
            raise Unauthenticated("API key revoked")
        now = self._clock()
        if row["last_used_at"] is None or now - row["last_used_at"] >= _TOUCH_EVERY:
            async with self._store.connection() as conn:
                await conn.execute("UPDATE api_keys SET last_used_at = %s WHERE id = %s", (now, row["id"]))
        return Principal(team_id=row["team_id"], user_id=None, api_key_id=row["id"], role=Role.MEMBER, is_admin=False)

    async def from_token(self, token: str) -> Principal:
        user_id, team_id, issued = self.tokens.verify(token)
        row = await self._store.fetch_one(
            "SELECT u.is_admin, u.sessions_valid_after, m.role FROM users u "
            "LEFT JOIN memberships m ON m.user_id = u.id AND m.team_id = %s WHERE u.id = %s",
            (team_id, user_id),
        )
        if row is None:
            raise Unauthenticated("the session's user no longer exists")
        if row["sessions_valid_after"] is not None and issued < row["sessions_valid_after"]:
            raise Unauthenticated("session revoked")
        role = Role(row["role"]) if row["role"] is not None else None
        # A session outlives a membership that was removed since login: it then acts for no team.
        acting_team = team_id if role is not None else None
        return Principal(team_id=acting_team, user_id=user_id, api_key_id=None, role=role, is_admin=row["is_admin"])

    async def _record_failure(self, email: str, now: datetime) -> None:
        async with self._store.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO login_attempts (email, failures, updated_at) VALUES (lower(%s), 1, %s) "
                "ON CONFLICT (email) DO UPDATE "
                "SET failures = login_attempts.failures + 1, updated_at = EXCLUDED.updated_at RETURNING failures",
                (email, now),
            )
            row = await cur.fetchone()
            failures = int(row["failures"]) if row else 1
            if failures >= FREE_FAILURES:
                lockout = min(_FIRST_LOCKOUT * 2 ** (failures - FREE_FAILURES), _MAX_LOCKOUT)
                await conn.execute(
                    "UPDATE login_attempts SET locked_until = %s WHERE email = lower(%s)", (now + lockout, email)
                )

    async def revoke_sessions(self, user_id: uuid.UUID) -> None:
        """Refuse every session of `user_id` issued until now (log out everywhere)."""
        async with self._store.connection() as conn:
            await conn.execute("UPDATE users SET sessions_valid_after = %s WHERE id = %s", (self._clock(), user_id))

    async def change_password(self, user_id: uuid.UUID, current: str, new: str) -> None:
        """Replace the password after checking the current one; revokes the user's sessions."""
        row = await self._store.fetch_one("SELECT password_hash FROM users WHERE id = %s", (user_id,))
        ok = await asyncio.to_thread(verify_password, current, row["password_hash"] if row else None)
        if not ok:
            raise Forbidden("the current password is wrong")
        new_hash = await asyncio.to_thread(hash_password, new)
        async with self._store.connection() as conn:
            await conn.execute(
                "UPDATE users SET password_hash = %s, sessions_valid_after = %s WHERE id = %s",
                (new_hash, self._clock(), user_id),
            )

    async def login(self, email: str, password: str, team_id: uuid.UUID | None = None) -> Session:
        now = self._clock()
        attempts = await self._store.fetch_one(
            "SELECT locked_until FROM login_attempts WHERE email = lower(%s)", (email,)
        )
        if attempts is not None and attempts["locked_until"] is not None and attempts["locked_until"] > now:
            wait = int((attempts["locked_until"] - now).total_seconds()) + 1
            raise Exhausted(f"too many failed logins; try again in {wait} s")
        user = await self._store.fetch_one(
            "SELECT id, password_hash, is_admin FROM users WHERE lower(email) = lower(%s)", (email,)
        )
        # scrypt takes tens of milliseconds of CPU: off the event loop, so other requests keep flowing.
        ok = await asyncio.to_thread(verify_password, password, user["password_hash"] if user else None)
        if not ok or user is None:
            await self._record_failure(email, now)
            raise Unauthenticated("wrong email or password")
        if attempts is not None:
            async with self._store.connection() as conn:
                await conn.execute("DELETE FROM login_attempts WHERE email = lower(%s)", (email,))
        if team_id is None:
            first = await self._store.fetch_one(
                "SELECT team_id FROM memberships WHERE user_id = %s ORDER BY created_at, team_id LIMIT 1",
                (user["id"],),
            )
            team_id = first["team_id"] if first else None
        else:
            member = await self._store.fetch_one(
                "SELECT 1 AS ok FROM memberships WHERE user_id = %s AND team_id = %s", (user["id"], team_id)
            )
            if member is None:
                raise Forbidden("not a member of that team")
        return self.tokens.issue(user["id"], team_id)
