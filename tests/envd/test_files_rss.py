"""A 2 GiB upload and download through envd keep its memory small: bodies stream, they are never held whole."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import EnvdProcess

SIZE = 2 * 1024**3
CHUNK = 1024 * 1024
RSS_GROWTH_LIMIT = 64 * 1024 * 1024


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} missing from /proc/{pid}/status")


def _body(block: bytes, digest: hashlib._Hash) -> Iterator[bytes]:
    for i in range(SIZE // CHUNK):
        chunk = block[:-1] + bytes([i & 0xFF])
        digest.update(chunk)
        yield chunk


@pytest.mark.slow
def test_two_gib_upload_and_download_keep_envd_rss_small(envd_factory: Callable[..., EnvdProcess]) -> None:
    envd = envd_factory()
    pid = envd.proc.pid
    with httpx.Client(base_url=envd.url, timeout=120) as http:
        # warm up every code path once so the baseline includes imports and thread pools
        scratch = Path(tempfile.mkdtemp(prefix="envd-rss-", dir="/var/tmp"))
        target = scratch / "big.bin"
        try:
            params = {"path": str(target), "username": "root"}
            octet = {"Content-Type": "application/octet-stream"}
            assert http.post("/files", params=params, content=b"warm", headers=octet).status_code == 200
            assert http.get("/files", params=params).content == b"warm"
            baseline = _status_kib(pid, "VmRSS") * 1024

            sent = hashlib.sha256()
            response = http.post("/files", params=params, content=_body(os.urandom(CHUNK), sent), headers=octet)
            assert response.status_code == 200, response.text
            assert target.stat().st_size == SIZE
            peak_after_upload = _status_kib(pid, "VmHWM") * 1024

            received = hashlib.sha256()
            total = 0
            identity = {"Accept-Encoding": "identity"}  # httpx asks for gzip by default; measure the raw path
            with http.stream("GET", "/files", params=params, headers=identity) as download:
                assert download.status_code == 200
                for chunk in download.iter_raw(CHUNK):
                    received.update(chunk)
                    total += len(chunk)
            assert total == SIZE
            assert received.hexdigest() == sent.hexdigest()
            peak = _status_kib(pid, "VmHWM") * 1024
        finally:
            target.unlink(missing_ok=True)
            scratch.rmdir()
    mib = 1 << 20
    print(
        f"envd RSS baseline {baseline // mib} MiB, after upload {peak_after_upload // mib} MiB, peak {peak // mib} MiB"
    )
    assert peak_after_upload - baseline < RSS_GROWTH_LIMIT
    assert peak - baseline < RSS_GROWTH_LIMIT
