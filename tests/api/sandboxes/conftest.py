"""Fixtures of the sandbox API tests: a fresh database, the real public app (API + proxy) and the fake agent, each
served by uvicorn on a loopback port in a background thread, the fake host registered through the real
registration route, and two teams with API keys."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from tests.api.sandboxes.fake_agent import FakeAgent
from wrenn.api.auth import new_api_key
from wrenn.api.proxy import SandboxProxy
from wrenn.api.sandboxes import create_public_app
from wrenn.api.settings import Settings
from wrenn.api.store import Store
from wrenn.api.tenancy import bootstrap_admin

pytestmark = pytest.mark.postgres

ADMIN_URL = os.environ.get("WRENN_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


class ThreadServer:
    """uvicorn serving one ASGI app on a loopback socket from its own thread and event loop."""

    def __init__(self, app: Any) -> None:
        # IPPROTO_TCP so that asyncio sets TCP_NODELAY on accepted connections (see wrenn.api.up._runner._bind)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self._sock])
        except BaseException as exc:  # noqa: BLE001  # surfaced by start()
            self.error = exc

    def start(self) -> None:
        self._thread.start()
        deadline = 60.0
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"server on {self.port} did not start: {self.error!r}")
            self._thread.join(0.02)
            deadline -= 0.02
            if deadline <= 0:
                raise TimeoutError("server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self._sock.close()


@dataclass
class Stack:
    url: str
    agent: FakeAgent
    api_key: str
    other_key: str
    team_id: uuid.UUID
    admin_password: str
    database_url: str
    host_id: str
    app: SandboxProxy | None = None


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database on the test server, dropped afterwards."""
    name = f"wrenn_test_sbx_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


async def _seed(database_url: str) -> tuple[str, str, uuid.UUID, str]:
    async with Store(database_url) as store:
        boot = await bootstrap_admin(store)
        assert boot is not None
        other = new_api_key()
        now_team = uuid.uuid4()
        async with store.transaction() as conn:
            await conn.execute("INSERT INTO teams (id, name, created_at) VALUES (%s, 'other', now())", (now_team,))
            await conn.execute(
                "INSERT INTO api_keys (id, team_id, name, key_hash, key_prefix, created_at) "
                "VALUES (%s, %s, 'other', %s, %s, now())",
                (uuid.uuid4(), now_team, other.hash, other.prefix),
            )
    return boot.api_key, other.secret, boot.team_id, boot.password


@contextlib.contextmanager
def running_stack(database_url: str, **overrides: Any) -> Iterator[Stack]:
    """The public app (with `Settings` ``overrides``) and a fake agent registered with it, until the block ends.
    ``database_url`` is seeded (admin, a second team) on first use."""
    knobs: dict[str, Any] = {"job_poll_seconds": 0.2, "reconcile_interval_s": 3600, "host_heartbeat_ttl_s": 3600}
    settings = Settings(database_url=database_url, domain="localhost", **(knobs | overrides))
    public = create_public_app(settings)
    api = ThreadServer(public)
    agent = FakeAgent()
    agent_server = ThreadServer(agent.app())
    api.start()
    agent_server.start()
    try:
        api_key, other_key, team_id, password = asyncio.run(_seed(database_url))
        with httpx.Client(base_url=api.url) as client:
            login = client.post("/v1/auth/login", json={"email": "admin@wrenn.local", "password": password})
            assert login.status_code == 200, login.text
            session = login.json()["token"]
            token = client.post("/v1/hosts/tokens", json={}, headers={"Authorization": f"Bearer {session}"})
            assert token.status_code == 201, token.text
            registered = client.post(
                "/v1/hosts/register",
                json={
                    "token": token.json()["token"],
                    "address": agent_server.url,
                    "name": "fake",
                    "info": agent.host_info().model_dump(mode="json"),
                },
            )
            assert registered.status_code == 201, registered.text
        yield Stack(
            url=api.url,
            agent=agent,
            api_key=api_key,
            other_key=other_key,
            team_id=team_id,
            admin_password=password,
            database_url=database_url,
            host_id=registered.json()["host_id"],
            app=public,
        )
    finally:
        api.stop()
        agent_server.stop()
        agent.close()


@pytest.fixture(scope="session")
def stack(database_url: str) -> Iterator[Stack]:
    with running_stack(database_url) as running:
        yield running


@pytest.fixture
def e2b_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.setenv("E2B_API_URL", stack.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", stack.url)
    monkeypatch.setenv("E2B_DOMAIN", "localhost")
    monkeypatch.setenv("E2B_API_KEY", stack.api_key)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    return stack
