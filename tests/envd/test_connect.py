"""The Connect protocol layer: codecs, envelopes, error mapping, content types, auth on RPCs."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.envd.conftest import Connect, EnvdProcess, envelope, parse_envelopes
from wrenn.envd import _connect
from wrenn.envd._connect import Code, Codec, ConnectError, _keepalive_message, _read_envelopes
from wrenn.envd._proto import filesystem as fs
from wrenn.envd._proto import process as pb


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (Code.INVALID_ARGUMENT, 400),
        (Code.UNAUTHENTICATED, 401),
        (Code.PERMISSION_DENIED, 403),
        (Code.NOT_FOUND, 404),
        (Code.ALREADY_EXISTS, 409),
        (Code.RESOURCE_EXHAUSTED, 429),
        (Code.CANCELED, 499),
        (Code.INTERNAL, 500),
        (Code.UNIMPLEMENTED, 501),
        (Code.UNAVAILABLE, 503),
        (Code.DEADLINE_EXCEEDED, 504),
    ],
)
def test_error_codes_map_to_http_statuses(code: Code, status: int) -> None:
    response = _connect.error_response(ConnectError(code, "why"))
    assert response.status == status
    assert json.loads(bytes(response.body)) == {"code": code.value, "message": "why"}  # type: ignore[arg-type]


def test_json_codec_accepts_both_names_numeric_enums_and_unknown_fields() -> None:
    codec = Codec("json")
    camel = codec.decode(b'{"exitCode": 3, "unknown": 1}', pb.ProcessEvent.EndEvent)
    snake = codec.decode(b'{"exit_code": 3}', pb.ProcessEvent.EndEvent)
    assert camel == snake
    signal = codec.decode(b'{"signal": 9}', pb.SendSignalRequest)
    assert codec.encode(signal) == b'{"signal":"SIGNAL_SIGKILL"}'
    with pytest.raises(ConnectError) as info:
        codec.decode(b"{not json", pb.ListRequest)
    assert info.value.code is Code.INVALID_ARGUMENT


def test_json_encoding_is_canonical_proto3() -> None:
    codec = Codec("json")
    event = pb.ProcessEvent(data=pb.ProcessEvent.DataEvent(stdout=b"\x00\xff"))
    assert json.loads(codec.encode(event)) == {"data": {"stdout": "AP8="}}
    entry = fs.EntryInfo(name="a", size=5, symlink_target="")
    entry.modified_time.FromSeconds(0)
    # int64 as string, optional field emitted when set even if empty, Timestamp as RFC 3339
    assert json.loads(codec.encode(entry)) == {
        "name": "a",
        "size": "5",
        "symlinkTarget": "",
        "modifiedTime": "1970-01-01T00:00:00Z",
    }


def test_keepalive_messages_have_the_right_shape() -> None:
    codec = Codec("json")
    assert json.loads(codec.encode(_keepalive_message(pb.StartResponse))) == {"event": {"keepalive": {}}}  # type: ignore[arg-type]
    assert json.loads(codec.encode(_keepalive_message(fs.WatchDirResponse))) == {"keepalive": {}}  # type: ignore[arg-type]
    assert _keepalive_message(pb.ListResponse) is None


class _FakeBody:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


@given(
    messages=st.lists(st.binary(max_size=300), max_size=6),
    cut=st.lists(st.integers(min_value=1, max_value=50), max_size=20),
)
async def test_envelopes_survive_any_chunking(messages: list[bytes], cut: list[int]) -> None:
    stream = b"".join(struct.pack(">BI", 0, len(m)) + m for m in messages)
    chunks, rest = [], stream
    for size in cut:
        chunks.append(rest[:size])
        rest = rest[size:]
    chunks.append(rest)
    got = [m async for m in _read_envelopes(_FakeBody([c for c in chunks if c]))]  # type: ignore[arg-type]
    assert got == messages


async def test_truncated_envelope_is_invalid() -> None:
    with pytest.raises(ConnectError) as info:
        [m async for m in _read_envelopes(_FakeBody([b"\x00\x00\x00\x00\x09abc"]))]  # type: ignore[arg-type]
    assert info.value.code is Code.INVALID_ARGUMENT


def post(url: str, path: str, body: bytes, content_type: str, **headers: str) -> httpx.Response:
    with httpx.Client() as http:
        return http.post(url + path, content=body, headers={"Content-Type": content_type, **headers})


def test_unknown_method_is_unimplemented(envd_server: str) -> None:
    response = post(envd_server, "/process.Process/Nope", b"{}", "application/json")
    assert response.status_code == 501
    assert response.json()["code"] == "unimplemented"


def test_rpc_needs_post(envd_server: str) -> None:
    with httpx.Client() as http:
        assert http.get(envd_server + "/process.Process/List").status_code == 405


def test_wrong_content_type_is_415(envd_server: str) -> None:
    assert post(envd_server, "/process.Process/List", b"{}", "text/plain").status_code == 415
    # a streaming method called with the unary content type
    assert post(envd_server, "/process.Process/Start", b"{}", "application/json").status_code == 415


def test_bad_unary_json_is_invalid_argument(envd_server: str) -> None:
    response = post(envd_server, "/process.Process/SendSignal", b"[1,2", "application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_argument"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"\x00\x00\x00\x00\xffshort", "invalid_argument"),
        (b"\x01" + struct.pack(">I", 2) + b"{}", "unimplemented"),
        (b"", "invalid_argument"),
    ],
)
def test_bad_stream_request_envelopes(envd_server: str, body: bytes, code: str) -> None:
    response = post(envd_server, "/process.Process/Start", body, "application/connect+json")
    assert response.status_code == 200
    [(flags, end)] = parse_envelopes(response.content)
    assert flags == 2
    assert end["error"]["code"] == code


def test_rpc_requires_token_once_set(envd_factory: Any) -> None:
    envd: EnvdProcess = envd_factory("--access-token", "tok")
    client = Connect(envd.url)
    try:
        denied = client.unary("process.Process/List", {})
        assert denied.status_code == 401
        assert denied.json()["code"] == 401
        allowed = client.unary("process.Process/List", {}, headers={"X-Access-Token": "tok"})
        assert allowed.status_code == 200
        stream = client.http.post(
            "/process.Process/Start",
            content=envelope({"process": {"cmd": "true"}}),
            headers={"Content-Type": "application/connect+json", "X-Access-Token": "bad"},
        )
        assert stream.status_code == 401
    finally:
        client.close()
