"""Schema migrations with yoyo-migrations over its psycopg 3 backend (``postgresql+psycopg://``).

yoyo is synchronous, so `migrate` runs it in a worker thread. yoyo takes its own lock table, so several API
processes starting at once apply each migration exactly once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from yoyo import get_backend, read_migrations

from wrenn.api.store._pool import yoyo_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _apply(url: str, directory: Path) -> list[str]:
    backend = get_backend(yoyo_url(url))
    try:
        migrations = read_migrations(str(directory))
        with backend.lock():
            todo = backend.to_apply(migrations)
            backend.apply_migrations(todo)
        return [m.id for m in todo]
    finally:
        backend.connection.close()


def _pending(url: str, directory: Path) -> list[str]:
    backend = get_backend(yoyo_url(url))
    try:
        return [m.id for m in backend.to_apply(read_migrations(str(directory)))]
    finally:
        backend.connection.close()


async def migrate(url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration; returns the ids applied (empty when the schema is current)."""
    return await asyncio.to_thread(_apply, url, directory)


async def pending_migrations(url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    return await asyncio.to_thread(_pending, url, directory)
