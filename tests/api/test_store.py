"""Store and migrations against a real PostgreSQL: yoyo over psycopg 3, idempotent application, transactions."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import psycopg
import pytest

from wrenn.api.store import MIGRATIONS_DIR, Store, migrate, pending_migrations, psycopg_url, yoyo_url
from wrenn.protocol import Unavailable

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize(
    ("given", "for_psycopg", "for_yoyo"),
    [
        ("postgresql://u@h:5/db", "postgresql://u@h:5/db", "postgresql+psycopg://u@h:5/db"),
        ("postgresql+psycopg://u@h/db", "postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u@h/db", "postgres://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
)
def test_url_forms(given: str, for_psycopg: str, for_yoyo: str) -> None:
    assert psycopg_url(given) == for_psycopg
    assert yoyo_url(given) == for_yoyo


def test_yoyo_url_rejects_other_databases() -> None:
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        yoyo_url("mysql://u@h/db")


async def test_migrations_apply_once_then_are_a_no_op(empty_database: str) -> None:
    shipped = sorted(p.stem for p in MIGRATIONS_DIR.glob("*.sql"))
    assert await pending_migrations(empty_database) == shipped
    applied = await migrate(empty_database)
    assert applied == shipped
    assert await migrate(empty_database) == []
    assert await pending_migrations(empty_database) == []
    async with Store(empty_database) as store:
        rows = await store.fetch_all("SELECT migration_id FROM _yoyo_migration ORDER BY migration_id")
        tables = await store.fetch_all(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
        )
    assert [r["migration_id"] for r in rows] == shipped
    assert {"users", "teams", "memberships", "api_keys", "jobs"} <= {t["table_name"] for t in tables}


async def test_yoyo_accepts_the_psycopg3_url_form(empty_database: str) -> None:
    plus = empty_database.replace("postgresql://", "postgresql+psycopg://", 1)
    assert await migrate(plus)
    assert await migrate(empty_database) == []


async def test_a_broken_migration_leaves_nothing_behind(empty_database: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok_table (id int);\n")
    (tmp_path / "0002_broken.sql").write_text(
        "-- depends: 0001_ok\nCREATE TABLE half_table (id int);\nSELECT no_such_function();\n"
    )
    with pytest.raises(psycopg.errors.UndefinedFunction):
        await migrate(empty_database, tmp_path)
    async with Store(empty_database) as store:
        tables = {
            r["table_name"]
            for r in await store.fetch_all(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        }
    assert "ok_table" in tables
    assert "half_table" not in tables
    assert await pending_migrations(empty_database, tmp_path) == ["0002_broken"]


async def test_transaction_rolls_back_on_error(store: Store) -> None:
    team_id = uuid.uuid4()

    async def half_done() -> None:
        async with store.transaction() as conn:
            await conn.execute("INSERT INTO teams (id, name, created_at) VALUES (%s, 'x', now())", (team_id,))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await half_done()
    assert await store.fetch_one("SELECT id FROM teams WHERE id = %s", (team_id,)) is None


async def test_unreachable_database_is_unavailable() -> None:
    store = Store("postgresql://postgres@127.0.0.1:1/nothing")
    with pytest.raises(Unavailable):
        await store.open(wait_seconds=1.0)
    with pytest.raises(RuntimeError, match="not open"):
        _ = store.pool


async def test_concurrent_starts_apply_each_migration_once(empty_database: str) -> None:
    """Several API processes starting together: yoyo's lock lets one apply, the others find nothing to do."""
    results = await asyncio.gather(*[migrate(empty_database) for _ in range(3)])
    shipped = sorted(p.stem for p in MIGRATIONS_DIR.glob("*.sql"))
    assert sorted(results, key=len) == [[], [], shipped]
