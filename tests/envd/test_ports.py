"""envd's localhost forwarding (`wrenn.envd._ports`): /proc/net/tcp parsing, and a real relay on loopback — the
"guest address" is 127.0.0.2 here (all of 127/8 is the host's loopback), the service listens on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from wrenn.envd._ports import Listeners, LocalhostForwarder, listening, parse_listeners

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0000000000000000
   1: 00000000:C2AF 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000
   2: 1500FEA9:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000
   3: 0100007F:0BB8 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 4 1 0000000000000000
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue
   0: 00000000000000000000000001000000:0BB9 00000000000000000000000000000000:0000 0A 00000000:00000000
   1: 0000000000000000FFFF00000100007F:0BBA 00000000000000000000000000000000:0000 0A 00000000:00000000
   2: 00000000000000000000000000000000:0BBB 00000000000000000000000000000000:0000 0A 00000000:00000000
"""


def test_parse_listeners_decodes_addresses_and_keeps_only_listening_sockets() -> None:
    assert parse_listeners(TCP) == {8080: {"127.0.0.1", "169.254.0.21"}, 49839: {"0.0.0.0"}}
    assert parse_listeners(TCP6) == {3001: {"::1"}, 3002: {"127.0.0.1"}, 3003: {"::"}}


def test_listening_sees_a_real_socket() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert "127.0.0.1" in listening()[port]
    assert port not in listening()


GUEST = "127.0.0.2"


async def _echo_server(host: str) -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(b"echo:" + data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, host, 0)


async def _roundtrip(port: int) -> bytes:
    reader, writer = await asyncio.open_connection(GUEST, port)
    writer.write(b"hi")
    await writer.drain()
    data = await reader.read(1024)
    writer.close()
    await writer.wait_closed()
    return data


@pytest.fixture
async def service() -> AsyncIterator[tuple[asyncio.Server, int]]:
    server = await _echo_server("127.0.0.1")
    port = server.sockets[0].getsockname()[1]
    try:
        yield server, port
    finally:
        server.close()
        await server.wait_closed()


def _only(port: int) -> Listeners:
    """The host has other loopback services (PostgreSQL...): the forwarder under test sees only the test's port."""
    return {p: a for p, a in listening().items() if p == port}


async def test_a_loopback_only_service_is_relayed_until_it_stops(service: tuple[asyncio.Server, int]) -> None:
    server, port = service
    forwarder = LocalhostForwarder(GUEST, scan=lambda: _only(port))
    try:
        with pytest.raises(ConnectionRefusedError):
            await _roundtrip(port)  # not reachable on the guest address yet
        await forwarder.sync()
        assert forwarder.ports == {port}
        assert await _roundtrip(port) == b"echo:hi"
        await forwarder.sync()
        assert forwarder.ports == {port}, "its own relay listener does not make the port look taken"
        server.close()
        await server.wait_closed()
        await forwarder.sync()
        assert forwarder.ports == set(), "the service stopped listening: the relay goes"
        with pytest.raises(ConnectionRefusedError):
            await _roundtrip(port)
    finally:
        await forwarder.aclose()


async def test_services_reachable_already_are_left_alone() -> None:
    wildcard = await _echo_server("0.0.0.0")
    port = wildcard.sockets[0].getsockname()[1]
    forwarder = LocalhostForwarder(GUEST, scan=lambda: _only(port))
    try:
        await forwarder.sync()
        assert forwarder.ports == set()
        assert await _roundtrip(port) == b"echo:hi", "served directly"
    finally:
        await forwarder.aclose()
        wildcard.close()
        await wildcard.wait_closed()


async def test_a_relay_carries_a_connection_closed_by_the_client_half_way(
    service: tuple[asyncio.Server, int],
) -> None:
    _server, port = service
    forwarder = LocalhostForwarder(GUEST, scan=lambda: _only(port))
    try:
        await forwarder.sync()
        reader, writer = await asyncio.open_connection(GUEST, port)
        writer.write(b"last words")
        writer.write_eof()  # the client is done sending; the answer must still come back
        assert await reader.read() == b"echo:last words"
        writer.close()
        await writer.wait_closed()
    finally:
        await forwarder.aclose()
