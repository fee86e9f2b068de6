"""The sandbox traffic proxy: a raw ASGI app in front of the REST API.

Requests addressed to a sandbox (see `_routing`) are forwarded to the address its host agent reported, bodies and
responses streamed both ways (Connect server-streams, file transfers); everything else goes to the wrapped API app.
Failures answer like E2B's proxy: ``502 {"sandboxId", "message", "code"}`` for an unknown, dead or foreign sandbox
and for a port nobody listens on.

Open streams are registered per sandbox so that killing a sandbox cuts them (`SandboxProxy.cut`) instead of leaving
clients hanging on a VM that is gone, and so that a pause can drain them first (`SandboxProxy.drain`: new requests
stop being routed, open ones get a grace period to finish, the rest are cut).

A request for a paused sandbox created with ``autoResume: {enabled: true}`` resumes it (`ProxyBackend.auto_resume`; one
resume per sandbox however many requests wait for it, each waiting at most ``resume_wait_s``) and is then forwarded.
Every forwarded request (but envd's `GET /health`, which only observes), and every chunk or message a stream
carries, is reported as activity
(`ProxyBackend.touch`, which must be cheap: the sandbox domain coalesces it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import parse_qsl

import httpx

from wrenn.api._tasks import cancel_and_wait
from wrenn.api.proxy._routing import ENVD_PORT, BadRoute, RouteKey, route_for
from wrenn.api.proxy._websocket import relay_websocket

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]

_log = logging.getLogger(__name__)

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
_BUFFER_LIMIT = 64 * 1024
# envd's own paths: never REST routes, so credentials alone may route them.
_ENVD_ONLY_PATHS = ("/process.Process/", "/filesystem.Filesystem/", "/files")
# envd paths that authenticate themselves without the access token header (reference 3.5).
_TOKEN_FREE_PATHS = ("/health", "/files")


@dataclass(frozen=True, slots=True)
class ProxyTarget:
    """Where a sandbox's ports are reachable from this API process, and who may reach them."""

    sandbox_id: str
    team_id: str
    host: str
    envd_port: int
    access_token: str | None
    running: bool
    paused: bool = False
    """Pausing, paused or resuming (resumable), as opposed to stopped."""
    auto_resume: bool = False
    idle_timeout_s: int | None = None


class ProxyBackend(Protocol):
    """What the proxy needs from the sandbox domain."""

    async def proxy_target(self, sandbox_id: str) -> ProxyTarget | None: ...

    def touch(self, sandbox_id: str, idle_timeout_s: int | None) -> None:
        """Traffic reached the sandbox now (called per request and per streamed chunk: must not block)."""
        ...

    async def auto_resume(self, sandbox_id: str) -> None:
        """Resume a paused sandbox for its traffic (auto-resume); raises a `WrennError` when it cannot."""
        ...

    async def team_of_api_key(self, api_key: str) -> str | None: ...

    async def sandbox_for_token(self, access_token: str) -> str | None:
        """The running sandbox whose envd access token this is (routing for SDKs that send no sandbox id)."""
        ...

    async def sandbox_for_signature(
        self, path: str, operation: str, username: str, signature: str, expiration: str
    ) -> str | None:
        """The running sandbox whose token produced this signed ``/files`` URL (``download_url()``/``upload_url()``)."""
        ...


class _Stream:
    __slots__ = ("cut",)

    def __init__(self) -> None:
        self.cut = asyncio.Event()


class SandboxProxy:
    """ASGI app: sandbox traffic to the sandbox, the rest to ``api``. An async context manager (owns its client)."""

    def __init__(
        self,
        api: ASGIApp,
        backend: ProxyBackend,
        *,
        domain: str,
        cache_ttl_s: float = 1.0,
        resume_wait_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.api = api
        self._backend = backend
        self._domain = domain
        self._cache_ttl_s = cache_ttl_s
        self._resume_wait_s = resume_wait_s
        self._cache: dict[str, tuple[float, ProxyTarget | None]] = {}
        self._key_cache: dict[str, tuple[float, str | None]] = {}
        self._streams: dict[str, set[_Stream]] = {}
        # Bumped when a drain starts: a route looked up before it may predate the pause and is looked up again.
        self._generation: dict[str, int] = {}
        self._drained: dict[str, asyncio.Event] = {}
        self._resumes: dict[str, asyncio.Task[None]] = {}
        # One connection pool per sandbox, closed when the sandbox stops: addresses are reused by later sandboxes
        # (slots), and a kept-alive connection to a VM that vanished without a FIN would otherwise be reused.
        self._transport = transport
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._ssl = ssl.create_default_context()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        resumes, self._resumes = list(self._resumes.values()), {}
        for task in resumes:
            task.cancel()
        if resumes:
            await asyncio.gather(*resumes, return_exceptions=True)
        for streams in self._streams.values():
            for stream in streams:
                stream.cut.set()
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _client_for(self, sandbox_id: str) -> httpx.AsyncClient:
        if self._transport is not None:
            sandbox_id = ""  # an injected transport (tests) is shared: one client owns it
        client = self._clients.get(sandbox_id)
        if client is None:
            client = httpx.AsyncClient(
                transport=self._transport,
                verify=self._ssl,  # never used (plain HTTP to sandboxes); shared so no client builds its own
                trust_env=False,
                timeout=httpx.Timeout(connect=5.0, read=None, write=60.0, pool=10.0),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=20),
                follow_redirects=False,
            )
            self._clients[sandbox_id] = client
        return client

    def remember(self, target: ProxyTarget) -> None:
        """Cache a route the sandbox domain just learned (a sandbox started), saving the first lookup."""
        self._cache[target.sandbox_id] = (time.monotonic(), target)

    def invalidate(self, sandbox_id: str) -> None:
        """Forget the cached route of a sandbox (its state or address changed)."""
        self._cache.pop(sandbox_id, None)

    def cut(self, sandbox_id: str) -> int:
        """Cut every open stream to a sandbox (it was killed); returns how many were cut."""
        self.invalidate(sandbox_id)
        streams = self._streams.pop(sandbox_id, set())
        for stream in streams:
            stream.cut.set()
        client = self._clients.pop(sandbox_id, None)
        if client is not None:
            task = asyncio.get_running_loop().create_task(client.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return len(streams)

    def open_streams(self, sandbox_id: str) -> int:
        return len(self._streams.get(sandbox_id, ()))

    async def drain(self, sandbox_id: str, grace_s: float) -> int:
        """Before a pause: stop routing new requests to the sandbox (its recorded state already says pausing; routes
        looked up earlier are looked up again), let the open ones finish for up to ``grace_s``, then cut what is
        left (long-lived streams). Returns how many were cut."""
        self._generation[sandbox_id] = self._generation.get(sandbox_id, 0) + 1
        self.invalidate(sandbox_id)
        if self._streams.get(sandbox_id):
            drained = self._drained.setdefault(sandbox_id, asyncio.Event())
            try:
                async with asyncio.timeout(grace_s):
                    await drained.wait()
            except TimeoutError:
                pass
            finally:
                self._drained.pop(sandbox_id, None)
        cut = self.cut(sandbox_id)
        _log.info("sandbox drained for a pause: %s (%d streams cut after %.1f s grace)", sandbox_id, cut, grace_s)
        return cut

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.api(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        try:
            key = route_for(headers, self._domain)
        except BadRoute as exc:
            await _reply(send, scope, 400, {"code": 400, "message": str(exc)})
            return
        if key is None:
            key = await self._route_by_credentials(scope, headers)
        if key is None:
            if scope.get("path", "/").startswith(_ENVD_ONLY_PATHS):
                # envd traffic for no sandbox we know (wrong token or signature): like an unknown sandbox
                await _not_found(send, scope, "")
                return
            await self.api(scope, receive, send)
            return
        for _attempt in range(3):
            generation = self._generation.get(key.sandbox_id, 0)
            target = await self._authorize(scope, send, key, headers)
            if target is None:
                return
            if self._generation.get(key.sandbox_id, 0) == generation:
                break  # no drain began while we looked: the stream opened below is one a drain will wait for
        else:
            await _not_found(send, scope, key.sandbox_id)
            return
        self._toucher(scope, key, target)()
        if scope["type"] == "websocket":
            await self._proxy_websocket(scope, receive, send, key, headers, target)
            return
        await self._proxy_http(scope, receive, send, key, headers, target)

    async def _route_by_credentials(self, scope: Scope, headers: dict[str, str]) -> RouteKey | None:
        """Fallback routing for envd traffic that names no sandbox: older SDKs send only ``X-Access-Token``, and
        signed ``/files`` URLs carry only a signature. Never used for the REST API's own paths."""
        path: str = scope.get("path", "/")
        if not path.startswith(_ENVD_ONLY_PATHS):
            return None
        token = headers.get("x-access-token")
        sandbox_id: str | None = None
        if token:
            sandbox_id = await self._backend.sandbox_for_token(token)
        elif path == "/files":
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if "signature" in query and "path" in query:
                operation = "write" if scope.get("method") == "POST" else "read"
                sandbox_id = await self._backend.sandbox_for_signature(
                    query["path"],
                    operation,
                    query.get("username", ""),
                    query["signature"],
                    query.get("signature_expiration", ""),
                )
        return RouteKey(sandbox_id, ENVD_PORT) if sandbox_id else None

    async def _authorize(self, scope: Scope, send: Send, key: RouteKey, headers: dict[str, str]) -> ProxyTarget | None:
        """The sandbox's route when the caller may reach it (resumed first where auto-resume is on); otherwise the
        error is sent and None returned."""
        target = await self._target(key.sandbox_id)
        if target is None or not (target.running or (target.paused and target.auto_resume)):
            await _not_found(send, scope, key.sandbox_id)
            return None
        api_key = headers.get("x-api-key")
        if api_key is not None and await self._team_of(api_key) != target.team_id:
            await _not_found(send, scope, key.sandbox_id)
            return None
        path: str = scope.get("path", "/")
        if (
            target.access_token is not None
            and key.port == ENVD_PORT
            and not path.startswith(_TOKEN_FREE_PATHS)
            and headers.get("x-access-token") != target.access_token
        ):
            await _reply(
                send, scope, 401, {"code": 401, "message": "unauthorized access, please provide a valid access token"}
            )
            return None
        if target.running:
            return target
        error = await self._wake(key.sandbox_id)  # paused with auto-resume, and the caller may reach it
        if error is None:
            target = await self._target(key.sandbox_id)
            if target is not None and target.running:
                return target
            error = "The sandbox stopped while it was resumed"
        await _not_found(send, scope, key.sandbox_id, error)
        return None

    async def _wake(self, sandbox_id: str) -> str | None:
        """Resume a paused sandbox for the requests waiting on it: one resume, each waiter bounded. None on success,
        else the message for the 502."""
        task = self._resumes.get(sandbox_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._backend.auto_resume(sandbox_id))
            self._resumes[sandbox_id] = task

            def done(finished: asyncio.Task[None]) -> None:
                if self._resumes.get(sandbox_id) is finished:
                    del self._resumes[sandbox_id]
                if not finished.cancelled() and finished.exception() is not None:
                    _log.warning("auto-resume of %s failed: %r", sandbox_id, finished.exception())

            task.add_done_callback(done)
        try:
            async with asyncio.timeout(self._resume_wait_s):
                await asyncio.shield(task)
        except TimeoutError:
            return f"The sandbox did not resume within {self._resume_wait_s:g} s"
        except Exception as exc:  # noqa: BLE001  # any failure of the resume is this request's 502
            message = getattr(exc, "message", None) or type(exc).__name__
            return f"The sandbox could not be resumed: {message}"
        finally:
            self.invalidate(sandbox_id)
        return None

    def _open_stream(self, sandbox_id: str) -> _Stream:
        stream = _Stream()
        self._streams.setdefault(sandbox_id, set()).add(stream)
        return stream

    def _close_stream(self, sandbox_id: str, stream: _Stream) -> None:
        streams = self._streams.get(sandbox_id)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                self._streams.pop(sandbox_id, None)
                drained = self._drained.get(sandbox_id)
                if drained is not None:
                    drained.set()

    async def _proxy_websocket(
        self, scope: Scope, receive: Receive, send: Send, key: RouteKey, headers: dict[str, str], target: ProxyTarget
    ) -> None:
        port = target.envd_port if key.port == ENVD_PORT else key.port
        raw_path: bytes = scope.get("raw_path") or scope.get("path", "/").encode()
        url = f"ws://{target.host}:{port}{raw_path.decode('latin-1')}"
        query: bytes = scope.get("query_string", b"")
        if query:
            url += "?" + query.decode("latin-1")
        stream = self._open_stream(key.sandbox_id)
        try:
            touch = self._toucher(scope, key, target)
            if not await relay_websocket(scope, receive, send, url, headers, stream.cut, on_data=touch):
                _log.warning("sandbox websocket unreachable: %s %s", key.sandbox_id, url)
        finally:
            self._close_stream(key.sandbox_id, stream)

    def _toucher(self, scope: Scope, key: RouteKey, target: ProxyTarget) -> Callable[[], None]:
        """What reports this request's activity: nothing for a liveness probe."""
        if _is_liveness_probe(scope, key):
            return _no_activity
        sandbox_id, idle_timeout_s = key.sandbox_id, target.idle_timeout_s

        def touch() -> None:
            self._backend.touch(sandbox_id, idle_timeout_s)

        return touch

    async def _target(self, sandbox_id: str) -> ProxyTarget | None:
        now = time.monotonic()
        cached = self._cache.get(sandbox_id)
        if cached is not None and now - cached[0] < self._cache_ttl_s:
            return cached[1]
        generation = self._generation.get(sandbox_id, 0)
        target = await self._backend.proxy_target(sandbox_id)
        if self._generation.get(sandbox_id, 0) == generation:  # not read across the start of a drain
            self._cache[sandbox_id] = (now, target)
        return target

    async def _team_of(self, api_key: str) -> str | None:
        now = time.monotonic()
        cached = self._key_cache.get(api_key)
        if cached is not None and now - cached[0] < self._cache_ttl_s:
            return cached[1]
        team = await self._backend.team_of_api_key(api_key)
        if len(self._key_cache) > 10000:
            self._key_cache.clear()
        self._key_cache[api_key] = (now, team)
        return team

    async def _proxy_http(
        self, scope: Scope, receive: Receive, send: Send, key: RouteKey, headers: dict[str, str], target: ProxyTarget
    ) -> None:
        path: str = scope.get("path", "/")
        port = target.envd_port if key.port == ENVD_PORT else key.port
        raw_path: bytes = scope.get("raw_path") or path.encode()
        query: bytes = scope.get("query_string", b"")
        url = f"http://{target.host}:{port}{raw_path.decode('latin-1')}"
        if query:
            url += "?" + query.decode("latin-1")
        fwd = [(k, v) for k, v in headers.items() if k not in _HOP_BY_HOP]
        body_done = asyncio.Event()
        has_body = "content-length" in headers or "transfer-encoding" in headers
        if not has_body:
            body_done.set()
        stream = self._open_stream(key.sandbox_id)
        try:
            # A body only when the client sent one (a streamed empty body would go out chunked, an extra write);
            # small bodies (RPC requests) are read whole and sent in one write, large ones streamed.
            content: bytes | AsyncIterator[bytes] | None = None
            if has_body:
                length = headers.get("content-length", "")
                if length.isdigit() and int(length) <= _BUFFER_LIMIT:
                    content = b"".join([chunk async for chunk in _request_body(receive, body_done)])
                else:
                    content = _request_body(receive, body_done)
            client = self._client_for(key.sandbox_id)
            request = client.build_request(scope["method"], url, headers=fwd, content=content)
            try:
                upstream = await _race(client.send(request, stream=True), stream.cut)
            except httpx.TransportError as exc:
                _log.warning("sandbox unreachable: %s %s: %r", key.sandbox_id, url, exc)
                await _not_found(send, scope, key.sandbox_id, "The sandbox is not reachable on this port")
                return
            if upstream is None:  # cut before the response started
                await _not_found(send, scope, key.sandbox_id)
                return
            try:
                touch = self._toucher(scope, key, target)
                await self._relay(upstream, scope, receive, send, stream, body_done, touch)
            finally:
                await upstream.aclose()
        finally:
            self._close_stream(key.sandbox_id, stream)

    async def _relay(
        self,
        upstream: httpx.Response,
        scope: Scope,
        receive: Receive,
        send: Send,
        stream: _Stream,
        body_done: asyncio.Event,
        touch: Callable[[], None],
    ) -> None:
        out_headers = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in upstream.headers.multi_items()
            if k.lower() not in _HOP_BY_HOP
        ]
        await send({"type": "http.response.start", "status": upstream.status_code, "headers": out_headers})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return

        async def pump() -> None:
            async for chunk in upstream.aiter_raw():
                if chunk:
                    touch()  # a stream that carries data (output, keepalive pings) is activity
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def client_gone() -> None:
            await body_done.wait()
            while (await receive())["type"] != "http.disconnect":
                pass

        pump_task = asyncio.create_task(pump())
        stop_tasks = [asyncio.create_task(stream.cut.wait()), asyncio.create_task(client_gone())]
        try:
            await asyncio.wait([pump_task, *stop_tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(pump_task, *stop_tasks, ignore=(httpx.TransportError,))
        if not pump_task.cancelled() and pump_task.exception() is None:
            return
        # Cut, client gone or upstream broke mid-stream: returning without completing the response makes the
        # server close the connection, so the client sees a truncated stream rather than a clean end.
        _log.info("sandbox stream cut", extra={"status": upstream.status_code})


async def _race(awaitable: Awaitable[httpx.Response], cut: asyncio.Event) -> httpx.Response | None:
    main = asyncio.ensure_future(awaitable)
    stopper = asyncio.create_task(cut.wait())
    try:
        await asyncio.wait([main, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(stopper)
    if main.done():
        return main.result()
    main.cancel()
    with contextlib.suppress(asyncio.CancelledError, httpx.TransportError):
        response = await main
        await response.aclose()
    return None


def _is_liveness_probe(scope: Scope, key: RouteKey) -> bool:
    """``GET /health`` on envd's port asks whether the sandbox is alive (the SDK's ``is_running()``): it is not
    activity, or polling a sandbox until its timeout would keep it from ever timing out."""
    return key.port == ENVD_PORT and scope.get("method") == "GET" and scope.get("path") == "/health"


def _no_activity() -> None:
    return None


async def _request_body(receive: Receive, done: asyncio.Event) -> AsyncIterator[bytes]:
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body: bytes = message.get("body", b"")
            if body:
                yield body
            if not message.get("more_body", False):
                return
    finally:
        done.set()


async def _not_found(send: Send, scope: Scope, sandbox_id: str, message: str = "The sandbox was not found") -> None:
    await _reply(send, scope, 502, {"sandboxId": sandbox_id, "message": message, "code": 502})


async def _reply(send: Send, scope: Scope, status: int, body: dict[str, object]) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008 if status < 500 else 1011})
        return
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload, "more_body": False})
