"""The stand-in VMM process behind `wrenn.agent.vmm.fake.FakeDriver` (run as ``python -m``).

It behaves like a VMM from the outside: a line-based control socket (``status``, ``cont``, ``stop``, ``quit``;
one JSON reply per line), a "guest" that only runs after ``cont``, and — with ``--port`` — a loopback HTTP
server answering like envd (``GET /health`` 204, ``GET /boot_id``) while the guest runs. It touches nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from pathlib import Path


class _Machine:
    def __init__(self, boot_id: str) -> None:
        self.state = "prelaunch"
        self.boot_id = boot_id
        self.quit = asyncio.Event()
        self.connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections[task] = writer
        try:
            await self._serve_control(reader, writer)
        finally:
            del self.connections[task]

    async def close_connections(self) -> None:
        """End every control connection (EOF to its reader) and wait for their handlers to return."""
        for writer in self.connections.values():
            writer.close()
        await asyncio.gather(*self.connections, return_exceptions=True)

    async def _serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := (await reader.readline()).decode().strip():
            if line == "cont":
                self.state = "running"
            elif line == "stop" and self.state == "running":
                self.state = "paused"
            elif line == "quit":
                self.quit.set()
            elif line != "status":
                writer.write(json.dumps({"error": f"unknown command {line!r}"}).encode() + b"\n")
                continue
            writer.write(json.dumps({"state": self.state, "boot_id": self.boot_id}).encode() + b"\n")
            await writer.drain()
        writer.close()

    async def guest_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        if self.state == "running":
            path = request.split(b" ", 2)[1]
            if path == b"/health":
                writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            elif path == b"/boot_id":
                body = self.boot_id.encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        writer.close()  # a guest that is not running answers nothing


async def _run(control: Path, port: int | None, boot_id: str) -> None:
    machine = _Machine(boot_id)
    servers = [await asyncio.start_unix_server(machine.control, path=str(control))]
    if port is not None:
        servers.append(await asyncio.start_server(machine.guest_http, "127.0.0.1", port))
    await machine.quit.wait()
    for server in servers:
        server.close()
    await machine.close_connections()


def main() -> None:
    parser = argparse.ArgumentParser(prog="wrenn-fake-vmm")
    parser.add_argument("--control", type=Path, required=True)
    parser.add_argument("--port", type=int)
    parser.add_argument("--boot-id", default=str(uuid.uuid4()))
    args = parser.parse_args()
    try:
        asyncio.run(_run(args.control, args.port, args.boot_id))
    finally:
        args.control.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
