"""``GET /files`` and ``POST /files``: streamed file download and upload, as the request's user.

- Auth: with an access token set, a request carries ``X-Access-Token`` or a v1 signature
  (``signature=v1_<base64 sha256("<path>:<read|write>:<username>:<token>[:<expiration>]")>``, optional
  ``signature_expiration`` unix time). Otherwise no check (E2B's envd exempts ``/files`` from the token check).
- User: ``username`` query parameter, else the default user; the file is opened with that user's filesystem
  credentials (see ``_filesystem.UserFs``), so permissions are the kernel's and new files belong to the user.
- Download: raw bytes, gzip when ``Accept-Encoding`` prefers it. Upload: ``application/octet-stream`` (query
  ``path``) or ``multipart/form-data`` with one or more ``file`` parts (``filename`` = target path unless the
  query has ``path``), ``Content-Encoding: gzip`` accepted, ``X-Metadata-<key>`` headers stored as xattrs.
- Bodies stream through bounded buffers both ways: memory does not grow with the file size.

Statuses: 400 bad request / path is a directory, 401 bad token, signature or user, 403 permission denied,
404 not found, 406 unacceptable encoding, 507 disk full; bodies ``{"code": <int>, "message": "..."}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import hmac
import os
import posixpath
import re
import stat
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ._filesystem import FilesystemService, FsError, FsErrorKind, ensure_parent, translate, write_metadata
from ._http import Request, Response, Router
from ._multipart import MultipartError, MultipartParser, PartData, PartEnd, PartStart, boundary_from_content_type
from ._users import UnknownUser, User, default_user_name, lookup

READ_CHUNK = 1024 * 1024
WRITE_BATCH = 1024 * 1024  # upload bytes gathered before one writev() on a worker thread
_IOV_MAX = 1024  # Linux's limit on buffers per writev()
GZIP_LEVEL = 1  # speed over ratio: the link is usually faster than deflate at higher levels
METADATA_HEADER_PREFIX = "x-metadata-"
_METADATA_KEY = re.compile(r"\A[A-Za-z0-9!#$%&'*+\-.^_`|~]+\Z")
_METADATA_VALUE = re.compile(r"\A[\x20-\x7e]*\Z")

_STATUS = {
    FsErrorKind.NOT_FOUND: 404,
    FsErrorKind.ALREADY_EXISTS: 409,
    FsErrorKind.INVALID_ARGUMENT: 400,
    FsErrorKind.PERMISSION_DENIED: 403,
    FsErrorKind.RESOURCE_EXHAUSTED: 507,
    FsErrorKind.FAILED_PRECONDITION: 400,
    FsErrorKind.INTERNAL: 500,
}


class _Reject(Exception):
    """Stop handling a request with this status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _from_fs(error: FsError) -> _Reject:
    return _Reject(_STATUS[error.kind], error.message)


def sign(path: str, operation: str, username: str, token: str, expiration: int | None = None) -> str:
    """The v1 signature E2B SDKs put in download/upload URLs."""
    raw = f"{path}:{operation}:{username}:{token}"
    if expiration is not None:
        raw += f":{expiration}"
    digest = hashlib.sha256(raw.encode("utf-8")).digest()
    return "v1_" + base64.b64encode(digest).decode("ascii").rstrip("=")


@dataclass
class _Call:
    """What both routes resolve first: the user, the raw ``path`` parameter and the resolved path."""

    user: User
    raw_path: str | None
    path: str | None


class FilesRoutes:
    def __init__(self, service: FilesystemService) -> None:
        self._fs = service

    # --- shared steps ---------------------------------------------------------------------------------------------

    def _authorize(self, request: Request, operation: str) -> None:
        token = self._fs.state.access_token
        if token is None:
            return
        given = request.headers.get("x-access-token")
        if given:
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise _Reject(401, "access token present in header but does not match")
            return
        signature = request.query_one("signature")
        if not signature:
            raise _Reject(401, "missing signature query parameter")
        expiration: int | None = None
        raw_expiration = request.query_one("signature_expiration")
        if raw_expiration is not None:
            try:
                expiration = int(raw_expiration)
            except ValueError as exc:
                raise _Reject(400, "signature_expiration must be an integer") from exc
        expected = sign(
            request.query_one("path") or "", operation, request.query_one("username") or "", token, expiration
        )
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise _Reject(401, "invalid signature")
        if expiration is not None and expiration < time.time():
            raise _Reject(401, "signature is already expired")

    def _call(self, request: Request, operation: str) -> _Call:
        self._authorize(request, operation)
        name = request.query_one("username") or default_user_name(self._fs.state.default_user)
        try:
            user = lookup(name)
        except UnknownUser as exc:
            raise _Reject(401, f"error looking up user '{name}': no such user") from exc
        raw_path = request.query_one("path")
        path = None
        if raw_path is not None:
            try:
                path = self._fs.resolve(raw_path, user)
            except FsError as exc:
                raise _from_fs(exc) from exc
        return _Call(user, raw_path, path)

    # --- GET /files -------------------------------------------------------------------------------------------------

    async def get(self, request: Request) -> Response:
        try:
            call = self._call(request, "read")
            if call.path is None:
                raise _Reject(400, "missing path query parameter")
            encoding = _choose_encoding(request.headers.get("accept-encoding"))
            try:
                fd = await self._fs.run(call.user, _open_for_read, call.path)
            except FsError as exc:
                raise _from_fs(exc) from exc
        except _Reject as exc:
            return Response.error(exc.status, exc.message)
        headers = [("Content-Type", "application/octet-stream"), ("Vary", "Accept-Encoding")]
        if encoding == "gzip":
            headers.append(("Content-Encoding", "gzip"))
            return Response(200, headers, _gzip(_read_chunks(fd)))
        return Response(200, headers, _read_chunks(fd))

    # --- POST /files ------------------------------------------------------------------------------------------------

    async def post(self, request: Request) -> Response:
        try:
            call = self._call(request, "write")
            metadata = _metadata(request)
            body = _decoded_body(request)
            ctype = request.headers.get("content-type") or ""
            media = ctype.split(";", 1)[0].strip().lower()
            if media == "application/octet-stream":
                if call.path is None:
                    raise _Reject(400, "path query parameter is required for an octet-stream upload")
                written = [await self._write_one(call.user, call.path, body, metadata)]
            elif media.startswith("multipart/"):
                written = await self._write_multipart(call, ctype, body, metadata)
            else:
                raise _Reject(
                    400, f"unsupported content type {ctype!r}: expected multipart/form-data or application/octet-stream"
                )
        except _Reject as exc:
            return Response.error(exc.status, exc.message)
        return Response.json(written)

    async def _write_one(
        self, user: User, path: str, chunks: AsyncIterator[bytes], metadata: dict[str, str] | None
    ) -> dict[str, Any]:
        try:
            fd = await self._fs.run(user, _open_for_write, path, user.uid, user.gid)
        except FsError as exc:
            raise _from_fs(exc) from exc
        try:
            await _pump_to_fd(fd, chunks, path)
        finally:
            os.close(fd)
        info: dict[str, Any] = {"path": path, "name": posixpath.basename(path), "type": "file"}
        # Metadata replaces what the file had: an upload without X-Metadata-* headers clears it (as E2B's envd).
        try:
            await self._fs.userfs.run(user, write_metadata, path, metadata or {})
        except FsError as exc:
            raise _from_fs(exc) from exc
        if metadata is not None:
            info["metadata"] = {key.lower(): value for key, value in metadata.items()}
        return info

    async def _write_multipart(
        self, call: _Call, content_type: str, body: AsyncIterator[bytes], metadata: dict[str, str] | None
    ) -> list[dict[str, Any]]:
        try:
            parser = MultipartParser(boundary_from_content_type(content_type))
        except MultipartError as exc:
            raise _Reject(400, str(exc)) from exc
        events = _multipart_events(parser, body)
        written: list[dict[str, Any]] = []
        seen: set[str] = set()
        async for event in events:
            if not isinstance(event, PartStart):
                continue
            part = _part_data(events)
            if event.name != "file":
                async for _ in part:  # not a file field: skip its data
                    pass
                continue
            path = call.path
            if path is None:
                if not event.filename:
                    raise _Reject(400, "multipart file part has no filename and there is no path parameter")
                try:
                    path = self._fs.resolve(event.filename, call.user)
                except FsError as exc:
                    raise _from_fs(exc) from exc
            if path in seen:
                raise _Reject(400, f"you cannot upload multiple files to the same path '{path}' in one request")
            seen.add(path)
            written.append(await self._write_one(call.user, path, part, metadata))
        if not written:
            raise _Reject(400, "no file part named 'file' in the multipart body")
        return written


# --- helpers --------------------------------------------------------------------------------------------------------


def _metadata(request: Request) -> dict[str, str] | None:
    found: dict[str, str] = {}
    for name, value in request.headers:
        if not name.lower().startswith(METADATA_HEADER_PREFIX):
            continue
        key = name[len(METADATA_HEADER_PREFIX) :].lower()
        if not _METADATA_KEY.match(key):
            raise _Reject(400, f"invalid metadata key {key!r}")
        if not _METADATA_VALUE.match(value):
            raise _Reject(400, f"invalid metadata value for key {key!r}: printable ASCII only")
        found[key] = value
    return found or None


def _choose_encoding(accept: str | None) -> str:
    """``gzip`` or ``identity`` from an Accept-Encoding header; 406 when neither is acceptable.

    gzip is chosen when the client prefers it to identity or names no other coding (the e2b SDK's ``gzip=True``
    sends exactly ``gzip``). A tie with other codings listed — httpx's default ``gzip, deflate``, which every SDK
    read sends — goes to identity: compressing every download by default would cost the guest's CPU on data that
    is often incompressible, and RFC 9110 leaves the choice among equally acceptable codings to the server.
    """
    if not accept or not accept.strip():
        return "identity"
    weights: dict[str, float] = {}
    for item in accept.split(","):
        coding, _, params = item.strip().partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError as exc:
                raise _Reject(400, f"bad Accept-Encoding quality in {item.strip()!r}") from exc
        weights[coding] = q
    star = weights.get("*")
    gzip_q = weights.get("gzip", weights.get("x-gzip", star if star is not None else 0.0))
    identity_q = weights.get("identity", star if star is not None and star == 0.0 else 1.0)
    only_gzip = all(coding in ("gzip", "x-gzip", "identity") for coding in weights)
    if gzip_q > 0 and (gzip_q > identity_q or (gzip_q == identity_q and only_gzip)):
        return "gzip"
    if identity_q > 0:
        return "identity"
    raise _Reject(406, f"no acceptable content encoding in {accept!r} (supported: gzip, identity)")


def _open_for_read(path: str) -> int:
    """Open ``path`` for reading as the current (worker) thread's user; directories are refused."""
    try:
        # O_NONBLOCK: opening a FIFO must not hang a worker thread until some writer appears.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise translate(exc, f"opening {path}") from exc
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise FsError(FsErrorKind.INVALID_ARGUMENT, f"path '{path}' is a directory")
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        os.close(fd)
        raise FsError(FsErrorKind.INVALID_ARGUMENT, f"path '{path}' is not a regular file")
    os.set_blocking(fd, True)
    return fd


def _open_for_write(path: str, uid: int, gid: int) -> int:
    """Create or truncate ``path`` (and its parents) as the current thread's user and hand it over to them."""
    ensure_parent(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise FsError(FsErrorKind.INVALID_ARGUMENT, f"path is a directory: {path}") from exc
        raise translate(exc, f"opening {path}") from exc
    # Already the user's when we created it; E2B's envd chowns anyway, and watchers expect the CHMOD event.
    with contextlib.suppress(OSError):
        os.fchown(fd, uid, gid)
    return fd


def _write_all(fd: int, buffers: list[bytes], path: str) -> None:
    """Write ``buffers`` in order with ``writev`` (no joining copy), finishing any partial write."""
    try:
        remaining = sum(len(b) for b in buffers)
        written = os.writev(fd, buffers)
        if written == remaining:
            return
        view = memoryview(b"".join(buffers))[written:]  # rare: a short write (signal, nearly full disk)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FsError(FsErrorKind.RESOURCE_EXHAUSTED, f"writing {path}: not enough disk space") from exc
        raise translate(exc, f"writing {path}") from exc


async def _pump_to_fd(fd: int, chunks: AsyncIterator[bytes], path: str) -> None:
    """Write the stream to ``fd`` on worker threads, reading the next batch while the previous one is written."""
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] | None = None
    batch: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            batch.append(chunk)
            size += len(chunk)
            if size < WRITE_BATCH and len(batch) < _IOV_MAX:
                continue
            if pending is not None:
                await pending
            pending = loop.run_in_executor(None, _write_all, fd, batch, path)
            batch, size = [], 0
        if pending is not None:
            await pending
            pending = None
        if batch:
            await loop.run_in_executor(None, _write_all, fd, batch, path)
    except FsError as exc:
        raise _from_fs(exc) from exc
    finally:
        if pending is not None and not pending.done():
            with contextlib.suppress(BaseException):
                await pending


async def _read_chunks(fd: int) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    try:
        while True:
            data = await loop.run_in_executor(None, os.read, fd, READ_CHUNK)
            if not data:
                return
            yield data
    finally:
        os.close(fd)


async def _gzip(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Compress on a worker thread (zlib releases the GIL): a MiB of deflate must not stall the event loop."""
    loop = asyncio.get_running_loop()
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    try:
        async for chunk in chunks:
            out = await loop.run_in_executor(None, compressor.compress, chunk)
            if out:
                yield out
        yield compressor.flush()
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _decoded_body(request: Request) -> AsyncIterator[bytes]:
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    if encoding in ("", "identity"):
        return request.stream()
    if encoding in ("gzip", "x-gzip"):
        return _gunzip(request.stream())
    raise _Reject(400, f"unsupported Content-Encoding {encoding!r} (supported: gzip)")


async def _gunzip(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Inflate on a worker thread, at most READ_CHUNK of output per step (a small body may inflate hugely)."""
    loop = asyncio.get_running_loop()
    decompressor = zlib.decompressobj(31)
    try:
        async for chunk in chunks:
            data = chunk
            while data:
                out = await loop.run_in_executor(None, decompressor.decompress, data, READ_CHUNK)
                if out:
                    yield out
                data = decompressor.unconsumed_tail
                if decompressor.eof:
                    data = decompressor.unused_data + data
                    if not data:
                        break
                    decompressor = zlib.decompressobj(31)  # concatenated gzip members
        if not decompressor.eof:
            tail = decompressor.flush()
            if tail:
                yield tail
            raise _Reject(400, "gzip body is truncated")
    except zlib.error as exc:
        raise _Reject(400, f"error decompressing request body: {exc}") from exc


async def _multipart_events(
    parser: MultipartParser, body: AsyncIterator[bytes]
) -> AsyncIterator[PartStart | PartData | PartEnd]:
    try:
        async for chunk in body:
            for event in parser.feed(chunk):
                yield event
        parser.close()
    except MultipartError as exc:
        raise _Reject(400, f"malformed multipart body: {exc}") from exc


async def _part_data(events: AsyncIterator[PartStart | PartData | PartEnd]) -> AsyncIterator[bytes]:
    """The data of the current part, up to its PartEnd (shares the event iterator with the caller)."""
    async for event in events:
        if isinstance(event, PartData):
            yield event.data
        elif isinstance(event, PartEnd):
            return
        else:
            raise _Reject(400, "malformed multipart body: part started inside a part")


def register_routes(router: Router, service: FilesystemService) -> FilesRoutes:
    routes = FilesRoutes(service)
    # /files is exempt from the router's token check: it accepts the token header *or* a signature (see above).
    router.route("GET", "/files", routes.get, auth=False)
    router.route("POST", "/files", routes.post, auth=False)
    return routes
