"""The E2B sandbox REST API and the proxy against real PostgreSQL, the real app under uvicorn, the real e2b SDK and
a fake agent whose sandboxes are real envd processes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from e2b import Sandbox, SandboxQuery
from e2b.exceptions import NotFoundException, SandboxException

from tests.api.sandboxes.conftest import Stack, ThreadServer
from wrenn.api.sandboxes import create_public_app
from wrenn.api.settings import Settings

pytestmark = [pytest.mark.postgres, pytest.mark.sdk]


def _count(stack: Stack, sql: str) -> int:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, headers={"X-API-KEY": stack.api_key}, timeout=60) as c:
        yield c


@pytest.fixture
def other(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, headers={"X-API-KEY": stack.other_key}, timeout=60) as c:
        yield c


@pytest.fixture
def sandbox_id(client: httpx.Client) -> Iterator[str]:
    created = client.post("/sandboxes", json={"templateID": "base", "timeout": 300, "metadata": {"fixture": "1"}})
    assert created.status_code == 201, created.text
    sid: str = created.json()["sandboxID"]
    yield sid
    client.delete(f"/sandboxes/{sid}")


def test_create_returns_201_with_the_e2b_fields(client: httpx.Client, stack: Stack) -> None:
    created = client.post("/v2/sandboxes", json={"templateID": "base", "timeout": 60, "secure": True})
    assert created.status_code == 201
    body = created.json()
    assert set(body) >= {"templateID", "sandboxID", "clientID", "envdVersion", "envdAccessToken"}
    assert len(body["sandboxID"]) == 20
    assert body["sandboxID"] in stack.agent.sandboxes
    info = client.get(f"/sandboxes/{body['sandboxID']}").json()
    assert info["state"] == "running"
    assert info["envdAccessToken"] == body["envdAccessToken"]
    assert {"startedAt", "endAt", "cpuCount", "memoryMB", "diskSizeMB", "lifecycle"} <= set(info)
    assert client.delete(f"/sandboxes/{body['sandboxID']}").status_code == 204
    assert body["sandboxID"] not in stack.agent.sandboxes
    assert client.get(f"/sandboxes/{body['sandboxID']}").status_code == 404
    assert client.delete(f"/sandboxes/{body['sandboxID']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"templateID": "no-such-template"}, 404),
        ({"templateID": "base", "timeout": -1}, 400),
        ({"templateID": "base", "timeout": 10**9}, 400),
        ({"templateID": "base", "metadata": {f"k{i}": "v" for i in range(1000)}}, 400),
        ({"templateID": "base", "metadata": {"k": "v" * 100000}}, 400),
        ({"templateID": "base", "metadata": {"k": 5}}, 400),
        ({"timeout": 10}, 400),
    ],
)
def test_invalid_create_is_4xx_and_creates_nothing(
    client: httpx.Client, stack: Stack, body: dict[str, object], status: int
) -> None:
    before_rows = _count(stack, "SELECT count(*) FROM sandboxes")
    before_agent = stack.agent.creates
    response = client.post("/sandboxes", json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) >= {"code", "message"}
    assert response.json()["code"] == status
    assert _count(stack, "SELECT count(*) FROM sandboxes") == before_rows
    assert stack.agent.creates == before_agent


def test_malformed_json_is_400(client: httpx.Client) -> None:
    response = client.post("/sandboxes", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["code"] == 400


def test_agent_failure_leaves_nothing_half_created(client: httpx.Client, stack: Stack) -> None:
    before = _count(stack, "SELECT count(*) FROM sandboxes")
    stack.agent.fail_next_create = True
    response = client.post("/sandboxes", json={"templateID": "base"})
    assert response.status_code == 503
    assert response.json() == {"code": 503, "message": "VMM failed to start"}
    assert _count(stack, "SELECT count(*) FROM sandboxes") == before


def test_missing_or_bad_key_is_401(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url) as c:
        assert c.get("/v2/sandboxes").status_code == 401
        bad = c.get("/v2/sandboxes", headers={"X-API-KEY": "e2b_" + "0" * 40})
        assert bad.status_code == 401
        assert bad.json()["code"] == 401


def test_other_team_gets_404_on_every_route(other: httpx.Client, client: httpx.Client, sandbox_id: str) -> None:
    calls = [
        ("GET", f"/sandboxes/{sandbox_id}", None),
        ("DELETE", f"/sandboxes/{sandbox_id}", None),
        ("POST", f"/sandboxes/{sandbox_id}/timeout", {"timeout": 10}),
        ("POST", f"/sandboxes/{sandbox_id}/connect", {"timeout": 10}),
        ("POST", f"/v2/sandboxes/{sandbox_id}/connect", {"timeout": 10}),
        ("POST", f"/sandboxes/{sandbox_id}/refreshes", {"duration": 10}),
        ("GET", f"/sandboxes/{sandbox_id}/metrics", None),
    ]
    for method, path, body in calls:
        response = other.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["code"] == 404
    assert sandbox_id not in [s["sandboxID"] for s in other.get("/v2/sandboxes").json()]
    assert sandbox_id not in [s["sandboxID"] for s in other.get("/sandboxes").json()]
    # and it is still alive for its own team
    assert client.get(f"/sandboxes/{sandbox_id}").status_code == 200


def test_proxy_routes_by_header_and_host_and_enforces_token(stack: Stack, client: httpx.Client) -> None:
    created = client.post("/sandboxes", json={"templateID": "base", "secure": True}).json()
    sid, token = created["sandboxID"], created["envdAccessToken"]
    with httpx.Client(base_url=stack.url) as raw:
        assert raw.get("/health", headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983"}).status_code == 204
        assert raw.get("/health", headers={"Host": f"49983-{sid}.localhost"}).status_code == 204
        # envd RPC without the access token is refused by the proxy
        rpc = {"E2b-Sandbox-Id": sid, "Content-Type": "application/json", "Connect-Protocol-Version": "1"}
        denied = raw.post("/process.Process/List", headers=rpc, content=b"{}")
        assert denied.status_code == 401
        allowed = raw.post("/process.Process/List", headers={**rpc, "X-Access-Token": token}, content=b"{}")
        assert allowed.status_code == 200
        # another team's key through the proxy: as if the sandbox did not exist
        foreign = raw.get("/health", headers={"E2b-Sandbox-Id": sid, "X-API-KEY": stack.other_key})
        assert foreign.status_code == 502
        assert foreign.json() == {"sandboxId": sid, "message": "The sandbox was not found", "code": 502}
        unknown = raw.get("/health", headers={"E2b-Sandbox-Id": "a" * 20})
        assert unknown.status_code == 502
        closed_port = raw.get("/", headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "1"})
        assert closed_port.status_code == 502
        assert client.delete(f"/sandboxes/{sid}").status_code == 204
        assert raw.get("/health", headers={"E2b-Sandbox-Id": sid}).status_code == 502


def test_list_filters_by_metadata_and_paginates(client: httpx.Client) -> None:
    tag = str(time.time_ns())
    ids = []
    for i in range(3):
        r = client.post("/sandboxes", json={"templateID": "base", "metadata": {"run": tag, "i": str(i)}})
        assert r.status_code == 201
        ids.append(r.json()["sandboxID"])
    try:
        seen: list[str] = []
        token = None
        pages = 0
        while True:
            params = {"metadata": f"run={tag}", "limit": "2", **({"nextToken": token} if token else {})}
            page = client.get("/v2/sandboxes", params=params)
            assert page.status_code == 200
            pages += 1
            seen += [s["sandboxID"] for s in page.json()]
            token = page.headers.get("X-Next-Token")
            if not token:
                break
        assert sorted(seen) == sorted(ids)
        assert pages == 2
        one = client.get("/v2/sandboxes", params={"metadata": f"run={tag}&i=1"}).json()
        assert [s["sandboxID"] for s in one] == [ids[1]]
        assert client.get("/v2/sandboxes", params={"state": "paused", "metadata": f"run={tag}"}).json() == []
        assert client.get("/v2/sandboxes", params={"state": "bogus"}).status_code == 400
        assert client.get("/v2/sandboxes", params={"limit": "0"}).status_code == 400
    finally:
        for sid in ids:
            client.delete(f"/sandboxes/{sid}")


def test_timeout_connect_refresh(client: httpx.Client, sandbox_id: str) -> None:
    end0 = client.get(f"/sandboxes/{sandbox_id}").json()["endAt"]
    assert client.post(f"/sandboxes/{sandbox_id}/timeout", json={"timeout": 30}).status_code == 204
    end1 = client.get(f"/sandboxes/{sandbox_id}").json()["endAt"]
    assert end1 < end0
    assert client.post(f"/sandboxes/{sandbox_id}/timeout", json={"timeout": -5}).status_code == 400
    connected = client.post(f"/sandboxes/{sandbox_id}/connect", json={"timeout": 600})
    assert connected.status_code == 200
    assert connected.json()["sandboxID"] == sandbox_id
    end2 = client.get(f"/sandboxes/{sandbox_id}").json()["endAt"]
    assert end2 > end1
    assert client.post(f"/sandboxes/{sandbox_id}/refreshes", json={"duration": 1}).status_code == 204
    assert client.get(f"/sandboxes/{sandbox_id}").json()["endAt"] == end2  # refresh never shortens
    assert client.get(f"/sandboxes/{sandbox_id}/metrics").status_code == 200


def test_timeout_expiry_kills_the_sandbox(client: httpx.Client, stack: Stack) -> None:
    sid = client.post("/sandboxes", json={"templateID": "base", "timeout": 1}).json()["sandboxID"]
    deadline = time.monotonic() + 30
    while client.get(f"/sandboxes/{sid}").status_code == 200:
        assert time.monotonic() < deadline, "sandbox outlived its timeout"
        time.sleep(0.2)
    assert sid not in stack.agent.sandboxes
    with httpx.Client(base_url=stack.url) as raw:
        assert raw.get("/health", headers={"E2b-Sandbox-Id": sid}).status_code == 502


def test_sdk_end_to_end(e2b_env: Stack) -> None:
    sbx = Sandbox.create("base", timeout=120, metadata={"suite": "sdk"})
    try:
        assert sbx.is_running()
        path = f"/tmp/wrenn-sdk-test-{sbx.sandbox_id}.txt"  # envd runs on the host here: a fresh path per run
        sbx.files.write(path, "hello from the sdk")
        assert sbx.files.read(path) == "hello from the sdk"
        sbx.files.remove(path)
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.metadata == {"suite": "sdk"}
        listed = Sandbox.list(query=SandboxQuery(metadata={"suite": "sdk"})).next_items()
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
        sbx.set_timeout(60)
        again = Sandbox.connect(sbx.sandbox_id)
        assert again.is_running()
        with pytest.raises(NotFoundException):
            Sandbox.connect(sbx.sandbox_id, api_key=e2b_env.other_key)
    finally:
        assert sbx.kill()
    assert not sbx.is_running()
    with pytest.raises((NotFoundException, SandboxException)):
        sbx.get_info()


def test_kill_cuts_open_streams(e2b_env: Stack) -> None:
    """A command streaming through the proxy ends when its sandbox is killed, even though (in this double) the
    envd process behind it lives on: the proxy itself cuts the stream."""
    e2b_env.agent.keep_envd_on_destroy = True
    try:
        sbx = Sandbox.create("base", timeout=120)
        handle = sbx.commands.run("sleep 30", background=True, timeout=0)
        started = time.monotonic()
        assert Sandbox.kill(sbx.sandbox_id)
        with pytest.raises(Exception):  # noqa: B017, PT011  # the SDK reports a broken stream in several ways
            handle.wait()
        assert time.monotonic() - started < 10
    finally:
        e2b_env.agent.keep_envd_on_destroy = False


def test_expiry_outlives_the_api_process_that_created_the_sandbox(stack: Stack) -> None:
    """The expiry is a PostgreSQL job, not a timer in the creating process: an API instance without job workers
    creates the sandbox and goes away; the other instance (the session stack) kills it on time."""
    settings = Settings(database_url=stack.database_url, job_workers=0, reconcile_interval_s=3600)
    creator = ThreadServer(create_public_app(settings))
    creator.start()
    try:
        with httpx.Client(base_url=creator.url, headers={"X-API-KEY": stack.api_key}) as c:
            created = c.post("/sandboxes", json={"templateID": "base", "timeout": 6})
            assert created.status_code == 201
            sid = created.json()["sandboxID"]
    finally:
        creator.stop()
    with httpx.Client(base_url=stack.url, headers={"X-API-KEY": stack.api_key}) as c:
        assert c.get(f"/sandboxes/{sid}").status_code == 200
        deadline = time.monotonic() + 30
        while c.get(f"/sandboxes/{sid}").status_code == 200:
            assert time.monotonic() < deadline, "the sandbox outlived its timeout"
            time.sleep(0.2)
    assert sid not in stack.agent.sandboxes


def test_idempotency_key_returns_the_same_sandbox(client: httpx.Client, stack: Stack) -> None:
    key = {"Idempotency-Key": f"job-{time.time_ns()}"}
    first = client.post("/sandboxes", json={"templateID": "base"}, headers=key)
    assert first.status_code == 201
    creates = stack.agent.creates
    again = client.post("/v2/sandboxes", json={"templateID": "base"}, headers=key)
    assert again.status_code == 201
    assert again.json()["sandboxID"] == first.json()["sandboxID"]
    assert again.json()["envdAccessToken"] == first.json()["envdAccessToken"]
    assert stack.agent.creates == creates
    assert (
        client.post("/sandboxes", json={"templateID": "base"}, headers={"Idempotency-Key": "Bad Key"}).status_code
        == 400
    )
    assert client.delete(f"/sandboxes/{first.json()['sandboxID']}").status_code == 204
    # once that sandbox is gone the key makes a new one
    fresh = client.post("/sandboxes", json={"templateID": "base"}, headers=key)
    assert fresh.status_code == 201
    assert fresh.json()["sandboxID"] != first.json()["sandboxID"]
    client.delete(f"/sandboxes/{fresh.json()['sandboxID']}")


def test_routing_without_a_sandbox_id(e2b_env: Stack) -> None:
    """Older SDKs send only X-Access-Token; signed file URLs carry only a signature: both still reach the sandbox."""
    sbx = Sandbox.create("base", timeout=60)
    other = Sandbox.create("base", timeout=60)
    try:
        path = f"/tmp/wrenn-signed-{sbx.sandbox_id}.txt"
        sbx.files.write(path, "signed content")
        url = sbx.download_url(path)
        assert url.startswith(e2b_env.url + "/files?")
        with httpx.Client() as raw:
            got = raw.get(url)  # no headers at all
            assert got.status_code == 200
            assert got.text == "signed content"
            assert raw.get(url.replace("signature=v1_", "signature=v1_x")).status_code == 502
            info = raw.get(f"{e2b_env.url}/sandboxes/{sbx.sandbox_id}", headers={"X-API-KEY": e2b_env.api_key})
            rpc = {"Content-Type": "application/json", "Connect-Protocol-Version": "1"}
            listed = raw.post(
                f"{e2b_env.url}/process.Process/List",
                content=b"{}",
                headers={**rpc, "X-Access-Token": info.json()["envdAccessToken"]},
            )
            assert listed.status_code == 200
            unknown = raw.post(
                f"{e2b_env.url}/process.Process/List", content=b"{}", headers={**rpc, "X-Access-Token": "x"}
            )
            assert unknown.status_code == 502
        sbx.files.remove(path)
    finally:
        sbx.kill()
        other.kill()
