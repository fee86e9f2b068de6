"""Control-plane benchmark: create -> first ``commands.run`` -> kill, through the e2b SDK (API + proxy), next to
the same work through the API with a bare HTTP client, and through the host agent directly — same run, same host.

    .venv/bin/python -m bench.api_sdk [--server up|fake] [--count 20] [--parallel 10] [--rounds 2]

``--server up`` (default) starts a real `wrenn up` (real agent, real VMs; TCG here) on a free port with a temporary
data dir; ``WRENN_DATABASE_URL`` picks an external database, otherwise it runs its private cluster. ``--server fake``
runs the API in-process in front of the tests' fake agent, whose "sandboxes" are envd processes: no VM cost, so the
difference between the rows is the control plane alone.

Rows: ``sdk`` = e2b SDK ``Sandbox.create`` + ``commands.run("true")`` + ``kill``; ``api`` = the same three calls
with httpx (REST create, Connect ``Process/Start`` through the proxy, REST delete); ``agent`` = the agent's own API
(create, envd directly, destroy). Control-plane overhead = api - agent (and sdk - agent including the SDK client).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from wrenn.api.clock import Ids
from wrenn.protocol.agent import CreateSandbox


@dataclass
class Server:
    api_url: str
    api_key: str
    agent_url: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _admin_hosts(api_url: str, data_dir: Path) -> str:
    admin = dict(line.split("=", 1) for line in (data_dir / "admin.env").read_text().splitlines() if "=" in line)
    with httpx.Client(base_url=api_url, timeout=30) as c:
        token = c.post(
            "/v1/auth/login", json={"email": admin["WRENN_ADMIN_EMAIL"], "password": admin["WRENN_ADMIN_PASSWORD"]}
        ).json()["token"]
        hosts = c.get("/v1/hosts", headers={"Authorization": f"Bearer {token}"}).json()
    return str(hosts[0]["address"])


@contextmanager
def up_server() -> Iterator[Server]:
    data_dir = Path(tempfile.mkdtemp(prefix="wrenn-bench-"))
    port = _free_port()
    cmd = [sys.executable, "-m", "wrenn.cli", "up", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    settings: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("E2B_") and "=" in line:
                key, value = line.strip().split("=", 1)
                settings[key] = value
                if key == "E2B_API_KEY":
                    break
        if "E2B_API_KEY" not in settings:
            raise RuntimeError("wrenn up exited before it was ready:\n" + "".join(seen[-30:]))
        drain = threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True)
        drain.start()
        yield Server(settings["E2B_API_URL"], settings["E2B_API_KEY"], _admin_hosts(settings["E2B_API_URL"], data_dir))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def fake_server() -> Iterator[Server]:
    """The fake stack in a child process (so its event loops do not share this process's GIL with the clients)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.api_sdk", "--serve-fake"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                break
        else:
            raise RuntimeError("fake server did not start")
        # keep reading the child's log output: a full pipe would block its event loop mid-request
        stdout = proc.stdout
        threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()
        yield Server(**json.loads(line))
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def serve_fake() -> None:
    with _fake_stack() as server:
        print(json.dumps(server.__dict__), flush=True)
        sys.stdin.read()


@contextmanager
def _fake_stack() -> Iterator[Server]:
    import psycopg

    from tests.api.sandboxes.conftest import ADMIN_URL, ThreadServer, _seed
    from tests.api.sandboxes.fake_agent import FakeAgent
    from wrenn.api.sandboxes import create_public_app
    from wrenn.api.settings import Settings

    name = f"wrenn_bench_{os.getpid()}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    settings = Settings(database_url=database_url, job_poll_seconds=0.5, host_heartbeat_ttl_s=3600)
    api = ThreadServer(create_public_app(settings))
    agent = FakeAgent(shared_envd=True)
    agent_server = ThreadServer(agent.app())
    api.start()
    agent_server.start()
    try:
        api_key, _other, _team, password = asyncio.run(_seed(database_url))
        with httpx.Client(base_url=api.url) as c:
            session = c.post("/v1/auth/login", json={"email": "admin@wrenn.local", "password": password}).json()
            headers = {"Authorization": f"Bearer {session['token']}"}
            token = c.post("/v1/hosts/tokens", json={}, headers=headers).json()["token"]
            body = {
                "token": token,
                "address": agent_server.url,
                "name": "fake",
                "info": agent.host_info().model_dump(mode="json"),
            }
            c.post("/v1/hosts/register", json=body).raise_for_status()
        yield Server(api.url, api_key, agent_server.url)
    finally:
        api.stop()
        agent_server.stop()
        agent.close()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run_true(client: httpx.Client, url: str, headers: dict[str, str]) -> None:
    payload = json.dumps({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "true"]}}).encode()
    body = struct.pack(">BI", 0, len(payload)) + payload
    h = {**headers, "Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"}
    response = client.post(f"{url}/process.Process/Start", content=body, headers=h)
    response.raise_for_status()
    if b'"end"' not in response.content:
        raise RuntimeError(f"command did not end: {response.content[:200]!r}")


def cycle_sdk(server: Server) -> None:
    from e2b import Sandbox

    sbx = Sandbox.create("base", timeout=120, api_key=server.api_key, api_url=server.api_url,
                         sandbox_url=server.api_url, domain="localhost")  # fmt: skip
    try:
        sbx.commands.run("true")
    finally:
        sbx.kill()


_local = threading.local()


def _client(base_url: str) -> httpx.Client:
    """One client per thread and base URL, reused like the SDK reuses its transport (creating an httpx client
    costs milliseconds: it loads a TLS context)."""
    clients: dict[str, httpx.Client] = _local.__dict__.setdefault("clients", {})
    if base_url not in clients:
        clients[base_url] = httpx.Client(base_url=base_url, timeout=300)
    return clients[base_url]


def cycle_api(server: Server) -> None:
    c = _client(server.api_url)
    created = c.post("/sandboxes", json={"templateID": "base", "timeout": 120}, headers=_key(server))
    created.raise_for_status()
    body = created.json()
    headers = {"E2b-Sandbox-Id": body["sandboxID"], "X-Access-Token": body["envdAccessToken"]}
    try:
        _run_true(c, server.api_url, headers)
    finally:
        c.delete(f"/sandboxes/{body['sandboxID']}", headers=_key(server)).raise_for_status()


def _key(server: Server) -> dict[str, str]:
    return {"X-API-KEY": server.api_key}


def cycle_agent(server: Server) -> None:
    sandbox_id = Ids().short(20)
    token = Ids().short(32)
    c = _client(server.agent_url)
    spec = CreateSandbox(sandbox_id=sandbox_id, template="base", memory_mb=512, envd_access_token=token)
    created = c.post("/v1/sandboxes", json=spec.model_dump(mode="json"))
    created.raise_for_status()
    try:
        # a fresh connection: envd addresses are reused by later sandboxes (the proxy keeps a pool per sandbox)
        _run_true(c, f"http://{created.json()['envd_address']}", {"X-Access-Token": token, "Connection": "close"})
    finally:
        c.delete(f"/v1/sandboxes/{sandbox_id}").raise_for_status()


_failures: dict[str, list[str]] = {}


def _timed(fn: Callable[[Server], None], server: Server) -> float | None:
    """Seconds one cycle took, or None when it failed (counted and reported, not timed)."""
    start = time.perf_counter()
    try:
        fn(server)
    except Exception as exc:  # noqa: BLE001  # a failed cycle is data for the report, not a crash
        detail = exc.response.text[:200] if isinstance(exc, httpx.HTTPStatusError) else ""
        _failures.setdefault(fn.__name__, []).append(f"{type(exc).__name__}: {exc} {detail}"[:300])
        return None
    return time.perf_counter() - start


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=("up", "fake"), default="up")
    parser.add_argument("--count", type=int, default=20, help="serial cycles per path")
    parser.add_argument("--parallel", type=int, default=10, help="cycles at once in the parallel rows")
    parser.add_argument("--rounds", type=int, default=2, help="parallel rounds per path")
    parser.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        serve_fake()
        return
    paths: dict[str, Callable[[Server], None]] = {"sdk": cycle_sdk, "api": cycle_api, "agent": cycle_agent}
    serial: dict[str, list[float]] = {k: [] for k in paths}
    parallel: dict[str, list[float]] = {k: [] for k in paths}
    with up_server() if args.server == "up" else fake_server() as server:
        for fn in paths.values():  # warm-up: first create per path may build a warm template
            _timed(fn, server)
        _failures.clear()
        for _ in range(args.count):  # interleaved, so drift hits every path alike
            for name, fn in paths.items():
                t = _timed(fn, server)
                if t is not None:
                    serial[name].append(t)
        with ThreadPoolExecutor(args.parallel) as pool:
            for _ in range(args.rounds):
                for name, fn in paths.items():
                    times = pool.map(lambda _i, f=fn: _timed(f, server), range(args.parallel))
                    parallel[name] += [t for t in times if t is not None]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, kernel {platform.release()}, server={args.server}")
    for name, errors in _failures.items():
        print(f"{name}: {len(errors)} failed cycles, e.g. {errors[0]}")
    print("| path | mode | n | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for mode, table in (("serial", serial), (f"{args.parallel} parallel", parallel)):
        for name, samples in table.items():
            if not samples:
                continue
            p = [_pct(samples, q) * 1000 for q in (0.5, 0.95, 0.99)]
            print(f"| {name} | {mode} | {len(samples)} | {p[0]:.1f} | {p[1]:.1f} | {p[2]:.1f} |")
    for mode, table in (("serial", serial), ("parallel", parallel)):
        if not all(table.values()):
            continue
        base = _pct(table["agent"], 0.5)
        print(
            f"control-plane overhead p50 ({mode}): api-agent {(_pct(table['api'], 0.5) - base) * 1000:.1f} ms, "
            f"sdk-agent {(_pct(table['sdk'], 0.5) - base) * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
