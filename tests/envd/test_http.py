"""envd's HTTP/1.1 layer in-process: parsing, streamed bodies both ways, keep-alive, routing, token, errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wrenn.envd._http import HttpError, HttpServer, Request, Response, Router


class Token:
    value: str | None = None

    def __call__(self) -> str | None:
        return self.value


@pytest.fixture
async def server() -> AsyncIterator[tuple[HttpServer, Token]]:
    token = Token()
    router = Router(token)

    async def echo(request: Request) -> Response:
        sizes = [len(chunk) async for chunk in request.stream()]
        return Response.json({"total": sum(sizes), "user": request.user, "q": request.query})

    async def limited(request: Request) -> Response:
        return Response(200, body=await request.read(10))

    async def stream(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"part{i};".encode()

        return Response(200, [("Content-Type", "text/plain")], body())

    async def fail(request: Request) -> Response:
        raise HttpError(507, "disk full")

    async def crash(request: Request) -> Response:
        raise RuntimeError("boom")

    async def ignore_body(request: Request) -> Response:
        return Response(204)

    router.route("POST", "/echo", echo)
    router.route("POST", "/limited", limited)
    router.route("GET", "/stream", stream)
    router.route("GET", "/fail", fail)
    router.route("GET", "/crash", crash)
    router.route("POST", "/ignore", ignore_body)
    router.route("GET", "/open", ignore_body, auth=False)
    srv = HttpServer(router)
    await srv.start("127.0.0.1", 0)
    async with srv:
        yield srv, token


async def exchange(port: int, raw: bytes, *, responses: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    """Send raw bytes, read `responses` HTTP responses (Content-Length or chunked)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        out = []
        for _ in range(responses):
            out.append(await read_response(reader))
        return out
    finally:
        writer.close()
        await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        return status, headers, body
    length = int(headers.get("content-length", "0"))
    return status, headers, await reader.readexactly(length)


async def test_chunked_request_body_is_streamed(server: tuple[HttpServer, Token]) -> None:
    srv, _ = server
    raw = (
        b"POST /echo?a=1&a=2&b= HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n"
    )
    [(status, headers, body)] = await exchange(srv.port, raw)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"total": 8, "user": None, "q": {"a": ["1", "2"], "b": [""]}}


async def test_keep_alive_serves_several_requests_on_one_connection(server: tuple[HttpServer, Token]) -> None:
    srv, _ = server
    one = b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    # the second request's body was never read by its handler: the server drains it and keeps the connection
    two = b"POST /ignore HTTP/1.1\r\nContent-Length: 4\r\n\r\nwxyz"
    results = await exchange(srv.port, one + two + one, responses=3)
    assert [r[0] for r in results] == [200, 204, 200]
    assert json.loads(results[2][2])["total"] == 3


async def test_connection_close_is_honoured(server: tuple[HttpServer, Token]) -> None:
    srv, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"GET /open HTTP/1.1\r\nConnection: close\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (204, "close")
    assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()


async def test_streamed_response_is_chunked(server: tuple[HttpServer, Token]) -> None:
    srv, _ = server
    [(status, headers, body)] = await exchange(srv.port, b"GET /stream HTTP/1.1\r\n\r\n")
    assert (status, headers["transfer-encoding"], body) == (200, "chunked", b"part0;part1;part2;")


async def test_expect_continue(server: tuple[HttpServer, Token]) -> None:
    srv, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)["total"]) == (200, 2)
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b"GET /nope HTTP/1.1\r\n\r\n", 404, "no route for /nope"),
        (b"DELETE /echo HTTP/1.1\r\n\r\n", 405, "method DELETE not allowed on /echo"),
        (b"GET /fail HTTP/1.1\r\n\r\n", 507, "disk full"),
        (b"GET /crash HTTP/1.1\r\n\r\n", 500, "internal server error"),
        (b"POST /limited HTTP/1.1\r\nContent-Length: 11\r\n\r\n01234567890", 413, "request body larger than 10 bytes"),
        (b"POST /echo HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400, "bad Content-Length"),
        (b"NONSENSE\r\n\r\n", 400, "malformed request line"),
        (b"GET / HTTP/2.0\r\n\r\n", 505, "only HTTP/1.x is supported"),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400, "malformed header line"),
        (
            b"POST /echo HTTP/1.1\r\nAuthorization: Basic !!!\r\nContent-Length: 0\r\n\r\n",
            401,
            "malformed Authorization header",
        ),
    ],
)
async def test_errors_are_json(server: tuple[HttpServer, Token], raw: bytes, status: int, message: str) -> None:
    srv, _ = server
    [(got, headers, body)] = await exchange(srv.port, raw)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"code": status, "message": message}


async def test_huge_headers_are_rejected(server: tuple[HttpServer, Token]) -> None:
    srv, _ = server
    raw = b"GET /open HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
    [(status, _, _)] = await exchange(srv.port, raw)
    assert status == 431


async def test_basic_auth_user(server: tuple[HttpServer, Token]) -> None:
    srv, _ = server
    raw = b"POST /echo HTTP/1.1\r\nAuthorization: Basic dXNlcjo=\r\nContent-Length: 0\r\n\r\n"  # "user:"
    [(_, _, body)] = await exchange(srv.port, raw)
    assert json.loads(body)["user"] == "user"


async def test_access_token_enforced_once_set(server: tuple[HttpServer, Token]) -> None:
    srv, token = server
    request = b"POST /echo HTTP/1.1\r\nContent-Length: 0\r\n%b\r\n"
    assert (await exchange(srv.port, request % b""))[0][0] == 200
    token.value = "secret"
    [(status, _, body)] = await exchange(srv.port, request % b"")
    assert status == 401
    assert json.loads(body)["code"] == 401
    assert (await exchange(srv.port, request % b"X-Access-Token: wrong\r\n"))[0][0] == 401
    assert (await exchange(srv.port, request % b"X-Access-Token: secret\r\n"))[0][0] == 200
    assert (await exchange(srv.port, b"GET /open HTTP/1.1\r\n\r\n"))[0][0] == 204  # auth=False route


@settings(max_examples=40, deadline=None)
@given(body=st.binary(max_size=5000), cuts=st.lists(st.integers(min_value=1, max_value=700), max_size=12))
async def test_any_chunking_of_a_body_arrives_intact(body: bytes, cuts: list[int]) -> None:
    router = Router(lambda: None)

    async def digest(request: Request) -> Response:
        return Response(200, body=hashlib.sha256(await request.read(1 << 20)).hexdigest().encode())

    router.route("POST", "/digest", digest)
    async with HttpServer(router) as srv:
        await srv.start("127.0.0.1", 0)
        chunks, rest = [], body
        for size in cuts:
            if rest:
                chunks.append(rest[:size])
                rest = rest[size:]
        if rest:
            chunks.append(rest)
        raw = b"POST /digest HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        raw += b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        raw += b"POST /digest HTTP/1.1\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        results = await exchange(srv.port, raw, responses=2)
    expected = hashlib.sha256(body).hexdigest().encode()
    assert [(status, got) for status, _, got in results] == [(200, expected), (200, expected)]


async def test_after_sent_runs_before_the_next_request_and_its_error_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`Response.after_sent` (envd's /init sets the clock there): run once the answer is written, before the next
    request is read; an exception in it is logged and the connection serves on."""
    ran: list[str] = []
    router = Router(Token())

    async def later(request: Request) -> Response:
        response = Response(200, body=b"first")
        response.after_sent = lambda: ran.append(request.path)
        return response

    async def broken(request: Request) -> Response:
        response = Response(200, body=b"still answered")

        def fail() -> None:
            raise RuntimeError("after-sent failure")

        response.after_sent = fail
        return response

    async def count(request: Request) -> Response:
        return Response.json({"ran": list(ran)})

    router.route("GET", "/later", later)
    router.route("GET", "/broken", broken)
    router.route("GET", "/count", count)
    async with HttpServer(router) as srv:
        await srv.start("127.0.0.1", 0)
        pipelined = b"GET /later HTTP/1.1\r\n\r\nGET /count HTTP/1.1\r\n\r\n"
        results = await exchange(srv.port, pipelined, responses=2)
        assert [r[2] for r in results[:1]] == [b"first"]
        assert json.loads(results[1][2]) == {"ran": ["/later"]}, "done before the request after it was handled"
        with caplog.at_level("ERROR", logger="envd.http"):
            results = await exchange(srv.port, b"GET /broken HTTP/1.1\r\n\r\nGET /count HTTP/1.1\r\n\r\n", responses=2)
        assert [r[0] for r in results] == [200, 200]
        assert results[0][2] == b"still answered"
        assert "after-sent failure" in caplog.text
