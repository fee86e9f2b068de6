"""`wrenn api` for real: a uvicorn process on a free loopback port against the test PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

import httpx
import pytest

from wrenn.cli import build_parser
from wrenn.cli.api import split_listen

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:3000", ("127.0.0.1", 3000)), ("[::1]:8080", ("::1", 8080)), (":9000", ("127.0.0.1", 9000))],
)
def test_split_listen(listen: str, expected: tuple[str, int]) -> None:
    assert split_listen(listen) == expected


@pytest.mark.parametrize("listen", ["localhost", "host:port", ""])
def test_split_listen_rejects_garbage(listen: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_listen(listen)


def test_api_group_is_registered() -> None:
    args = build_parser().parse_args(["api", "--database-url", "postgresql://x@y/z", "--listen", "127.0.0.1:1"])
    assert args.database_url == "postgresql://x@y/z"
    assert callable(args.handler)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
async def test_wrenn_api_serves_and_bootstraps(empty_database: str) -> None:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wrenn.cli",
        "api",
        "--database-url",
        empty_database,
        "--listen",
        f"127.0.0.1:{port}",
        "--bootstrap-admin",
        "admin@example.test",
        "--job-workers",
        "1",
        "--log-level",
        "info",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    key = None
    try:
        async with asyncio.timeout(60):
            while key is None:
                line = (await proc.stdout.readline()).decode()
                assert line, "wrenn api exited before printing the bootstrap key"
                if line.startswith("E2B_API_KEY="):
                    key = line.strip().split("=", 1)[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async with asyncio.timeout(30):
                while True:  # uvicorn binds after the lifespan start-up that printed the key
                    try:
                        health = await client.get("/health")
                        break
                    except httpx.ConnectError:
                        await asyncio.sleep(0.05)
            assert health.status_code == 200
            teams = await client.get("/v1/teams", headers={"X-API-KEY": key})
            assert teams.status_code == 200
            assert [t["name"] for t in teams.json()] == ["default"]
            assert (await client.get("/openapi.yaml")).status_code == 200
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            logs = (await proc.stderr.read()).decode()
            rc = await proc.wait()
    # uvicorn re-raises SIGTERM once its graceful shutdown (our lifespan included) has finished.
    assert rc in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in logs
