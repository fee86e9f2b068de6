"""The streaming multipart parser: httpx-encoded bodies split at every possible point, malformed bodies refused."""

from __future__ import annotations

import itertools

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wrenn.envd._multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    boundary_from_content_type,
    parse_header_params,
)


def encode(files: list[tuple[str, str, bytes]]) -> tuple[str, bytes]:
    request = httpx.Request("POST", "http://x/files", files=[(name, (fn, data)) for name, fn, data in files])
    return request.headers["content-type"], request.read()


def parse(content_type: str, body: bytes, cuts: list[int]) -> list[tuple[str | None, str | None, bytes]]:
    parser = MultipartParser(boundary_from_content_type(content_type))
    out: list[tuple[str | None, str | None, bytes]] = []
    current: list[bytes] = []
    start: PartStart | None = None
    edges = [0, *sorted(c % (len(body) + 1) for c in cuts), len(body)]
    for a, b in itertools.pairwise(edges):
        for event in parser.feed(body[a:b]):
            if isinstance(event, PartStart):
                start, current = event, []
            elif isinstance(event, PartData):
                current.append(event.data)
            elif isinstance(event, PartEnd):
                assert start is not None
                out.append((start.name, start.filename, b"".join(current)))
    parser.close()
    return out


FILES = [
    ("file", "/home/user/a.txt", b"alpha"),
    ("file", 'dir/we"ird\\name\n.txt', b"\r\n--not-a-boundary\r\n" * 3),
    ("file", "/tmp/empty", b""),
    ("file", "/tmp/caf\u00e9.bin", bytes(range(256)) * 40),
]


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=12))
def test_any_split_gives_the_same_parts(cuts: list[int]) -> None:
    content_type, body = encode(FILES)
    assert parse(content_type, body, cuts) == [(n, f, d) for n, f, d in FILES]


@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=6))
def test_arbitrary_payloads_survive(data: bytes, cuts: list[int]) -> None:
    content_type, body = encode([("file", "/x", data)])
    assert parse(content_type, body, cuts) == [("file", "/x", data)]


def test_byte_at_a_time() -> None:
    content_type, body = encode(FILES)
    assert parse(content_type, body, list(range(len(body)))) == [(n, f, d) for n, f, d in FILES]


def test_preamble_epilogue_and_rfc5987_filename() -> None:
    body = (
        b"preamble junk\r\n--BB\r\n"
        b"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''%2Ftmp%2Fcaf%C3%A9\r\n\r\n"
        b"data\r\n--BB--\r\nepilogue"
    )
    assert parse("multipart/form-data; boundary=BB", body, [5, 30]) == [("file", "/tmp/caf\u00e9", b"data")]


@pytest.mark.parametrize(
    "body",
    [
        b'--BB\r\nContent-Disposition: form-data; name="file"\r\n\r\nno closing boundary',
        b"--BB\r\nno colon header\r\n\r\nx\r\n--BB--",
        b"--BBjunk\r\n\r\n",
        b"",
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    def feed_all() -> None:
        parser = MultipartParser("BB")
        parser.feed(body)
        parser.close()

    with pytest.raises(MultipartError):
        feed_all()


def test_boundary_and_params() -> None:
    assert boundary_from_content_type('multipart/form-data; boundary="a b"') == "a b"
    with pytest.raises(MultipartError):
        boundary_from_content_type("multipart/form-data")
    with pytest.raises(MultipartError):
        boundary_from_content_type("text/plain; boundary=x")
    assert parse_header_params('form-data; name="f"; filename="a\\"b"') == (
        "form-data",
        {"name": "f", "filename": 'a"b'},
    )
