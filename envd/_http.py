"""envd's HTTP/1.1 server: connections, request parsing, streamed bodies both ways, routing, access-token check.

Contract with the other envd modules (see docs/envd.md): handlers are `async (Request) -> Response`; a Response
body is bytes (sent with Content-Length) or an async iterator of bytes (sent chunked, flushed per chunk). Request
bodies are never read whole by the server: `Request.stream()` yields chunks as they arrive (Content-Length or
chunked), `Request.read(limit)` collects at most `limit` bytes. Keep-alive is the HTTP/1.1 default; a body the
handler left unread is drained (bounded) or the connection is closed.

Errors are JSON `{"code": <int>, "message": "..."}` everywhere (what the e2b SDK parses).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

_log = logging.getLogger("envd.http")

MAX_HEADER_BYTES = 64 * 1024
MAX_DRAIN_BYTES = 1024 * 1024  # unread body left by a handler: drained up to this, else the connection closes
READ_CHUNK = 256 * 1024

_REASONS = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    507: "Insufficient Storage",
}


class HttpError(Exception):
    """A request that cannot be served; becomes a JSON error response with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Headers:
    """Request headers: case-insensitive lookup, original order kept."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = items
        self._map: dict[str, str] = {}
        for name, value in items:
            key = name.lower()
            self._map[key] = f"{self._map[key]}, {value}" if key in self._map else value

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._map.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self) -> Any:
        return iter(self.items)


class _Body:
    """The request body as a bounded stream read straight off the connection."""

    def __init__(self, reader: asyncio.StreamReader, length: int | None, chunked: bool, on_first_read: Any) -> None:
        self._reader = reader
        self._remaining = length or 0
        self._chunked = chunked
        self._chunk_left = 0
        self._on_first_read = on_first_read
        self.done = not chunked and not length

    async def next_chunk(self) -> bytes:
        if self.done:
            return b""
        if self._on_first_read is not None:
            await self._on_first_read()
            self._on_first_read = None
        if not self._chunked:
            data = await self._reader.read(min(self._remaining, READ_CHUNK))
            if not data:
                raise HttpError(400, "request body ended early")
            self._remaining -= len(data)
            self.done = self._remaining == 0
            return data
        if self._chunk_left == 0:
            line = await self._reader.readline()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise HttpError(400, "bad chunk size") from exc
            if size == 0:
                while (await self._reader.readline()) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                self.done = True
                return b""
            self._chunk_left = size
        data = await self._reader.read(min(self._chunk_left, READ_CHUNK))
        if not data:
            raise HttpError(400, "request body ended early")
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            await self._reader.readexactly(2)
        return data


class Request:
    """One HTTP request; the body is read lazily from the connection."""

    def __init__(self, method: str, target: str, headers: Headers, body: _Body, peer: Any = None) -> None:
        self.method = method
        self.target = target
        split = urllib.parse.urlsplit(target)
        self.path = urllib.parse.unquote(split.path)
        self.query: dict[str, list[str]] = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        self.headers = headers
        self.peer = peer
        self.pipelined = False
        self._body = body

    @property
    def user(self) -> str | None:
        """The user named by `Authorization: Basic base64(user:)`; the password part is ignored (as E2B's envd)."""
        auth = self.headers.get("authorization")
        if not auth or not auth.lower().startswith("basic "):
            return None
        try:
            decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise HttpError(401, "malformed Authorization header") from exc
        return decoded.split(":", 1)[0] or None

    def query_one(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    async def stream(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._body.next_chunk()
            if not chunk:
                return
            yield chunk

    async def read(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        async for chunk in self.stream():
            total += len(chunk)
            if total > limit:
                raise HttpError(413, f"request body larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    @property
    def body_done(self) -> bool:
        return self._body.done

    async def wait_disconnect(self) -> None:
        """Return when the client closes the connection (call only once the body is read).

        HTTP/1.1 clients do not pipeline in practice; if bytes of a next request do arrive they are lost, so the
        connection is marked to close after this response.
        """
        data = await self._body._reader.read(1)
        if data:
            self.pipelined = True
            await asyncio.Event().wait()  # still connected: wait until cancelled

    async def _drain(self, limit: int) -> bool:
        total = 0
        while not self._body.done:
            total += len(await self._body.next_chunk())
            if total > limit:
                return False
        return True


BodyType = bytes | AsyncIterator[bytes]


class Response:
    """Status, headers and a body: bytes, or an async iterator streamed with chunked encoding. `after_sent` runs once
    the response is written, before the connection's next request is read (and, as it does not await, before any
    other request is handled); its exceptions are logged."""

    def __init__(self, status: int = 200, headers: Iterable[tuple[str, str]] = (), body: BodyType = b"") -> None:
        self.status = status
        self.headers = list(headers)
        self.body = body
        self.close_connection = False
        self.after_sent: Callable[[], None] | None = None

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
        data = json.dumps(obj, separators=(",", ":")).encode()
        return cls(status, [("Content-Type", "application/json"), *headers], data)

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        return cls.json({"code": status, "message": message}, status)


Handler = Callable[[Request], Awaitable[Response]]
Fallback = Callable[[Request], Awaitable[Response | None]]


class Router:
    """Exact-path routes plus fallbacks (the Connect RPC dispatcher is one), with the access-token check.

    `token` is a callable so /init can set or rotate the token while the server runs.
    """

    def __init__(self, token: Callable[[], str | None]) -> None:
        self._routes: dict[tuple[str, str], tuple[Handler, bool]] = {}
        self._paths: set[str] = set()
        self._fallbacks: list[tuple[Fallback, bool]] = []
        self._token = token

    def route(self, method: str, path: str, handler: Handler, *, auth: bool = True) -> None:
        self._routes[(method.upper(), path)] = (handler, auth)
        self._paths.add(path)

    def fallback(self, handler: Fallback, *, auth: bool = True) -> None:
        self._fallbacks.append((handler, auth))

    def check_token(self, request: Request) -> None:
        """Raise 401 unless no token is set or the request carries it in `X-Access-Token`."""
        token = self._token()
        if token is None:
            return
        given = request.headers.get("x-access-token")
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            raise HttpError(
                401, "unauthorized access, please provide a valid access token or method signing if supported"
            )

    async def dispatch(self, request: Request) -> Response:
        entry = self._routes.get((request.method, request.path))
        if entry is not None:
            handler, auth = entry
            if auth:
                self.check_token(request)
            return await handler(request)
        for fallback, auth in self._fallbacks:
            if auth:
                self.check_token(request)
            response = await fallback(request)
            if response is not None:
                return response
        if request.path in self._paths:
            return Response.error(405, f"method {request.method} not allowed on {request.path}")
        return Response.error(404, f"no route for {request.path}")


class HttpServer:
    """The asyncio server loop around a Router; an async context manager that stops serving on exit."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._on_connection, host, port, limit=MAX_HEADER_BYTES)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> HttpServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            except asyncio.LimitOverrunError:
                await _write_response(writer, Response.error(431, "request headers too large"), keep_alive=False)
                return
            try:
                request, keep_alive = _parse_head(head, reader, writer, peer)
            except HttpError as exc:
                await _write_response(writer, Response.error(exc.status, exc.message), keep_alive=False)
                return
            try:
                response = await self.router.dispatch(request)
            except HttpError as exc:
                response = Response.error(exc.status, exc.message)
            except Exception:  # noqa: BLE001 - the catch-all: log the traceback, answer a plain 500
                _log.exception("handler failed: %s %s", request.method, request.path)
                response = Response.error(500, "internal server error")
            keep_alive = keep_alive and not response.close_connection
            if not request.body_done and keep_alive:
                try:
                    keep_alive = await request._drain(MAX_DRAIN_BYTES)
                except HttpError:
                    keep_alive = False
            try:
                await _write_response(writer, response, keep_alive=keep_alive)
            finally:
                if response.after_sent is not None:
                    try:
                        response.after_sent()
                    except Exception:  # noqa: BLE001 - the answer is out: log it, serve on
                        _log.exception("after %s %s", request.method, request.path)
            if not keep_alive or request.pipelined:
                return


def _parse_head(
    head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any
) -> tuple[Request, bool]:
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
    except ValueError as exc:
        raise HttpError(400, "malformed request line") from exc
    if not version.startswith("HTTP/1."):
        raise HttpError(505 if version.startswith("HTTP/") else 400, "only HTTP/1.x is supported")
    items: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        items.append((name, value.strip()))
    headers = Headers(items)
    connection = (headers.get("connection") or "").lower()
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    chunked = "chunked" in (headers.get("transfer-encoding") or "").lower()
    length: int | None = None
    if not chunked and headers.get("content-length") is not None:
        try:
            length = int(headers.get("content-length") or "")
        except ValueError as exc:
            raise HttpError(400, "bad Content-Length") from exc
        if length < 0:
            raise HttpError(400, "bad Content-Length")
    on_first_read = None
    if (headers.get("expect") or "").lower() == "100-continue":

        async def send_continue() -> None:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()

        on_first_read = send_continue
    body = _Body(reader, length, chunked, on_first_read)
    return Request(method.upper(), target, headers, body, peer), keep_alive


async def _write_response(
    writer: asyncio.StreamWriter,
    response: Response,
    *,
    keep_alive: bool,
) -> None:
    status = response.status
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    head.extend(f"{name}: {value}" for name, value in response.headers)
    if not keep_alive:
        head.append("Connection: close")
    body = response.body
    if isinstance(body, bytes | bytearray | memoryview):
        if status != 204 and status != 304:
            head.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + bytes(body))
        await writer.drain()
        return
    head.append("Transfer-Encoding: chunked")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    try:
        async for chunk in body:
            if chunk:
                writer.write(b"".join((b"%x\r\n" % len(chunk), chunk, b"\r\n")))  # %b on 1 MiB costs 18x a join
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()
