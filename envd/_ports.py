"""Localhost forwarding: a service in the guest that listens on loopback only (``127.0.0.1``/``::1``) is made
reachable on the guest's own address, where the host delivers every port (its namespace DNATs them to the guest).

E2B's envd does the same, so sandbox code that serves on ``localhost:3000`` answers at ``3000-<id>.<domain>`` and
through ``E2b-Sandbox-Port: 3000``. Services bound to all interfaces (``0.0.0.0``/``::``) or to the guest's address
need nothing and are left alone, as is a port another process already listens on at the guest's address.

`LocalhostForwarder` scans ``/proc/net/tcp{,6}`` every ``interval_s`` (the kernel offers no event for new
listening sockets short of sock_diag netlink), opens a relay listener on ``<guest address>:<port>`` for each
loopback-only port and closes it when the service stops listening. Each accepted connection is piped to the
service's loopback address in both directions until either side closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from pathlib import Path

from ._tasks import cancel_and_wait

_log = logging.getLogger("envd.ports")

_LISTEN = "0A"
_PROC_TCP = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_PROC_ROUTE = Path("/proc/net/route")

Listeners = dict[int, set[str]]
"""Listening TCP port -> the local addresses it listens on (``"0.0.0.0"``, ``"::1"``...)."""


def _address(hex_addr: str) -> str:
    """A /proc/net/tcp address field: IPv4 as one little-endian 32-bit word, IPv6 as four of them."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return str(ipaddress.IPv4Address(words))
    v6 = ipaddress.IPv6Address(words)
    return str(v6.ipv4_mapped) if v6.ipv4_mapped is not None else str(v6)


def parse_listeners(text: str) -> Listeners:
    """The listening sockets in the text of /proc/net/tcp or /proc/net/tcp6."""
    found: Listeners = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != _LISTEN:
            continue
        addr, _, port = fields[1].partition(":")
        with contextlib.suppress(ValueError):
            found.setdefault(int(port, 16), set()).add(_address(addr))
    return found


def listening() -> Listeners:
    merged: Listeners = {}
    for path in _PROC_TCP:
        try:
            text = path.read_text()
        except OSError:
            continue
        for port, addrs in parse_listeners(text).items():
            merged.setdefault(port, set()).update(addrs)
    return merged


def guest_address() -> str | None:
    """The address of the interface the default route leaves by (the guest's own), or None without one."""
    try:
        lines = _PROC_ROUTE.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            gateway = _address(fields[2])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.connect((gateway, 9))  # UDP connect sends nothing: it only picks the source address
                except OSError:
                    return None
                return str(probe.getsockname()[0])
    return None


def _is_loopback(addr: str) -> bool:
    return ipaddress.ip_address(addr).is_loopback


def _is_wildcard(addr: str) -> bool:
    return ipaddress.ip_address(addr).is_unspecified


class LocalhostForwarder:
    """Relays ``<address>:<port>`` to loopback-only listeners; ``address`` None = `guest_address()` at each scan."""

    def __init__(
        self,
        address: str | None = None,
        *,
        interval_s: float = 1.0,
        scan: Callable[[], Listeners] = listening,
    ) -> None:
        self._address = address
        self._interval = interval_s
        self._scan = scan
        self._servers: dict[int, tuple[str, asyncio.Server]] = {}  # port -> (its loopback target, relay)
        self._task: asyncio.Task[None] | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def ports(self) -> set[int]:
        """The ports relayed right now."""
        return set(self._servers)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="envd-localhost-forwarder")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        for port in list(self._servers):
            await self._stop(port)
        for pipe in list(self._pipes):
            pipe.cancel()
        if self._pipes:
            await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:  # noqa: BLE001  # a bad scan must not end forwarding
                _log.exception("localhost forwarding scan failed")
            await asyncio.sleep(self._interval)

    async def sync(self) -> None:
        """One scan: relay every loopback-only port, stop relaying ports nobody listens on any more."""
        address = self._address or guest_address()
        if address is None:
            return
        wanted: dict[int, str] = {}
        for port, addrs in self._scan().items():
            ours = port in self._servers and address in addrs
            loopback = sorted(a for a in addrs if _is_loopback(a) and a != address)
            elsewhere = [a for a in addrs if not _is_loopback(a) and not (ours and a == address)]
            if loopback and not elsewhere:
                wanted[port] = "127.0.0.1" if "127.0.0.1" in loopback else loopback[0]
        for port in [p for p in self._servers if p not in wanted]:
            await self._stop(port)
        for port, target in wanted.items():
            if port not in self._servers:
                await self._start(address, port, target)

    async def _start(self, address: str, port: int, target: str) -> None:
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._pipes.add(task)
            try:
                await _pipe_to(target, port, reader, writer)
            finally:
                if task is not None:
                    self._pipes.discard(task)

        try:
            server = await asyncio.start_server(relay, address, port, reuse_address=True)
        except OSError as exc:
            _log.debug("cannot relay %s:%d to %s: %s", address, port, target, exc)
            return
        self._servers[port] = (target, server)
        _log.info("relaying %s:%d to %s:%d", address, port, target, port)

    async def _stop(self, port: int) -> None:
        _target, server = self._servers.pop(port)
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
        _log.info("stopped relaying port %d", port)


async def _pipe_to(target: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        up_reader, up_writer = await asyncio.open_connection(target, port)
    except OSError:
        writer.close()
        return

    async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()  # half-close: the other direction may still be talking
        except OSError:
            dst.close()

    try:
        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
    finally:
        for w in (writer, up_writer):
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
