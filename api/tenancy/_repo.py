"""SQL for users, teams, memberships and API keys. Functions take a connection so callers choose the transaction."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import DictRow

from wrenn.api.auth import NewApiKey, Role
from wrenn.api.tenancy._models import ApiKey, Member, Team, TeamRole, User
from wrenn.protocol import Conflict

Conn = psycopg.AsyncConnection[DictRow]
_KEY_COLUMNS = "id, team_id, name, key_prefix AS prefix, created_by, created_at, last_used_at, revoked_at"


async def _one(conn: Conn, sql: str, params: Any) -> dict[str, Any] | None:
    cur = await conn.execute(sql, params)
    return await cur.fetchone()


async def _all(conn: Conn, sql: str, params: Any) -> list[dict[str, Any]]:
    cur = await conn.execute(sql, params)
    return await cur.fetchall()


# users


async def insert_user(
    conn: Conn, *, user_id: uuid.UUID, email: str, password_hash: str | None, is_admin: bool, now: datetime
) -> User:
    try:
        row = await _one(
            conn,
            "INSERT INTO users (id, email, password_hash, is_admin, created_at) VALUES (%s, %s, %s, %s, %s) "
            "RETURNING id, email, is_admin, created_at",
            (user_id, email, password_hash, is_admin, now),
        )
    except psycopg.errors.UniqueViolation as exc:
        raise Conflict("a user with that email exists") from exc
    assert row is not None
    return User.model_validate(row)


async def get_user(conn: Conn, user_id: uuid.UUID) -> User | None:
    row = await _one(conn, "SELECT id, email, is_admin, created_at FROM users WHERE id = %s", (user_id,))
    return None if row is None else User.model_validate(row)


async def find_user_by_email(conn: Conn, email: str) -> User | None:
    row = await _one(conn, "SELECT id, email, is_admin, created_at FROM users WHERE lower(email) = lower(%s)", (email,))
    return None if row is None else User.model_validate(row)


async def list_users(conn: Conn) -> list[User]:
    rows = await _all(conn, "SELECT id, email, is_admin, created_at FROM users ORDER BY created_at, id", ())
    return [User.model_validate(r) for r in rows]


async def count_users(conn: Conn) -> int:
    row = await _one(conn, "SELECT count(*) AS n FROM users", ())
    return int(row["n"]) if row else 0


async def teams_of_user(conn: Conn, user_id: uuid.UUID) -> list[TeamRole]:
    rows = await _all(
        conn,
        "SELECT t.id AS team_id, t.name, m.role FROM memberships m JOIN teams t ON t.id = m.team_id "
        "WHERE m.user_id = %s ORDER BY m.created_at, t.id",
        (user_id,),
    )
    return [TeamRole.model_validate(r) for r in rows]


# teams


async def insert_team(conn: Conn, *, team_id: uuid.UUID, name: str, now: datetime) -> dict[str, Any]:
    row = await _one(
        conn, "INSERT INTO teams (id, name, created_at) VALUES (%s, %s, %s) RETURNING *", (team_id, name, now)
    )
    assert row is not None
    return row


async def get_team(conn: Conn, team_id: uuid.UUID, viewer: uuid.UUID | None) -> Team | None:
    row = await _one(
        conn,
        "SELECT t.id, t.name, t.created_at, m.role FROM teams t "
        "LEFT JOIN memberships m ON m.team_id = t.id AND m.user_id = %s WHERE t.id = %s",
        (viewer, team_id),
    )
    return None if row is None else Team.model_validate(row)


async def list_teams(conn: Conn, *, viewer: uuid.UUID | None, only_member: bool) -> list[Team]:
    join = "JOIN" if only_member else "LEFT JOIN"
    rows = await _all(
        conn,
        f"SELECT t.id, t.name, t.created_at, m.role FROM teams t "  # noqa: S608  # join kind is one of two literals
        f"{join} memberships m ON m.team_id = t.id AND m.user_id = %s ORDER BY t.created_at, t.id",
        (viewer,),
    )
    return [Team.model_validate(r) for r in rows]


# memberships


async def insert_membership(conn: Conn, *, team_id: uuid.UUID, user_id: uuid.UUID, role: Role, now: datetime) -> None:
    try:
        await conn.execute(
            "INSERT INTO memberships (team_id, user_id, role, created_at) VALUES (%s, %s, %s, %s)",
            (team_id, user_id, role.value, now),
        )
    except psycopg.errors.UniqueViolation as exc:
        raise Conflict("already a member of the team") from exc


async def get_role(conn: Conn, team_id: uuid.UUID, user_id: uuid.UUID) -> Role | None:
    row = await _one(conn, "SELECT role FROM memberships WHERE team_id = %s AND user_id = %s", (team_id, user_id))
    return None if row is None else Role(row["role"])


async def lock_memberships(conn: Conn, team_id: uuid.UUID) -> None:
    """Serialise membership changes of one team (the last-owner rule reads, then writes)."""
    await conn.execute("SELECT id FROM teams WHERE id = %s FOR UPDATE", (team_id,))


async def count_owners(conn: Conn, team_id: uuid.UUID) -> int:
    row = await _one(conn, "SELECT count(*) AS n FROM memberships WHERE team_id = %s AND role = 'owner'", (team_id,))
    return int(row["n"]) if row else 0


async def list_members(conn: Conn, team_id: uuid.UUID) -> list[Member]:
    rows = await _all(
        conn,
        "SELECT m.user_id, u.email, m.role, m.created_at FROM memberships m JOIN users u ON u.id = m.user_id "
        "WHERE m.team_id = %s ORDER BY m.created_at, m.user_id",
        (team_id,),
    )
    return [Member.model_validate(r) for r in rows]


async def get_member(conn: Conn, team_id: uuid.UUID, user_id: uuid.UUID) -> Member | None:
    row = await _one(
        conn,
        "SELECT m.user_id, u.email, m.role, m.created_at FROM memberships m JOIN users u ON u.id = m.user_id "
        "WHERE m.team_id = %s AND m.user_id = %s",
        (team_id, user_id),
    )
    return None if row is None else Member.model_validate(row)


async def set_role(conn: Conn, team_id: uuid.UUID, user_id: uuid.UUID, role: Role) -> None:
    await conn.execute(
        "UPDATE memberships SET role = %s WHERE team_id = %s AND user_id = %s", (role.value, team_id, user_id)
    )


async def delete_membership(conn: Conn, team_id: uuid.UUID, user_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM memberships WHERE team_id = %s AND user_id = %s", (team_id, user_id))


# API keys


async def insert_api_key(
    conn: Conn,
    *,
    key_id: uuid.UUID,
    team_id: uuid.UUID,
    name: str,
    key: NewApiKey,
    created_by: uuid.UUID | None,
    now: datetime,
) -> ApiKey:
    row = await _one(
        conn,
        "INSERT INTO api_keys (id, team_id, created_by, name, key_hash, key_prefix, created_at) "  # noqa: S608
        f"VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_KEY_COLUMNS}",  # the column list is a constant
        (key_id, team_id, created_by, name, key.hash, key.prefix, now),
    )
    assert row is not None
    return ApiKey.model_validate(row)


async def list_api_keys(conn: Conn, team_id: uuid.UUID) -> list[ApiKey]:
    rows = await _all(
        conn,
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE team_id = %s ORDER BY created_at, id",  # noqa: S608
        (team_id,),
    )
    return [ApiKey.model_validate(r) for r in rows]


async def get_api_key(conn: Conn, team_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey | None:
    row = await _one(
        conn,
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE team_id = %s AND id = %s",  # noqa: S608
        (team_id, key_id),
    )
    return None if row is None else ApiKey.model_validate(row)


async def revoke_api_key(conn: Conn, team_id: uuid.UUID, key_id: uuid.UUID, now: datetime) -> None:
    await conn.execute(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, %s) WHERE team_id = %s AND id = %s",
        (now, team_id, key_id),
    )
