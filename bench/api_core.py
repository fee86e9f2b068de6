"""Control-plane core benchmark: what one request costs in the API itself, over real loopback HTTP.

    .venv/bin/python -m bench.api_core [--count 300] [--parallel 10]

Starts the API (uvicorn, in this process, lifespan on) on a free loopback port against a throwaway database on
the local PostgreSQL (``WRENN_BENCH_SERVER`` overrides ``postgresql://postgres@127.0.0.1:5432/postgres``), and
times, serially and then `--parallel` at a time:

* ``GET /health`` — routing + one pooled query (the floor);
* ``GET /v1/teams`` with ``X-API-KEY`` — API-key authentication (hash lookup) + a tenancy query;
* ``GET /v1/teams`` with a session JWT — JWT verification + membership lookup + query;
* ``POST /v1/auth/login`` — scrypt (deliberately slow);
* job round trip — ``enqueue`` → a worker in the same process ran the handler (wake-up path, no poll wait).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import socket
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
import psycopg
import uvicorn
from psycopg import sql
from pydantic import SecretStr

from wrenn.api import Settings, bootstrap_admin, create_app, deps_of
from wrenn.api.jobs import Job

_SERVER = os.environ.get("WRENN_BENCH_SERVER", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _row(name: str, samples: list[float], wall: float) -> str:
    ms = [s * 1000 for s in samples]
    return (
        f"| {name} | {len(ms)} | {_pct(ms, 0.5):.2f} | {_pct(ms, 0.95):.2f} | {_pct(ms, 0.99):.2f} | "
        f"{statistics.fmean(ms):.2f} | {len(ms) / wall:.0f} |"
    )


async def _measure(call: Callable[[], Awaitable[None]], count: int, parallel: int) -> tuple[list[float], float]:
    samples: list[float] = []
    sem = asyncio.Semaphore(parallel)

    async def one() -> None:
        async with sem:
            start = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - start)

    wall = time.perf_counter()
    await asyncio.gather(*[one() for _ in range(count)])
    return samples, time.perf_counter() - wall


async def run(count: int, parallel: int) -> None:
    name = f"wrenn_bench_{secrets.token_hex(4)}"
    with psycopg.connect(_SERVER, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _SERVER.rsplit("/", 1)[0] + "/" + name
    try:
        await _bench(url, count, parallel)
    finally:
        with psycopg.connect(_SERVER, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def _bench(url: str, count: int, parallel: int) -> None:
    settings = Settings(
        database_url=url, jwt_secret=SecretStr(secrets.token_urlsafe(40)), job_workers=2, job_poll_seconds=1.0
    )
    app = create_app(settings)
    deps = deps_of(app)
    done: dict[int, asyncio.Event] = {}

    async def handler(job: Job) -> None:
        done[job.payload["n"]].set()

    deps.queue.register("bench", handler)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(60):
            while True:  # uvicorn sets `started` once the lifespan ran and the socket listens
                if server.started:
                    break
                await asyncio.sleep(0.01)
        boot = await bootstrap_admin(deps.store, email="bench@example.test", password="bench-password")
        assert boot is not None
        limits = httpx.Limits(max_connections=parallel, max_keepalive_connections=parallel)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as client:
            login = await client.post("/v1/auth/login", json={"email": boot.email, "password": boot.password})
            token = login.json()["token"]
            key_headers = {"X-API-KEY": boot.api_key}
            jwt_headers = {"Authorization": f"Bearer {token}"}
            counter = iter(range(10**9))

            async def health() -> None:
                (await client.get("/health")).raise_for_status()

            async def teams_key() -> None:
                (await client.get("/v1/teams", headers=key_headers)).raise_for_status()

            async def teams_jwt() -> None:
                (await client.get("/v1/teams", headers=jwt_headers)).raise_for_status()

            async def do_login() -> None:
                body = {"email": boot.email, "password": boot.password}
                (await client.post("/v1/auth/login", json=body)).raise_for_status()

            async def job_round_trip() -> None:
                n = next(counter)
                done[n] = asyncio.Event()
                await deps.queue.enqueue("bench", {"n": n})
                await done[n].wait()

            cases: list[tuple[str, Callable[[], Awaitable[None]], int]] = [
                ("GET /health", health, count),
                ("GET /v1/teams (API key)", teams_key, count),
                ("GET /v1/teams (session JWT)", teams_jwt, count),
                ("POST /v1/auth/login (scrypt)", do_login, max(count // 10, 10)),
                ("job enqueue -> handler ran", job_round_trip, count),
            ]
            print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                  f"PostgreSQL on loopback; no VMs involved (accelerator irrelevant)")  # fmt: skip
            print("| case | n | p50 ms | p95 ms | p99 ms | mean ms | req/s |")
            print("|---|---|---|---|---|---|---|")
            for label, call, n in cases:
                await _measure(call, min(n, 20), 1)  # warm-up: pool connections, caches
                samples, wall = await _measure(call, n, 1)
                print(_row(f"{label}, serial", samples, wall))
                samples, wall = await _measure(call, n, parallel)
                print(_row(f"{label}, {parallel} in parallel", samples, wall))
    finally:
        server.should_exit = True
        await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--parallel", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(asyncio.wait_for(run(args.count, args.parallel), 600))


if __name__ == "__main__":
    main()
