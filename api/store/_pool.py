"""`Store`: the async connection pool and the transaction helper every repository uses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from wrenn.protocol import Unavailable

Connection = psycopg.AsyncConnection[DictRow]


def psycopg_url(url: str) -> str:
    """The URL psycopg understands: drop SQLAlchemy-style ``+driver`` suffixes yoyo uses."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    return f"{scheme.split('+', 1)[0]}://{rest}"


def yoyo_url(url: str) -> str:
    """The URL yoyo needs to pick its psycopg 3 backend (``postgresql+psycopg://``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    return f"postgresql+psycopg://{rest}"


class Store:
    """A PostgreSQL connection pool with dict rows. Use as ``async with Store(url) as store``."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self._min_size = min_size
        self._max_size = max_size
        self._pool: AsyncConnectionPool[Connection] | None = None

    async def open(self, *, wait_seconds: float = 30.0) -> None:
        if self._pool is not None:
            return
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            psycopg_url(self.url),
            min_size=self._min_size,
            max_size=self._max_size,
            kwargs={"row_factory": dict_row, "autocommit": True},
            connection_class=psycopg.AsyncConnection[DictRow],
            open=False,
            name="wrenn-api",
        )
        try:
            await pool.open(wait=True, timeout=wait_seconds)
        except Exception as exc:
            await pool.close()
            raise Unavailable("database unreachable") from exc
        self._pool = pool

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def pool(self) -> AsyncConnectionPool[Connection]:
        if self._pool is None:
            raise RuntimeError("store is not open (the app's lifespan opens it)")
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled autocommit connection: each statement commits on its own."""
        try:
            async with self.pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise Unavailable("database unavailable") from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A connection inside one transaction: committed when the block ends, rolled back when it raises."""
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def fetch_one(self, sql: Any, params: Any = None) -> dict[str, Any] | None:
        async with self.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchone()

    async def fetch_all(self, sql: Any, params: Any = None) -> list[dict[str, Any]]:
        async with self.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()
