"""The Connect RPC protocol over envd's HTTP/1.1 server: codecs, envelopes, errors, deadlines, keepalives.

Routes `POST /<package.Service>/<Method>`. Unary calls use `application/json` or `application/proto` bodies; stream
calls use `application/connect+json` / `application/connect+proto` with 5-byte envelopes
(`[flags:1][length:4 big-endian][message]`), flag 0x02 marking the end-of-stream message, which is always JSON
(`{}` or `{"error": {"code", "message"}}`). Server streams send a keepalive message after `Keepalive-Ping-Interval`
idle seconds and stop promptly when the client goes away; client streams (StreamInput) read envelopes as they
arrive in a chunked request body. `Connect-Timeout-Ms` becomes `RpcContext.deadline`; the framework enforces it
unless the method is registered with `own_deadline=True` (Process.Start: the deadline is the process lifetime).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from . import _proto
from ._http import Headers, HttpError, Request, Response, Router
from ._users import User

_log = logging.getLogger("envd.connect")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_KEEPALIVE_SECONDS = 90.0
END_STREAM = 0x02
COMPRESSED = 0x01


class Code(enum.Enum):
    """Connect error codes, with the HTTP status each maps to for unary errors."""

    CANCELED = "canceled"
    UNKNOWN = "unknown"
    INVALID_ARGUMENT = "invalid_argument"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    ABORTED = "aborted"
    OUT_OF_RANGE = "out_of_range"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    DATA_LOSS = "data_loss"
    UNAUTHENTICATED = "unauthenticated"

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]


_HTTP_STATUS = {
    Code.CANCELED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


class ConnectError(Exception):
    """An RPC failure carrying a Connect code; raised by handlers, rendered by the protocol layer."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}


@dataclass
class RpcContext:
    """What a handler knows about its call besides the request message."""

    user: User
    headers: Headers
    deadline: float | None  # time.monotonic() value, from Connect-Timeout-Ms
    keepalive_interval: float
    request: Request = field(repr=False)

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


UnaryHandler = Callable[[Any, RpcContext], Awaitable[Message]]
StreamHandler = Callable[[Any, RpcContext], AsyncIterator[Message]]
ClientStreamHandler = Callable[[AsyncIterator[Any], RpcContext], Awaitable[Message]]
UserResolver = Callable[[str | None], User]


class _Kind(enum.Enum):
    UNARY = "unary"
    SERVER_STREAM = "server_stream"
    CLIENT_STREAM = "client_stream"


@dataclass
class _Method:
    kind: _Kind
    handler: Any
    request_cls: type[Message]
    response_cls: type[Message]
    own_deadline: bool


class Codec:
    """JSON (canonical proto3 JSON, lowerCamelCase) or binary protobuf."""

    def __init__(self, name: str) -> None:
        self.name = name

    def decode(self, data: bytes, cls: type[Message]) -> Message:
        msg = cls()
        try:
            if self.name == "json":
                json_format.ParseDict(json.loads(data or b"{}"), msg, ignore_unknown_fields=True)
            else:
                msg.ParseFromString(data)
        except (json_format.ParseError, ValueError, DecodeError, TypeError) as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, f"cannot decode {cls.DESCRIPTOR.full_name}: {exc}") from exc
        return msg

    def encode(self, msg: Message) -> bytes:
        if self.name == "json":
            return json.dumps(json_format.MessageToDict(msg), separators=(",", ":")).encode()
        return msg.SerializeToString()


_JSON = Codec("json")
_PROTO = Codec("proto")


def envelope(data: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def end_stream(error: ConnectError | None = None) -> bytes:
    body: dict[str, Any] = {} if error is None else {"error": error.to_json()}
    return envelope(json.dumps(body, separators=(",", ":")).encode(), END_STREAM)


def error_response(error: ConnectError) -> Response:
    return Response.json(error.to_json(), error.code.http_status)


class Rpc:
    """Registry and dispatcher of Connect methods; installs itself as a fallback route of the Router."""

    def __init__(self, router: Router, resolve_user: UserResolver) -> None:
        self._methods: dict[str, _Method] = {}
        self._resolve_user = resolve_user
        router.fallback(self._dispatch)

    def _add(self, service: str, method: str, kind: _Kind, handler: Any, own_deadline: bool) -> None:
        package = service.split(".", 1)[0]
        messages = _proto.Messages(_proto.POOL, package)
        self._methods[f"/{service}/{method}"] = _Method(
            kind, handler, getattr(messages, method + "Request"), getattr(messages, method + "Response"), own_deadline
        )

    def unary(self, service: str, method: str, handler: UnaryHandler) -> None:
        self._add(service, method, _Kind.UNARY, handler, False)

    def server_stream(self, service: str, method: str, handler: StreamHandler, *, own_deadline: bool = False) -> None:
        self._add(service, method, _Kind.SERVER_STREAM, handler, own_deadline)

    def client_stream(self, service: str, method: str, handler: ClientStreamHandler) -> None:
        self._add(service, method, _Kind.CLIENT_STREAM, handler, False)

    async def _dispatch(self, request: Request) -> Response | None:
        method = self._methods.get(request.path)
        if method is None:
            if request.path.count("/") == 2 and "." in request.path.split("/")[1]:
                return error_response(ConnectError(Code.UNIMPLEMENTED, f"{request.path} is not implemented"))
            return None
        if request.method != "POST":
            return Response.error(405, "Connect methods take POST")
        content_type = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        streaming = method.kind is not _Kind.UNARY
        codec = _codec_for(content_type, streaming)
        if codec is None:
            return Response.error(415, f"unsupported content type {content_type!r}")
        try:
            ctx = self._context(request)
        except ConnectError as exc:
            if streaming:
                return _stream_response(codec, _single_error(exc))
            return error_response(exc)
        if method.kind is _Kind.UNARY:
            return await self._unary(request, method, codec, ctx)
        if method.kind is _Kind.SERVER_STREAM:
            return await self._server_stream(request, method, codec, ctx)
        return await self._client_stream(request, method, codec, ctx)

    def _context(self, request: Request) -> RpcContext:
        try:
            user_name = request.user
        except HttpError as exc:
            raise ConnectError(Code.UNAUTHENTICATED, exc.message) from exc
        user = self._resolve_user(user_name)
        deadline = None
        timeout_ms = request.headers.get("connect-timeout-ms")
        if timeout_ms:
            try:
                deadline = time.monotonic() + int(timeout_ms) / 1000
            except ValueError as exc:
                raise ConnectError(Code.INVALID_ARGUMENT, "bad Connect-Timeout-Ms") from exc
        keepalive = DEFAULT_KEEPALIVE_SECONDS
        header = request.headers.get("keepalive-ping-interval")
        if header:
            with contextlib.suppress(ValueError):
                keepalive = max(0.05, float(header))
        return RpcContext(user, request.headers, deadline, keepalive, request)

    async def _unary(self, request: Request, method: _Method, codec: Codec, ctx: RpcContext) -> Response:
        ctype = "application/json" if codec is _JSON else "application/proto"
        try:
            if request.headers.get("content-encoding") not in (None, "identity"):
                raise ConnectError(Code.UNIMPLEMENTED, "request compression is not supported")
            msg = codec.decode(await _read(request), method.request_cls)
            try:
                async with asyncio.timeout(ctx.remaining()):
                    result = await method.handler(msg, ctx)
            except TimeoutError as exc:
                raise ConnectError(Code.DEADLINE_EXCEEDED, "deadline exceeded") from exc
        except ConnectError as exc:
            return error_response(exc)
        return Response(200, [("Content-Type", ctype)], codec.encode(result))

    async def _server_stream(self, request: Request, method: _Method, codec: Codec, ctx: RpcContext) -> Response:
        try:
            data = await _read(request)
            msg = codec.decode(_single_envelope(data), method.request_cls)
        except ConnectError as exc:
            return _stream_response(codec, _single_error(exc))
        keepalive = _keepalive_message(method.response_cls)
        deadline = None if method.own_deadline else ctx.deadline
        return _stream_response(codec, _pump(method.handler(msg, ctx), codec, ctx, keepalive, deadline))

    async def _client_stream(self, request: Request, method: _Method, codec: Codec, ctx: RpcContext) -> Response:
        async def messages() -> AsyncIterator[Message]:
            async for data in _read_envelopes(request):
                yield codec.decode(data, method.request_cls)

        async def body() -> AsyncIterator[bytes]:
            try:
                try:
                    async with asyncio.timeout(ctx.remaining()):
                        result = await method.handler(messages(), ctx)
                except TimeoutError as exc:
                    raise ConnectError(Code.DEADLINE_EXCEEDED, "deadline exceeded") from exc
                except HttpError as exc:
                    raise ConnectError(Code.INVALID_ARGUMENT, exc.message) from exc
            except ConnectError as exc:
                yield end_stream(exc)
                return
            yield envelope(codec.encode(result)) + end_stream()

        # The whole request stream is consumed before the response starts (HTTP/1.1 half-duplex, as connect clients
        # send it); collect the answer first so an error can still close the stream cleanly.
        chunks = [chunk async for chunk in body()]
        return _stream_response(codec, _iterate(chunks))


def _codec_for(content_type: str, streaming: bool) -> Codec | None:
    if streaming:
        return {"application/connect+json": _JSON, "application/connect+proto": _PROTO}.get(content_type)
    return {"application/json": _JSON, "application/proto": _PROTO}.get(content_type)


def _stream_response(codec: Codec, body: AsyncIterator[bytes]) -> Response:
    ctype = "application/connect+json" if codec is _JSON else "application/connect+proto"
    return Response(200, [("Content-Type", ctype)], body)


async def _iterate(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _single_error(error: ConnectError) -> AsyncIterator[bytes]:
    yield end_stream(error)


async def _read(request: Request) -> bytes:
    try:
        return await request.read(MAX_MESSAGE_BYTES)
    except HttpError as exc:
        code = Code.RESOURCE_EXHAUSTED if exc.status == 413 else Code.INVALID_ARGUMENT
        raise ConnectError(code, exc.message) from exc


def _single_envelope(data: bytes) -> bytes:
    if len(data) < 5:
        raise ConnectError(Code.INVALID_ARGUMENT, "stream request needs one enveloped message")
    flags, length = struct.unpack(">BI", data[:5])
    if flags & COMPRESSED:
        raise ConnectError(Code.UNIMPLEMENTED, "compressed messages are not supported")
    if len(data) != 5 + length:
        raise ConnectError(Code.INVALID_ARGUMENT, "envelope length does not match the body")
    return data[5:]


async def _read_envelopes(request: Request) -> AsyncIterator[bytes]:
    buffer = bytearray()
    async for chunk in request.stream():
        buffer += chunk
        while len(buffer) >= 5:
            flags, length = struct.unpack(">BI", buffer[:5])
            if length > MAX_MESSAGE_BYTES:
                raise ConnectError(Code.RESOURCE_EXHAUSTED, "message too large")
            if len(buffer) < 5 + length:
                break
            data = bytes(buffer[5 : 5 + length])
            del buffer[: 5 + length]
            if flags & COMPRESSED:
                raise ConnectError(Code.UNIMPLEMENTED, "compressed messages are not supported")
            if flags & END_STREAM:
                return
            yield data
    if buffer:
        raise ConnectError(Code.INVALID_ARGUMENT, "request stream ended inside an envelope")


def _keepalive_message(cls: type[Message]) -> Message | None:
    """`{keepalive: {}}` for WatchDirResponse, `{event: {keepalive: {}}}` for Start/ConnectResponse."""
    msg = cls()
    fields: Mapping[str, Any] = cls.DESCRIPTOR.fields_by_name
    if "keepalive" in fields:
        getattr(msg, "keepalive").SetInParent()  # noqa: B009
        return msg
    if "event" in fields and "keepalive" in fields["event"].message_type.fields_by_name:
        getattr(msg, "event").keepalive.SetInParent()  # noqa: B009
        return msg
    return None


async def _pump(
    messages: AsyncIterator[Message],
    codec: Codec,
    ctx: RpcContext,
    keepalive: Message | None,
    deadline: float | None,
) -> AsyncIterator[bytes]:
    """Frame a handler's messages; interleave keepalives; stop on deadline, error or client disconnect."""
    iterator = messages.__aiter__()
    disconnect = asyncio.ensure_future(ctx.request.wait_disconnect())
    pending: asyncio.Future[Message] | None = None
    keepalive_frame = envelope(codec.encode(keepalive)) if keepalive is not None else None
    try:
        while True:
            pending = asyncio.ensure_future(anext(iterator))
            while True:
                timeout = ctx.keepalive_interval if keepalive_frame is not None else None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ConnectError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
                    timeout = left if timeout is None else min(timeout, left)
                done, _ = await asyncio.wait(
                    {pending, disconnect}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if pending in done:
                    break
                if disconnect in done:
                    return
                if keepalive_frame is not None and (deadline is None or deadline > time.monotonic()):
                    yield keepalive_frame
            try:
                item = pending.result()
            except StopAsyncIteration:
                pending = None
                break
            pending = None
            yield envelope(codec.encode(item))
        yield end_stream()
    except ConnectError as exc:
        yield end_stream(exc)
    except Exception as exc:  # noqa: BLE001 - any handler bug becomes an `internal` end-of-stream, logged
        _log.exception("stream handler failed")
        yield end_stream(ConnectError(Code.INTERNAL, str(exc) or type(exc).__name__))
    finally:
        disconnect.cancel()
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await disconnect
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
