"""The agent's HTTP API end to end over ASGI (lifespan included) with the fake driver and fake host resources,
and registration + heartbeats against a small fake control plane."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi
import falcon.testing
import httpx
import pytest

from tests.agent.fakes import FakeResources, FakeSettings, fake_image
from wrenn.agent import AgentRuntime, Registration, create_agent_app
from wrenn.agent.registration import load_identity
from wrenn.protocol.agent import Accelerator, HostInfo, SandboxInfo, SandboxList, SandboxState
from wrenn.protocol.errors import Unauthenticated
from wrenn.protocol.hosts import RegisterHost

SID = "abcdefghij0123456789"


@pytest.fixture
def data_dir(short_tmp: Path) -> Path:
    return short_tmp


@pytest.fixture
async def conductor(data_dir: Path) -> AsyncIterator[falcon.testing.ASGIConductor]:
    settings = FakeSettings(data_dir=data_dir, driver="fake").with_fakes(FakeResources(), fake_image(data_dir / "img"))
    app, _runtime = create_agent_app(settings)
    async with falcon.testing.ASGIConductor(app) as conductor:
        yield conductor


async def test_routes_and_error_mapping(conductor: falcon.testing.ASGIConductor) -> None:
    health = await conductor.simulate_get("/v1/health")
    assert health.status_code == 200
    info = HostInfo.model_validate(health.json)
    assert (info.cgroup_version, info.cow_backend, info.sandboxes_running) == (1, "qcow2", 0)

    created = await conductor.simulate_post(
        "/v1/sandboxes", json={"sandbox_id": SID, "template": "base", "env_vars": {"A": "1"}}
    )
    assert created.status_code == 201, created.text
    sandbox = SandboxInfo.model_validate(created.json)
    assert sandbox.state is SandboxState.RUNNING
    assert sandbox.envd_address.startswith("127.0.0.1:")

    listed = SandboxList.model_validate((await conductor.simulate_get("/v1/sandboxes")).json)
    assert [s.sandbox_id for s in listed.sandboxes] == [SID]
    assert (await conductor.simulate_get(f"/v1/sandboxes/{SID}")).json["state"] == "running"

    conflict = await conductor.simulate_post("/v1/sandboxes", json={"sandbox_id": SID, "template": "base"})
    assert (conflict.status_code, conflict.json["code"]) == (409, 409)
    missing = await conductor.simulate_post("/v1/sandboxes", json={"sandbox_id": "b" * 20, "template": "nope"})
    assert (missing.status_code, missing.json["code"]) == (404, 404)
    invalid = await conductor.simulate_post("/v1/sandboxes", json={"sandbox_id": "Bad-Id", "template": "base"})
    assert invalid.status_code == 400
    assert "sandbox_id" in invalid.json["message"]
    garbage = await conductor.simulate_post("/v1/sandboxes", body=b"{", headers={"Content-Type": "application/json"})
    assert garbage.status_code == 400
    unknown_route = await conductor.simulate_get("/v1/nothing")
    assert unknown_route.status_code == 404
    assert unknown_route.json["code"] == 404

    assert (await conductor.simulate_delete(f"/v1/sandboxes/{SID}")).status_code == 204
    assert (await conductor.simulate_delete(f"/v1/sandboxes/{SID}")).status_code == 204
    assert (await conductor.simulate_get(f"/v1/sandboxes/{SID}")).status_code == 404
    assert (await conductor.simulate_delete(f"/v1/sandboxes/{'c' * 20}")).status_code == 404


class FakeControlPlane:
    """The two routes of protocol/hosts.py the agent calls, with one valid one-time token."""

    def __init__(self) -> None:
        self.tokens = {"tok-1"}
        self.registered: list[RegisterHost] = []
        self.heartbeats: list[tuple[str, str | None, dict[str, Any]]] = []
        self.beat = asyncio.Event()
        self.app = falcon.asgi.App()
        self.app.add_route("/v1/hosts/register", self, suffix="register")
        self.app.add_route("/v1/hosts/{host_id}/heartbeat", self, suffix="heartbeat")

    async def on_post_register(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body = RegisterHost.model_validate(await req.get_media())
        if body.token not in self.tokens:
            resp.status = 401
            resp.media = {"code": 401, "message": "unknown or used token"}
            return
        self.tokens.discard(body.token)
        self.registered.append(body)
        resp.status = 201
        resp.media = {"host_id": "host-1", "host_secret": "s3cret", "heartbeat_interval_s": 1}

    async def on_post_heartbeat(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, host_id: str) -> None:
        self.heartbeats.append((host_id, req.get_header("Authorization"), await req.get_media()))
        self.beat.set()
        resp.status = 204


async def _info() -> HostInfo:
    return HostInfo(
        host_id="unregistered",
        version="0",
        accelerator=Accelerator.TCG,
        cgroup_version=1,
        cow_backend="qcow2",
        vcpus_total=2,
        vcpus_used=0,
        memory_mb_total=1000,
        memory_mb_used=0,
        disk_mb_free=1,
        sandboxes_running=0,
    )


def _registration(data_dir: Path, plane: FakeControlPlane, token: str | None) -> Registration:
    transport = httpx.ASGITransport(app=plane.app)  # type: ignore[arg-type]
    client = httpx.AsyncClient(transport=transport, base_url="http://api")
    return Registration(
        data_dir=data_dir,
        api_url="http://api",
        token=token,
        address="http://127.0.0.1:5007",
        name="h1",
        host_info=_info,
        client=client,
    )


async def test_registers_once_then_heartbeats(data_dir: Path) -> None:
    plane = FakeControlPlane()
    async with _registration(data_dir, plane, "tok-1") as registration:
        assert registration.identity is not None
        assert registration.identity.host_id == "host-1"
        await asyncio.wait_for(plane.beat.wait(), 10)
    assert [r.name for r in plane.registered] == ["h1"]
    host_id, auth, body = plane.heartbeats[0]
    assert (host_id, auth, body["host_id"]) == ("host-1", "Bearer s3cret", "host-1")
    assert oct((data_dir / "host.json").stat().st_mode & 0o777) == "0o600"
    # A restart reuses the identity: the (now used) token is not sent again.
    plane.beat.clear()
    async with _registration(data_dir, plane, "tok-1") as again:
        assert again.identity == load_identity(data_dir)
        await asyncio.wait_for(plane.beat.wait(), 10)
    assert len(plane.registered) == 1


async def test_used_token_is_refused(data_dir: Path) -> None:
    plane = FakeControlPlane()
    registration = _registration(data_dir, plane, "used")
    with pytest.raises(Unauthenticated):
        await registration.start()
    await registration.aclose()
    assert load_identity(data_dir) is None


async def test_runtime_registers_through_settings(data_dir: Path) -> None:
    """The runtime wires registration when an API URL is configured (real loopback server for the plane)."""
    import uvicorn

    plane = FakeControlPlane()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections queue in the backlog until uvicorn accepts: no readiness poll needed
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(plane.app, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        settings = FakeSettings(
            data_dir=data_dir, driver="fake", api_url=f"http://127.0.0.1:{port}", registration_token="tok-1"
        ).with_fakes(FakeResources(), fake_image(data_dir / "img"))
        async with AgentRuntime(settings) as runtime:
            assert runtime.manager.host_id == "host-1"
            # a plane without a CA returns no certificate: plain HTTP, nothing renewed
            assert runtime.server_tls is None
            assert runtime.certificates is None
            await asyncio.wait_for(plane.beat.wait(), 10)
        assert plane.registered[0].address == "http://127.0.0.1:5007"
        assert plane.registered[0].csr_pem is not None  # no TLS files of its own: it asked for a certificate
        assert not (data_dir / "tls").exists()
    finally:
        server.should_exit = True
        await serving
        sock.close()
