"""Blocking host steps: ``ip netns``/``nft`` commands and netlink calls (pyroute2), in the root namespace or in a
named one. Callers run them in a worker thread (`asyncio.to_thread`).

Entering a namespace is per thread: `in_netns` moves only the calling thread (`wrenn.agent._netns`) and always
moves it back, so netlink sockets and TAP ioctls made inside it belong to the namespace while the rest of the process
stays put. pyroute2's own ``NetNS`` forks a helper per socket, which costs time and leaks warnings under a test harness.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from wrenn.agent import _netns
from wrenn.agent._netns import NETNS_DIR
from wrenn.agent.network._errors import HostCommandFailed


def run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostCommandFailed(" ".join(argv[:5]), str(exc)) from exc
    if check and proc.returncode != 0:
        raise HostCommandFailed(" ".join(argv[:5]), proc.stderr.strip()[:500])
    return proc.stdout


def apply_nft(rules: str, table: str) -> subprocess.Popen[str]:
    """Start ``nft -f -`` on `rules` in the calling thread's namespace (a child inherits it) and ask it to list
    `table` after the transaction; `finish_nft` checks both. Starting without waiting lets the namespace's and the
    host's transactions run at once."""
    script = f"{rules}list table ip {table}\n".encode()
    if len(script) > 60_000:  # must fit the pipe buffer: written before nft starts reading
        raise HostCommandFailed("nft -f", f"ruleset of {len(script)} bytes is too large")
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, script)
        os.close(write_end)
        write_end = -1
        return subprocess.Popen(
            ["nft", "-f", "-"], stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    except OSError as exc:  # pragma: no cover - nft missing or the pipe refused
        raise HostCommandFailed("nft -f", str(exc)) from exc
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def finish_nft(proc: subprocess.Popen[str], table: str, where: str) -> None:
    """Wait for `apply_nft` and verify: success, and the table listed back."""
    with proc:
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.communicate()
            raise HostCommandFailed(f"nft -f in {where}", "timed out") from exc
    if proc.returncode != 0:
        raise HostCommandFailed(f"nft -f in {where}", err.strip()[:500])
    if f"table ip {table} {{" not in out:
        raise HostCommandFailed(f"nft -f in {where}", f"table {table} missing after the transaction")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with the calling thread inside network namespace `name` (`wrenn.agent._netns`)."""
    try:
        own = _netns.enter(name)
    except OSError as exc:
        raise HostCommandFailed(f"entering namespace {name}", str(exc)) from exc
    try:
        yield
    finally:
        _netns.leave(own)  # raises when the thread cannot go back: it must not go on in the wrong namespace


def list_netns() -> set[str]:
    try:
        return {p.name for p in NETNS_DIR.iterdir()} if NETNS_DIR.is_dir() else set()
    except OSError as exc:
        raise HostCommandFailed("listing namespaces", str(exc)) from exc


@contextlib.contextmanager
def netlink() -> Iterator[IPRoute]:
    """An IPRoute socket in the calling thread's current namespace, with netlink errors translated."""
    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise HostCommandFailed("netlink", f"{exc.code}: {exc}") from exc


def link_index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def link_names(ipr: IPRoute) -> set[str]:
    return {str(link.get("ifname")) for link in ipr.get_links()}


def ensure_address(ipr: IPRoute, index: int, address: str, prefixlen: int) -> None:
    present = {(a.get("address"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)}
    if (address, prefixlen) not in present:
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)


def set_up(ipr: IPRoute, index: int) -> None:
    ipr.link("set", index=index, state="up")


def sysctl(path: str, value: str) -> None:
    """Write a sysctl of the calling thread's namespace (``/proc/sys/net`` is resolved per thread) and check it."""
    file = Path("/proc/sys") / path
    try:
        if file.read_text().strip() != value:
            file.write_text(value)
        if file.read_text().strip() != value:
            raise HostCommandFailed(f"sysctl {path}", f"still not {value}")
    except OSError as exc:
        raise HostCommandFailed(f"sysctl {path}", str(exc)) from exc


def nft_tables() -> set[str]:
    """Names of the ``ip`` family nftables tables in the calling thread's namespace."""
    out = run(["nft", "list", "tables", "ip"])
    return {line.split()[2] for line in out.splitlines() if line.startswith("table ip ")}
