"""Fixtures for the network tests: a `NetworkManager` under a prefix and transit network no one else uses, and a
teardown that removes whatever a failed test left under that prefix."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator

import pytest

from wrenn.agent.network import AddressPlan, NetworkManager


def host_names(prefix: str) -> dict[str, set[str]]:
    """Every namespace, root-namespace link and root nft table whose name starts with `prefix`."""
    netns = {line.split()[0] for line in _out("ip", "netns", "list").splitlines() if line.strip()}
    links = {line.split(":")[1].strip().split("@")[0] for line in _out("ip", "-o", "link", "show").splitlines()}
    tables = {line.split()[2] for line in _out("nft", "list", "tables", "ip").splitlines() if line.strip()}
    return {
        "netns": {n for n in netns if n.startswith(prefix)},
        "links": {n for n in links if n.startswith(prefix)},
        "tables": {n for n in tables if n.startswith(prefix)},
    }


async def sh(*argv: str, check: bool = True) -> str:
    """Run a host command without blocking the loop; its stdout."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed: {err.decode()}")
    return out.decode()


def _out(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture
async def manager() -> AsyncIterator[NetworkManager]:
    # Unique per test process: other engineers' agents and tests use "wrenn", "wtb…" and 10.201/10.213 ranges.
    prefix = f"hr{os.getpid() % 100000}"
    third = os.getpid() % 200 + 20
    mgr = NetworkManager(AddressPlan(prefix=prefix, transit=f"10.{third}.0.0/24"))
    yield mgr
    await mgr.cleanup_stale(keep=())
    for ns in host_names(prefix)["netns"]:
        await sh("ip", "netns", "del", ns, check=False)
