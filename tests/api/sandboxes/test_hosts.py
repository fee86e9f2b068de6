"""Hosts: one-time registration tokens, registration, heartbeats, placement and reconciliation, against the real
database and the running stack (a second control-plane instance in the test's own loop plays a second replica)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from tests.api.sandboxes.conftest import ADMIN_URL, Stack
from wrenn.api.clock import Ids, utc_now
from wrenn.api.hosts import HostDirectory, HostService
from wrenn.api.jobs import JobQueue
from wrenn.api.reconciler import reconcile_once
from wrenn.api.sandboxes import SandboxConfig, SandboxService
from wrenn.api.scheduler import place
from wrenn.api.store import Store, migrate
from wrenn.protocol.errors import Exhausted, Unavailable

pytestmark = [pytest.mark.postgres]


def _session(stack: Stack) -> dict[str, str]:
    with httpx.Client(base_url=stack.url) as c:
        r = c.post("/v1/auth/login", json={"email": "admin@wrenn.local", "password": stack.admin_password})
        r.raise_for_status()
        return {"Authorization": f"Bearer {r.json()['token']}"}


def _register(c: httpx.Client, stack: Stack, token: str) -> httpx.Response:
    info = stack.agent.host_info().model_dump(mode="json")
    return c.post(
        "/v1/hosts/register", json={"token": token, "address": "http://127.0.0.1:9", "name": "t", "info": info}
    )


def test_tokens_are_one_time_and_admin_only(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url) as c:
        assert c.post("/v1/hosts/tokens", json={}, headers={"X-API-KEY": stack.api_key}).status_code == 403
        assert c.post("/v1/hosts/tokens", json={}).status_code == 401
        token = c.post("/v1/hosts/tokens", json={"ttl_s": 120}, headers=_session(stack))
        assert token.status_code == 201
        first = _register(c, stack, token.json()["token"])
        assert first.status_code == 201
        assert set(first.json()) >= {"host_id", "host_secret", "heartbeat_interval_s"}
        again = _register(c, stack, token.json()["token"])
        assert again.status_code == 401
        assert again.json()["code"] == 401
        assert _register(c, stack, "wrenn_host_" + "0" * 48).status_code == 401
        # an expired token
        with psycopg.connect(stack.database_url) as conn:
            conn.execute(
                "INSERT INTO host_tokens (token_hash, created_at, expires_at) "
                "VALUES (%s, now(), now() - interval '1 s')",
                (hashlib.sha256(b"expired-token").hexdigest(),),
            )
        assert _register(c, stack, "expired-token").status_code == 401
        # heartbeats: the secret decides
        host_id, secret = first.json()["host_id"], first.json()["host_secret"]
        info = stack.agent.host_info().model_copy(update={"memory_mb_used": 1234}).model_dump(mode="json")
        url = f"/v1/hosts/{host_id}/heartbeat"
        assert c.post(url, json=info, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post(url, json=info).status_code == 401
        assert c.post(url, json=info, headers={"Authorization": f"Bearer {secret}"}).status_code == 204
        hosts = {h["id"]: h for h in c.get("/v1/hosts", headers=_session(stack)).json()}
        assert hosts[host_id]["memory_mb_used"] == 1234
        assert c.get("/v1/hosts", headers={"X-API-KEY": stack.api_key}).status_code == 403
        # the unreachable test host must not take sandboxes of the other tests
        with psycopg.connect(stack.database_url) as conn:
            conn.execute("UPDATE hosts SET state = 'removed' WHERE id = %s", (host_id,))


@pytest.fixture
def scratch_db() -> Iterator[str]:
    name = f"wrenn_test_sched_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def scratch_store(scratch_db: str) -> AsyncIterator[Store]:
    await migrate(scratch_db)
    async with Store(scratch_db) as store:
        yield store


async def _host(store: Store, host_id: str, *, vcpus: int, mem: int, mem_used: int = 0, age_s: float = 0) -> None:
    seen = datetime.now(UTC) - timedelta(seconds=age_s)
    async with store.connection() as conn:
        await conn.execute(
            "INSERT INTO hosts (id, name, address, secret_hash, vcpus_total, memory_mb_total, memory_mb_used, "
            "created_at, last_heartbeat_at) VALUES (%s, %s, 'http://h', 'x', %s, %s, %s, %s, %s)",
            (host_id, host_id, vcpus, mem, mem_used, seen, seen),
        )


@pytest.mark.parametrize(
    ("hosts", "want"),
    [
        ([("a", 4, 8192, 0, 0), ("b", 4, 16384, 0, 0)], "b"),  # most free memory wins
        ([("a", 4, 8192, 0, 0), ("b", 4, 16384, 15000, 0)], "a"),  # reported use counts
        ([("a", 4, 8192, 0, 0), ("b", 4, 16384, 0, 3600)], "a"),  # a silent host gets nothing
        ([("a", 4, 256, 0, 0)], Exhausted),  # no room anywhere
        ([("a", 4, 8192, 0, 3600)], Unavailable),  # nobody alive
        ([], Unavailable),
    ],
)
async def test_placement(scratch_store: Store, hosts: list[tuple[str, int, int, int, float]], want: object) -> None:
    for host_id, vcpus, mem, used, age in hosts:
        await _host(scratch_store, host_id, vcpus=vcpus, mem=mem, mem_used=used, age_s=age)
    async with scratch_store.transaction() as conn:
        if isinstance(want, str):
            got = await place(conn, vcpus=1, memory_mb=512, now=utc_now(), heartbeat_ttl=timedelta(seconds=60))
            assert got.host_id == want
        else:
            with pytest.raises(want):  # type: ignore[call-overload]
                await place(conn, vcpus=1, memory_mb=512, now=utc_now(), heartbeat_ttl=timedelta(seconds=60))


async def test_reconciler_marks_lost_sandboxes_and_destroys_orphans(stack: Stack) -> None:
    async with Store(stack.database_url) as store, HostDirectory(store) as directory:
        service = SandboxService(
            store=store,
            queue=JobQueue(store, utc_now),
            hosts=directory,
            clock=utc_now,
            ids=Ids(),
            config=SandboxConfig(templates=frozenset({"base"}), domain="localhost", heartbeat_ttl_s=3600),
        )
        hosts = HostService(store, utc_now, Ids(), heartbeat_interval_s=10)
        async with httpx.AsyncClient(base_url=stack.url, headers={"X-API-KEY": stack.api_key}) as c:
            lost = (await c.post("/sandboxes", json={"templateID": "base"})).json()["sandboxID"]
            kept = (await c.post("/sandboxes", json={"templateID": "base"})).json()["sandboxID"]
            assert stack.agent.destroy(lost)  # the host loses it behind the control plane's back
            report = await reconcile_once(
                store=store, hosts=hosts, directory=directory, sandboxes=service, clock=utc_now
            )
            assert lost in report.marked_missing
            assert kept not in report.marked_missing
            assert (await c.get(f"/sandboxes/{lost}")).status_code == 404
            assert (await c.get(f"/sandboxes/{kept}")).status_code == 200
            with psycopg.connect(stack.database_url) as conn:
                row = conn.execute("SELECT state FROM sandboxes WHERE id = %s", (lost,)).fetchone()
                assert row is not None
                assert row[0] == "missing"
            # an orphan: the agent runs it, the database has no live record (e.g. a rollback that never reached it)
            with psycopg.connect(stack.database_url) as conn:
                conn.execute("UPDATE sandboxes SET state = 'stopped' WHERE id = %s", (kept,))
            report = await reconcile_once(
                store=store,
                hosts=hosts,
                directory=directory,
                sandboxes=service,
                clock=utc_now,
                orphan_grace=timedelta(0),
            )
            assert kept in report.orphans_destroyed
            assert kept not in stack.agent.sandboxes
            # a record stuck in "creating" (its API process died mid-create): failed, and its VM destroyed
            stuck = (await c.post("/sandboxes", json={"templateID": "base"})).json()["sandboxID"]
            with psycopg.connect(stack.database_url) as conn:
                conn.execute(
                    "UPDATE sandboxes SET state = 'creating', created_at = now() - interval '1 hour' WHERE id = %s",
                    (stuck,),
                )
            report = await reconcile_once(
                store=store, hosts=hosts, directory=directory, sandboxes=service, clock=utc_now
            )
            assert report.failed_creates == [stuck]
            assert stuck not in stack.agent.sandboxes
            with psycopg.connect(stack.database_url) as conn:
                row = conn.execute("SELECT state FROM sandboxes WHERE id = %s", (stuck,)).fetchone()
                assert row is not None
                assert row[0] == "failed"
        await service.aclose()
