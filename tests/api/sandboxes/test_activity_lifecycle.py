"""Activity, auto-resume, drain-before-pause and the reconciler's settling, against the real public app (API +
proxy + reconciler + job workers), a real PostgreSQL and the fake agent (a sandbox is a real envd process; pause is
its SIGSTOP, resume its SIGCONT). A "guest port" is an HTTP server of the test's own on a loopback port: the fake
agent's sandboxes live at 127.0.0.1, so the proxy routes ``E2b-Sandbox-Port: <its port>`` there.

Times are short (idle timeouts of a few seconds, an activity interval of 1 s, a drain grace of 1.5 s) so that the
real expiry jobs and reconciler passes run within the test."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from e2b import Sandbox
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from tests.api.sandboxes.conftest import Stack, fresh_database, running_stack
from wrenn.api import lifecycle
from wrenn.api.app import deps_of
from wrenn.api.sandboxes import SandboxService, service_of
from wrenn.api.sandboxes import _records as records
from wrenn.api.store import Store

pytestmark = pytest.mark.postgres

GRACE_S = 1.5
INTERVAL_S = 1.0
RESUME_WAIT_S = 5.0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with (
        fresh_database() as url,
        running_stack(
            url,
            proxy_drain_grace_s=GRACE_S,
            sandbox_activity_interval_s=INTERVAL_S,
            proxy_resume_wait_s=RESUME_WAIT_S,
            reconcile_interval_s=0.5,
            transition_settle_s=12.0,
        ) as running,
    ):
        yield running


@pytest.fixture
def service(stack: Stack) -> SandboxService:
    assert stack.app is not None
    return service_of(deps_of(stack.app.api))


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, headers={"X-API-KEY": stack.api_key}, timeout=30) as c:
        yield c


@pytest.fixture
def e2b_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    for key, value in {
        "E2B_API_URL": stack.url,
        "E2B_SANDBOX_URL": stack.url,
        "E2B_DOMAIN": "localhost",
        "E2B_API_KEY": stack.api_key,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    return stack


class Upstream:
    """An HTTP server standing in for a service listening in the sandbox: ``/slow?s=`` answers after that long,
    ``/stream?s=`` sends a chunk every 0.2 s for that long, anything else answers at once."""

    def __init__(self) -> None:
        self.started = threading.Event()  # a /slow or /stream request arrived
        self.finished_at = 0.0  # when the last /slow answer was sent
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                seconds = float(query.split("=", 1)[1]) if query.startswith("s=") else 0.0
                if path == "/slow":
                    upstream.started.set()
                    time.sleep(seconds)  # the slow work itself, not a wait for readiness
                    self._send(b"done")
                    upstream.finished_at = time.monotonic()
                elif path == "/stream":
                    upstream.started.set()
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    deadline = time.monotonic() + seconds
                    try:
                        while time.monotonic() < deadline:
                            self.wfile.write(b"5\r\ntick\n\r\n")
                            self.wfile.flush()
                            time.sleep(0.2)
                        self.wfile.write(b"0\r\n\r\n")
                    except OSError:
                        pass  # the proxy cut it
                else:
                    self._send(b"ok")

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    try:
        yield server
    finally:
        server.close()


def create(client: httpx.Client, *, timeout: int = 300, auto_resume: bool = False) -> str:
    body: dict[str, Any] = {"templateID": "base", "timeout": timeout}
    if auto_resume:
        body |= {"autoPause": True, "autoResume": {"enabled": True}}
    response = client.post("/sandboxes", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["sandboxID"])


def state(client: httpx.Client, sandbox_id: str) -> str | None:
    response = client.get(f"/sandboxes/{sandbox_id}")
    return str(response.json()["state"]) if response.status_code == 200 else None


def db_row(stack: Stack, sandbox_id: str) -> dict[str, Any]:
    async def fetch() -> dict[str, Any]:
        async with Store(stack.database_url, max_size=1) as store:
            row = await store.fetch_one("SELECT * FROM sandboxes WHERE id = %s", (sandbox_id,))
            assert row is not None
            return dict(row)

    return asyncio.run(fetch())


def db_exec(stack: Stack, sql: str, params: tuple[Any, ...]) -> None:
    async def run() -> None:
        async with Store(stack.database_url, max_size=1) as store, store.connection() as conn:
            await conn.execute(sql, params)

    asyncio.run(run())


def wait_until(predicate: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def routed(sandbox_id: str, port: int | None = None) -> dict[str, str]:
    headers = {"E2b-Sandbox-Id": sandbox_id}
    if port is not None:
        headers["E2b-Sandbox-Port"] = str(port)
    return headers


# -- activity ---------------------------------------------------------------------------------------------------


def test_use_keeps_an_idle_sandbox_alive_with_coalesced_writes(e2b_env: Stack, service: SandboxService) -> None:
    """Requests through the proxy (here the SDK's ``files.exists``, a Filesystem.Stat RPC) are activity: a 4 s
    sandbox used for 8 s lives, with about one write per interval; left idle it times out about 4 s after the last
    request."""
    sbx = Sandbox.create("base", timeout=4)
    writes = service.activity.writes
    pings = 0
    until = time.monotonic() + 8
    while time.monotonic() < until:
        assert sbx.files.exists("/")
        pings += 1
        time.sleep(0.05)
    last_ping = time.monotonic()
    row = db_row(e2b_env, sbx.sandbox_id)
    assert row["state"] == "running", "pinged past its 4 s timeout, it still runs"
    written = service.activity.writes - writes
    assert pings > 40
    assert written <= 8 / INTERVAL_S + 2, f"{written} end-time writes for {pings} pings"
    assert row["end_at"] > row["started_at"] + timedelta(seconds=8)

    with httpx.Client(base_url=e2b_env.url, headers={"X-API-KEY": e2b_env.api_key}) as client:
        wait_until(lambda: state(client, sbx.sandbox_id) is None, 15, "the idle sandbox to time out")
    idle = time.monotonic() - last_ping
    assert 4 - INTERVAL_S <= idle <= 4 + 5, f"timed out {idle:.1f} s after its last ping (timeout 4 s)"


def test_polling_is_running_does_not_keep_a_sandbox_alive(e2b_env: Stack) -> None:
    """``is_running()`` (envd ``GET /health`` through the proxy) only observes: a sandbox polled by it still times
    out on time, as E2B's (the SDK's own timeout tests poll it until the sandbox is gone)."""
    sbx = Sandbox.create("base", timeout=3)
    started = time.monotonic()
    while sbx.is_running():
        assert time.monotonic() - started < 20, "polled with is_running(), the 3 s sandbox never timed out"
        time.sleep(0.05)
    assert time.monotonic() - started >= 3 - 0.5


def test_a_stream_carrying_data_is_activity(client: httpx.Client, upstream: Upstream) -> None:
    sandbox_id = create(client, timeout=3)
    with (
        httpx.Client(base_url=client.base_url, timeout=30) as raw,
        raw.stream("GET", "/stream?s=6", headers=routed(sandbox_id, upstream.port)) as response,
    ):
        assert response.status_code == 200
        body = b"".join(response.iter_bytes())
    assert body.count(b"tick") >= 20, "the stream ran to its end"
    assert state(client, sandbox_id) == "running", "6 s of streaming kept a 3 s sandbox alive"
    client.delete(f"/sandboxes/{sandbox_id}")


async def test_a_websocket_carrying_messages_is_activity(stack: Stack) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with (
        serve(echo, "127.0.0.1", 0) as server,
        httpx.AsyncClient(base_url=stack.url, headers={"X-API-KEY": stack.api_key}) as api,
    ):
        port = next(iter(server.sockets)).getsockname()[1]
        sandbox_id = (await api.post("/sandboxes", json={"templateID": "base", "timeout": 3})).json()["sandboxID"]
        url = stack.url.replace("http://", "ws://") + "/ws"
        async with connect(url, additional_headers=routed(sandbox_id, port), proxy=None) as ws:
            until = time.monotonic() + 6
            while time.monotonic() < until:
                await ws.send("ping")
                assert await ws.recv() == "ping"
                await asyncio.sleep(0.3)
        detail = await api.get(f"/sandboxes/{sandbox_id}")
        assert detail.status_code == 200, "6 s of messages kept a 3 s sandbox alive"
        await api.delete(f"/sandboxes/{sandbox_id}")


def test_activity_extends_only_running_sandboxes_and_never_past_the_cap(stack: Stack, client: httpx.Client) -> None:
    running = create(client, timeout=60)
    paused = create(client, timeout=60)
    assert client.post(f"/sandboxes/{paused}/pause").status_code == 204
    db_exec(
        stack,
        "UPDATE sandboxes SET ttl_set_at = now() - interval '24 hours' + interval '30 seconds', "
        "end_at = now() + interval '5 seconds' WHERE id = %s",
        (running,),
    )

    async def bump() -> dict[str, Any]:
        async with Store(stack.database_url, max_size=1) as store:
            now = (await store.fetch_one("SELECT now() AS now"))["now"]  # type: ignore[index]
            return dict(await records.record_activity(store, {running: now, paused: now}))

    ends = asyncio.run(bump())
    assert set(ends) == {running}, "a paused sandbox is not extended by activity"
    row = db_row(stack, running)
    assert row["end_at"] == row["ttl_set_at"] + records.ACTIVITY_CAP, "extended, but not past the last TTL + 24 h"
    assert ends[running] == row["end_at"]
    for sandbox_id in (running, paused):
        client.delete(f"/sandboxes/{sandbox_id}")


# -- auto-resume ------------------------------------------------------------------------------------------------


def test_proxy_traffic_auto_resumes_once_for_concurrent_requests(stack: Stack, client: httpx.Client) -> None:
    sandbox_id = create(client, timeout=120, auto_resume=True)
    assert client.get(f"/sandboxes/{sandbox_id}").json()["lifecycle"] == {"autoResume": True, "onTimeout": "pause"}
    assert client.post(f"/sandboxes/{sandbox_id}/pause").status_code == 204
    resumes = stack.agent.resumes
    stack.agent.resume_delay_s = 0.8  # every request below arrives while the one resume runs
    try:
        with httpx.Client(base_url=stack.url, timeout=30) as raw, ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(lambda _: raw.get("/health", headers=routed(sandbox_id)).status_code, range(6)))
    finally:
        stack.agent.resume_delay_s = 0.0
    assert statuses == [204] * 6, "each request was forwarded once the sandbox ran"
    assert stack.agent.resumes == resumes + 1, "one resume for all of them"
    row = db_row(stack, sandbox_id)
    assert row["state"] == "running"
    idle = row["end_at"] - row["ttl_set_at"]  # the forwarded requests' activity may have moved it a little
    assert timedelta(seconds=120) <= idle < timedelta(seconds=122), "resumed with its own timeout"
    client.delete(f"/sandboxes/{sandbox_id}")


def test_without_auto_resume_a_paused_sandbox_answers_502(stack: Stack, client: httpx.Client) -> None:
    sandbox_id = create(client)
    assert client.post(f"/sandboxes/{sandbox_id}/pause").status_code == 204
    resumes = stack.agent.resumes
    response = httpx.get(f"{stack.url}/health", headers=routed(sandbox_id))
    assert response.status_code == 502
    assert response.json() == {"sandboxId": sandbox_id, "message": "The sandbox was not found", "code": 502}
    assert stack.agent.resumes == resumes
    assert state(client, sandbox_id) == "paused"
    client.delete(f"/sandboxes/{sandbox_id}")


def test_a_failed_or_slow_auto_resume_is_a_502_with_the_reason(stack: Stack, client: httpx.Client) -> None:
    sandbox_id = create(client, auto_resume=True)
    assert client.post(f"/sandboxes/{sandbox_id}/pause").status_code == 204
    stack.agent.fail_next_resume = True
    response = httpx.get(f"{stack.url}/health", headers=routed(sandbox_id), timeout=30)
    assert response.status_code == 502
    assert response.json()["message"].startswith("The sandbox could not be resumed: ")
    assert db_row(stack, sandbox_id)["state"] == "paused", "settled from the agent: still paused, resumable"

    stack.agent.resume_delay_s = RESUME_WAIT_S + 1.5
    try:
        started = time.monotonic()
        response = httpx.get(f"{stack.url}/health", headers=routed(sandbox_id), timeout=30)
        assert response.status_code == 502
        assert response.json()["message"] == f"The sandbox did not resume within {RESUME_WAIT_S:g} s"
        assert time.monotonic() - started < RESUME_WAIT_S + 1, "the wait is bounded"
        wait_until(lambda: state(client, sandbox_id) == "running", 10, "the resume to finish anyway")
    finally:
        stack.agent.resume_delay_s = 0.0
    assert httpx.get(f"{stack.url}/health", headers=routed(sandbox_id)).status_code == 204
    client.delete(f"/sandboxes/{sandbox_id}")


# -- drain before pause -----------------------------------------------------------------------------------------


def _pause_in_background(client: httpx.Client, sandbox_id: str) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def pause() -> None:
        response = client.post(f"/sandboxes/{sandbox_id}/pause")
        result["status"], result["at"] = response.status_code, time.monotonic()

    thread = threading.Thread(target=pause)
    thread.start()
    return thread, result


@pytest.mark.parametrize("auto_resume", [False, True])
def test_a_pause_lets_an_in_flight_request_finish(
    stack: Stack, client: httpx.Client, upstream: Upstream, auto_resume: bool
) -> None:
    """A slow request in flight when the pause comes completes; requests arriving meanwhile are not routed to the
    sandbox: 502 at once without auto-resume, with it they wait for the pause and the resume and then succeed."""
    sandbox_id = create(client, auto_resume=auto_resume)
    pauses, resumes = stack.agent.pauses, stack.agent.resumes
    slow: dict[str, Any] = {}

    def slow_request() -> None:
        with httpx.Client(timeout=30) as raw:
            response = raw.get(f"{stack.url}/slow?s=1.5", headers=routed(sandbox_id, upstream.port))
            slow["status"], slow["body"], slow["at"] = response.status_code, response.text, time.monotonic()

    requester = threading.Thread(target=slow_request)
    requester.start()
    assert upstream.started.wait(10), "the slow request reached the sandbox"
    pauser, paused = _pause_in_background(client, sandbox_id)
    wait_until(lambda: db_row(stack, sandbox_id)["state"] == "pausing", 5, "the pause to begin")
    late = httpx.get(f"{stack.url}/", headers=routed(sandbox_id, upstream.port), timeout=30)
    late_at = time.monotonic()
    requester.join(30)
    pauser.join(30)
    assert (slow["status"], slow["body"]) == (200, "done"), "the in-flight request completed across the pause"
    assert paused["status"] == 204
    assert paused["at"] >= upstream.finished_at > 0, "the VM was paused only after the in-flight request was done"
    if auto_resume:
        assert (late.status_code, late.text) == (200, "ok"), f"the late request waited for the resume: {late.text}"
        assert (stack.agent.pauses, stack.agent.resumes) == (pauses + 1, resumes + 1), "paused, then woken by it"
        assert db_row(stack, sandbox_id)["state"] == "running"
    else:
        assert late.status_code == 502, f"nothing new is routed to a pausing sandbox: {late.text}"
        assert late_at < slow["at"], "...and it is refused at once, not held"
        assert db_row(stack, sandbox_id)["state"] == "paused"
    client.delete(f"/sandboxes/{sandbox_id}")


def test_an_auto_resume_racing_the_end_of_a_pause_resumes(
    stack: Stack, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pause finishes between the resume's failed ``paused -> resuming`` step and its look at the row: the resume
    tries again instead of taking "paused" for "not resumable" (seen in CI as a 502 "stopped while it was resumed")."""
    sandbox_id = create(client, auto_resume=True)
    assert client.post(f"/sandboxes/{sandbox_id}/pause").status_code == 204
    db_exec(stack, "UPDATE sandboxes SET state = 'pausing', transition_at = now() WHERE id = %s", (sandbox_id,))
    real_current = lifecycle._current  # the race is between this read and the transition
    finished: list[str] = []

    async def pause_finishes_first(store: Store, sid: str, team_id: Any) -> Any:
        if sid == sandbox_id and not finished:
            async with store.connection() as conn:
                await conn.execute("UPDATE sandboxes SET state = 'paused' WHERE id = %s", (sid,))
            finished.append(sid)
        return await real_current(store, sid, team_id)

    monkeypatch.setattr(lifecycle, "_current", pause_finishes_first)
    resumes = stack.agent.resumes
    response = httpx.get(f"{stack.url}/health", headers=routed(sandbox_id), timeout=30)
    assert finished == [sandbox_id], "the race was staged"
    assert response.status_code == 204, response.text
    assert stack.agent.resumes == resumes + 1
    assert db_row(stack, sandbox_id)["state"] == "running"
    client.delete(f"/sandboxes/{sandbox_id}")


def test_a_stream_outliving_the_drain_grace_is_cut(stack: Stack, client: httpx.Client, upstream: Upstream) -> None:
    sandbox_id = create(client)
    received: list[bytes] = []
    outcome: dict[str, Any] = {}

    def stream() -> None:
        try:
            with (
                httpx.Client(timeout=30) as raw,
                raw.stream("GET", f"{stack.url}/stream?s=20", headers=routed(sandbox_id, upstream.port)) as response,
            ):
                for chunk in response.iter_bytes():
                    received.append(chunk)
            outcome["end"] = "complete"
        except httpx.HTTPError as exc:
            outcome["end"] = type(exc).__name__
        outcome["at"] = time.monotonic()

    reader = threading.Thread(target=stream)
    reader.start()
    assert upstream.started.wait(10)
    wait_until(lambda: bool(received), 10, "the stream to carry data")
    started = time.monotonic()
    response = client.post(f"/sandboxes/{sandbox_id}/pause")
    took = time.monotonic() - started
    reader.join(30)
    assert response.status_code == 204
    assert outcome["end"] != "complete", "a 20 s stream cannot finish inside the grace: it was cut"
    assert GRACE_S <= took < GRACE_S + 5, f"the pause waited the grace ({GRACE_S} s) and no longer: {took:.1f} s"
    client.delete(f"/sandboxes/{sandbox_id}")


# -- reconciler -------------------------------------------------------------------------------------------------


def test_the_reconciler_settles_stuck_transitions_and_tells_paused_from_missing(
    stack: Stack, client: httpx.Client
) -> None:
    """Rows a dead control plane left ``pausing``/``resuming`` are settled from the agent's answer once they are
    older than the bound; a paused row the agent still has stays paused, one it lost becomes missing."""
    stuck_pausing, stuck_resuming, kept, lost, fresh = (create(client) for _ in range(5))
    for sandbox_id in (stuck_pausing, kept, lost, fresh):
        assert stack.agent.pause(sandbox_id) is not None  # the agent finished the pause; the API never recorded it
    db_exec(
        stack,
        "UPDATE sandboxes SET state = 'pausing', transition_at = now() - interval '1 hour' WHERE id = %s",
        (stuck_pausing,),
    )
    db_exec(
        stack,
        "UPDATE sandboxes SET state = 'resuming', transition_at = now() - interval '1 hour' WHERE id = %s",
        (stuck_resuming,),
    )
    db_exec(stack, "UPDATE sandboxes SET state = 'pausing', transition_at = now() WHERE id = %s", (fresh,))
    db_exec(stack, "UPDATE sandboxes SET state = 'paused' WHERE id = ANY(%s)", ([kept, lost],))
    stack.agent.destroy(lost)  # e.g. the host's data directory was wiped

    wait_until(
        lambda: (
            (db_row(stack, stuck_pausing)["state"], db_row(stack, stuck_resuming)["state"]) == ("paused", "running")
        ),
        10,
        "the reconciler to settle both stuck rows",
    )
    wait_until(lambda: db_row(stack, lost)["state"] == "missing", 10, "the lost paused sandbox to be marked missing")
    assert db_row(stack, lost)["stop_reason"] == "host lost its paused files"
    assert db_row(stack, kept)["state"] == "paused", "a paused sandbox its host still has is kept"
    assert db_row(stack, fresh)["state"] == "pausing", "a transition younger than the bound is left to its caller"
    assert httpx.get(f"{stack.url}/health", headers=routed(stuck_resuming)).status_code == 204, "routable again"
    db_exec(stack, "UPDATE sandboxes SET state = 'paused' WHERE id = %s", (fresh,))
    for sandbox_id in (stuck_pausing, stuck_resuming, kept, fresh):
        client.delete(f"/sandboxes/{sandbox_id}")
