"""A streaming ``multipart/form-data`` parser that never holds a part's body in memory.

Sans-I/O: feed it bytes as they arrive (:meth:`MultipartParser.feed`), get back events — :class:`PartStart` with
the part's headers, :class:`PartData` chunks, :class:`PartEnd` — and call :meth:`MultipartParser.close` at the
end of the body. Memory use is bounded by the chunk fed plus the delimiter length and the header limit.

Filenames follow what clients send: a quoted ``filename="…"`` (with backslash escapes and the HTML5
percent-escapes httpx and browsers use for ``"`` and control characters) or RFC 5987 ``filename*=UTF-8''…``.
The filename is kept whole — E2B clients put the target *path* there.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

MAX_HEADER_BYTES = 16 * 1024


class MultipartError(ValueError):
    """The body is not well-formed multipart (the HTTP layer answers 400)."""


@dataclass(frozen=True)
class PartStart:
    headers: dict[str, str]
    name: str | None = None
    filename: str | None = None


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


def boundary_from_content_type(content_type: str) -> str:
    """The ``boundary`` parameter of a ``multipart/*`` Content-Type; :class:`MultipartError` if missing."""
    media, params = parse_header_params(content_type)
    if not media.startswith("multipart/"):
        raise MultipartError(f"not a multipart content type: {content_type!r}")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise MultipartError("missing or invalid multipart boundary")
    return boundary


_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', re.DOTALL)
_HTML5_ESCAPE = re.compile(r"%(22|0[0-9A-Fa-f]|1[0-9A-Fa-f])")


def parse_header_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type; a=1; b="x y"`` into the lowercased first token and its parameters (names lowercased)."""
    head, sep, rest = value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(sep + rest):
        name, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name] = raw
    return head.strip().lower(), params


def _filename(params: dict[str, str]) -> str | None:
    extended = params.get("filename*")
    if extended is not None:
        charset, _, rest = extended.partition("'")
        _, _, encoded = rest.partition("'")
        try:
            return urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError) as exc:
            raise MultipartError(f"bad filename* parameter: {extended!r}") from exc
    plain = params.get("filename")
    if plain is None:
        return None
    return _HTML5_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), plain)


class MultipartParser:
    """Incremental parser for one multipart body with a known boundary."""

    def __init__(self, boundary: str) -> None:
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        self._buffer = bytearray(b"\r\n")  # so the very first delimiter matches the CRLF-prefixed form
        self._state = "preamble"  # preamble -> headers -> body -> (headers | epilogue)

    @property
    def done(self) -> bool:
        return self._state == "epilogue"

    def feed(self, data: bytes) -> list[Event]:
        self._buffer += data
        events: list[Event] = []
        while True:
            if self._state == "preamble":
                index = self._buffer.find(self._delimiter)
                if index < 0:
                    keep = len(self._delimiter) - 1
                    if len(self._buffer) > keep:
                        del self._buffer[: len(self._buffer) - keep]
                    return events
                after = index + len(self._delimiter)
                if not self._after_delimiter(after, events):
                    return events
            elif self._state == "headers":
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buffer) > MAX_HEADER_BYTES:
                        raise MultipartError("part headers too long")
                    return events
                if end > MAX_HEADER_BYTES:
                    raise MultipartError("part headers too long")
                events.append(self._part_start(bytes(self._buffer[:end])))
                del self._buffer[: end + 4]
                self._state = "body"
            elif self._state == "body":
                index = self._buffer.find(self._delimiter)
                if index < 0:
                    # Everything except a possible partial delimiter at the end is body.
                    safe = len(self._buffer) - (len(self._delimiter) - 1)
                    if safe > 0:
                        events.append(PartData(bytes(self._buffer[:safe])))
                        del self._buffer[:safe]
                    return events
                if index:
                    events.append(PartData(bytes(self._buffer[:index])))
                events.append(PartEnd())
                if not self._after_delimiter(index + len(self._delimiter), events):
                    del self._buffer[:index]
                    self._state = "delimiter"
                    return events
            elif self._state == "delimiter":
                # A delimiter was found but what follows it (CRLF or "--") had not arrived yet.
                if not self._after_delimiter(len(self._delimiter), events):
                    return events
            else:  # epilogue: ignore everything after the close delimiter
                self._buffer.clear()
                return events

    def _after_delimiter(self, after: int, events: list[Event]) -> bool:
        """Consume the delimiter's tail; False when more bytes are needed to tell CRLF from ``--``."""
        tail = self._buffer[after : after + 2]
        if len(tail) < 2:
            if self._state == "preamble":
                # keep the delimiter itself; re-find it next time
                del self._buffer[: after - len(self._delimiter)]
            return False
        if tail == b"--":
            self._state = "epilogue"
            self._buffer.clear()
            return True
        # transport padding (spaces/tabs) may precede the CRLF
        line_end = self._buffer.find(b"\r\n", after)
        if line_end < 0:
            if len(self._buffer) - after > 1024:
                raise MultipartError("malformed multipart delimiter line")
            if self._state == "preamble":
                del self._buffer[: after - len(self._delimiter)]
            return False
        if self._buffer[after:line_end].strip(b" \t"):
            raise MultipartError("malformed multipart delimiter line")
        del self._buffer[: line_end + 2]
        self._state = "headers"
        return True

    def _part_start(self, raw: bytes) -> PartStart:
        headers: dict[str, str] = {}
        for line in raw.decode("utf-8", "surrogateescape").split("\r\n"):
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise MultipartError(f"malformed part header line: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition")
        field_name: str | None = None
        filename: str | None = None
        if disposition is not None:
            kind, params = parse_header_params(disposition)
            if kind != "form-data":
                raise MultipartError(f"unexpected Content-Disposition {kind!r}")
            field_name = params.get("name")
            filename = _filename(params)
        return PartStart(headers=headers, name=field_name, filename=filename)

    def close(self) -> None:
        """Declare the end of the body; :class:`MultipartError` unless the close delimiter was seen."""
        if self._state != "epilogue":
            raise MultipartError("multipart body ended before its closing boundary")
