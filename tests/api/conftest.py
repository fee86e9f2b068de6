"""Fixtures for control-plane tests: a throwaway PostgreSQL database, the app under a test client, factories.

The database is created on the local server (``postgresql://postgres@127.0.0.1:5432/``) once per test session as
``wrenn_test_<random>`` and dropped afterwards; ``WRENN_TEST_DATABASE_URL`` points at another server instead.
Tests share it, so they make their own teams and users (the factories) and never assume an empty table.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import falcon.testing
import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from wrenn.api import Deps, Settings, create_app, deps_of
from wrenn.api.app import WrennApp
from wrenn.api.auth import Role, hash_password, new_api_key
from wrenn.api.store import Store, migrate
from wrenn.api.tenancy import _repo

_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    server = os.environ.get("WRENN_TEST_DATABASE_URL", _SERVER)
    name = f"wrenn_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(server, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {server}: {exc}")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(server)
    url = f"postgresql://{info.get('user', 'postgres')}@{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}/{name}"
    # Migrated once here, so neither the apps the tests start (`settings`) nor `store` check it again. Why: under
    # falcon's test conductor an app's start-up is waited for with an `asyncio.sleep(0)` loop while yoyo's check
    # runs in a worker thread — the suspected (not proven) cause of full runs where tests/api took ~10x longer.
    asyncio.run(migrate(url))
    yield url
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def empty_database(database_url: str) -> Iterator[str]:
    """A second, empty database on the same server, for watching migrations from nothing."""
    name = f"wrenn_mig_{secrets.token_hex(5)}"
    server = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield database_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class FakeClock:
    """A clock tests move by hand (expired tokens, job leases) instead of sleeping."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        jwt_secret=SecretStr("test-secret-" + "x" * 40),
        data_dir=tmp_path,
        job_workers=0,
        max_body_bytes=64 * 1024,
        db_pool_max=4,
        apply_migrations=False,  # `database_url` is migrated already
    )


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    async with Store(database_url, max_size=4) as opened:
        yield opened


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> WrennApp:
    return create_app(settings, clock=clock)


@pytest.fixture
async def client(app: WrennApp) -> AsyncIterator[falcon.testing.ASGIConductor]:
    async with falcon.testing.ASGIConductor(app) as conductor:
        yield conductor


@pytest.fixture
def deps(app: WrennApp) -> Deps:
    return deps_of(app)


@dataclass(frozen=True)
class Tenant:
    """A team with one owner (password login works) and one API key, plus ready-made request headers."""

    team_id: uuid.UUID
    user_id: uuid.UUID
    email: str
    password: str
    api_key: str
    api_key_id: uuid.UUID
    token: str

    @property
    def key_headers(self) -> dict[str, str]:
        return {"X-API-KEY": self.api_key}

    @property
    def session_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Factory:
    """Makes users, teams and keys straight in the database (tests of the routes use the routes)."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def user(self, *, is_admin: bool = False, password: str = "correct horse battery") -> tuple[uuid.UUID, str]:
        email = f"user-{secrets.token_hex(4)}@example.test"
        async with self.deps.store.connection() as conn:
            user = await _repo.insert_user(
                conn,
                user_id=uuid.uuid4(),
                email=email,
                password_hash=hash_password(password),
                is_admin=is_admin,
                now=self.deps.clock(),
            )
        return user.id, email

    async def join(self, team_id: uuid.UUID, user_id: uuid.UUID, role: Role) -> None:
        async with self.deps.store.connection() as conn:
            await _repo.insert_membership(conn, team_id=team_id, user_id=user_id, role=role, now=self.deps.clock())

    def token(self, user_id: uuid.UUID, team_id: uuid.UUID | None) -> str:
        return self.deps.auth.tokens.issue(user_id, team_id).token

    async def tenant(self, *, is_admin: bool = False) -> Tenant:
        password = "correct horse battery"
        user_id, email = await self.user(is_admin=is_admin, password=password)
        now = self.deps.clock()
        key = new_api_key()
        async with self.deps.store.transaction() as conn:
            team = await _repo.insert_team(conn, team_id=uuid.uuid4(), name=f"team-{secrets.token_hex(3)}", now=now)
            await _repo.insert_membership(conn, team_id=team["id"], user_id=user_id, role=Role.OWNER, now=now)
            record = await _repo.insert_api_key(
                conn, key_id=uuid.uuid4(), team_id=team["id"], name="test", key=key, created_by=user_id, now=now
            )
        return Tenant(
            team_id=team["id"],
            user_id=user_id,
            email=email,
            password=password,
            api_key=key.secret,
            api_key_id=record.id,
            token=self.token(user_id, team["id"]),
        )


@pytest.fixture
def factory(client: falcon.testing.ASGIConductor, deps: Deps) -> Factory:
    """Needs `client` so the app's lifespan has opened the store and applied migrations."""
    return Factory(deps)
