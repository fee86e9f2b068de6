"""GET/POST /files against a real envd subprocess: transfer forms, gzip, metadata, signatures, ownership, errors."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from wrenn.envd._files import sign

from .conftest import EnvdProcess

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="acting as other users needs envd to run as root")

TOKEN = "secret-token-123"
BLOB = bytes(range(256)) * 4099  # ~1 MiB, every byte value, not a multiple of any chunk size


@pytest.fixture
def base() -> Iterator[Path]:
    """A world-writable scratch directory (so `nobody` can write into it) removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="envd-files-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def http(envd_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=envd_server, timeout=30) as client:
        yield client


@pytest.fixture
def secured(envd_factory: Callable[..., EnvdProcess]) -> Iterator[httpx.Client]:
    envd = envd_factory("--access-token", TOKEN)
    with httpx.Client(base_url=envd.url, timeout=30) as client:
        yield client


def upload(http: httpx.Client, path: str, data: bytes, user: str = "root", **headers: str) -> httpx.Response:
    return http.post(
        "/files",
        params={"path": path, "username": user},
        content=data,
        headers={"Content-Type": "application/octet-stream", **headers},
    )


def test_octet_stream_round_trip_creates_parents(http: httpx.Client, base: Path) -> None:
    target = base / "deep" / "er" / "blob.bin"
    response = upload(http, str(target), BLOB)
    assert response.status_code == 200, response.text
    assert response.json() == [{"path": str(target), "name": "blob.bin", "type": "file"}]
    assert target.read_bytes() == BLOB
    got = http.get("/files", params={"path": str(target), "username": "root"})
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.content == BLOB


def test_non_ascii_paths_round_trip(http: httpx.Client, base: Path) -> None:
    target = base / "caf\u00e9 \u6587\u4ef6.txt"
    response = http.post("/files", params={"username": "root"}, files=[("file", (str(target), b"utf8"))])
    assert response.status_code == 200, response.text
    assert response.json()[0]["name"] == "caf\u00e9 \u6587\u4ef6.txt"
    assert target.read_bytes() == b"utf8"
    got = http.get("/files", params={"path": str(target), "username": "root"})
    assert got.status_code == 200
    assert got.content == b"utf8"


def test_upload_overwrites_existing_file(http: httpx.Client, base: Path) -> None:
    target = base / "f.txt"
    target.write_bytes(b"a much longer original content")
    assert upload(http, str(target), b"short").status_code == 200
    assert target.read_bytes() == b"short"


def test_multipart_several_files_filename_is_target_path(http: httpx.Client, base: Path) -> None:
    files = [
        ("file", (str(base / "one.txt"), b"first")),
        ("file", (str(base / "sub" / "two.bin"), BLOB)),
        ("other", (None, b"ignored form field")),
    ]
    response = http.post("/files", params={"username": "root"}, files=files)
    assert response.status_code == 200, response.text
    assert [e["path"] for e in response.json()] == [str(base / "one.txt"), str(base / "sub" / "two.bin")]
    assert (base / "one.txt").read_bytes() == b"first"
    assert (base / "sub" / "two.bin").read_bytes() == BLOB


def test_multipart_path_parameter_wins_and_quotes_survive(http: httpx.Client, base: Path) -> None:
    weird = base / 'we"ird name.txt'
    response = http.post("/files", params={"username": "root"}, files=[("file", (str(weird), b"q"))])
    assert response.status_code == 200, response.text
    assert weird.read_bytes() == b"q"
    response = http.post(
        "/files",
        params={"username": "root", "path": str(base / "chosen.txt")},
        files=[("file", ("ignored-name.txt", b"p"))],
    )
    assert response.status_code == 200
    assert (base / "chosen.txt").read_bytes() == b"p"
    assert not (base / "ignored-name.txt").exists()


def test_relative_path_resolves_in_the_users_home(http: httpx.Client, os_user: str) -> None:
    name = f"envd-files-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        response = http.post("/files", params={"username": os_user}, files=[("file", (f"{name}/rel.txt", b"r"))])
        assert response.status_code == 200, response.text
        home = Path(os.path.expanduser(f"~{os_user}"))
        assert response.json()[0]["path"] == str(home / name / "rel.txt")
        written = home / name / "rel.txt"
        assert written.read_bytes() == b"r"
        assert written.stat().st_uid == written.parent.stat().st_uid == home.stat().st_uid
    finally:
        shutil.rmtree(Path(os.path.expanduser(f"~{os_user}")) / name, ignore_errors=True)


def test_ownership_is_the_users(http: httpx.Client, base: Path) -> None:
    target = base / "n" / "owned.txt"
    assert upload(http, str(target), b"mine", user="nobody").status_code == 200
    assert target.stat().st_uid == 65534
    assert target.parent.stat().st_uid == 65534


def test_gzip_upload_and_download(http: httpx.Client, base: Path) -> None:
    target = base / "gz.bin"
    response = upload(http, str(target), gzip.compress(BLOB), **{"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert target.read_bytes() == BLOB
    with http.stream(
        "GET", "/files", params={"path": str(target), "username": "root"}, headers={"Accept-Encoding": "gzip"}
    ) as got:
        assert got.headers["content-encoding"] == "gzip"
        raw = b"".join(got.iter_raw())
    assert len(raw) < len(BLOB)
    assert gzip.decompress(raw) == BLOB


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("gzip", "gzip"),
        ("x-gzip", "gzip"),
        ("gzip;q=1, identity;q=0.5", "gzip"),
        ("gzip, deflate", None),  # httpx's default, sent by every SDK read: a tie, so no compression
        ("gzip;q=0.5, identity", None),
        ("identity", None),
        ("*", None),  # anything goes: identity
        ("br, *;q=0.1", None),
    ],
)
def test_accept_encoding_choice(http: httpx.Client, base: Path, accept: str, expected: str | None) -> None:
    target = base / "choice.txt"
    target.write_bytes(BLOB[:5000])
    with http.stream(
        "GET", "/files", params={"path": str(target), "username": "root"}, headers={"Accept-Encoding": accept}
    ) as got:
        assert got.status_code == 200
        assert got.headers.get("content-encoding") == expected
        raw = b"".join(got.iter_raw())
    assert (gzip.decompress(raw) if expected else raw) == BLOB[:5000]


def test_gzip_upload_of_concatenated_members(http: httpx.Client, base: Path) -> None:
    target = base / "members.bin"
    body = gzip.compress(BLOB[:70_000]) + gzip.compress(BLOB[70_000:])
    assert upload(http, str(target), body, **{"Content-Encoding": "gzip"}).status_code == 200
    assert target.read_bytes() == BLOB
    truncated = gzip.compress(BLOB)[:-100]
    response = upload(http, str(target), truncated, **{"Content-Encoding": "gzip"})
    assert response.status_code == 400
    assert "truncated" in response.json()["message"]


def test_encoding_errors(http: httpx.Client, base: Path) -> None:
    target = base / "e.txt"
    target.write_bytes(b"e")
    got = http.get(
        "/files", params={"path": str(target), "username": "root"}, headers={"Accept-Encoding": "br, identity;q=0"}
    )
    assert got.status_code == 406
    assert got.json()["code"] == 406
    bad = upload(http, str(target), b"not gzip at all", **{"Content-Encoding": "gzip"})
    assert bad.status_code == 400
    assert upload(http, str(target), b"x", **{"Content-Encoding": "br"}).status_code == 400


def test_metadata_headers_become_xattrs_and_replace_old_ones(http: httpx.Client, base: Path) -> None:
    target = base / "meta.txt"
    response = upload(http, str(target), b"m", **{"X-Metadata-Owner": "alice", "X-Metadata-Stage": "raw"})
    assert response.status_code == 200, response.text
    assert response.json()[0]["metadata"] == {"owner": "alice", "stage": "raw"}
    assert os.getxattr(target, "user.e2b.owner") == b"alice"
    assert upload(http, str(target), b"m2", **{"X-Metadata-Stage": "clean"}).status_code == 200
    assert sorted(os.listxattr(target)) == ["user.e2b.stage"]
    cleared = upload(http, str(target), b"plain")
    assert "metadata" not in cleared.json()[0]
    assert os.listxattr(target) == [], "an upload without metadata clears the old metadata"
    bad = http.post(
        "/files",
        params={"path": str(target), "username": "root"},
        content=b"m3",
        headers=[(b"Content-Type", b"application/octet-stream"), (b"X-Metadata-Key", "café".encode())],
    )
    assert bad.status_code == 400


def test_download_errors(http: httpx.Client, base: Path) -> None:
    secret = base / "secret"
    secret.write_bytes(b"s")
    secret.chmod(0o600)
    os.mkfifo(base / "fifo")
    cases = [
        ({"path": str(base / "fifo"), "username": "root"}, 400),
        ({"path": str(base / "missing"), "username": "root"}, 404),
        ({"path": str(base), "username": "root"}, 400),
        ({"path": str(secret), "username": "nobody"}, 403),
        ({"path": str(secret), "username": "no-such-user-xyz"}, 401),
        ({"username": "root"}, 400),
    ]
    for params, status in cases:
        response = http.get("/files", params=params)
        assert response.status_code == status, (params, response.text)
        assert response.json()["code"] == status
        assert response.json()["message"]
    assert http.get("/files", params={"path": str(secret), "username": "root"}).content == b"s"


def test_upload_errors(http: httpx.Client, base: Path) -> None:
    root_only = base / "root-only"
    root_only.mkdir(mode=0o755)
    (base / "adir").mkdir()
    assert upload(http, str(base / "adir"), b"x").status_code == 400
    (base / "plain").write_bytes(b"p")
    under_file = upload(http, str(base / "plain" / "child.txt"), b"x")
    assert under_file.status_code == 400
    assert "not a directory" in under_file.json()["message"]
    assert "directory" in upload(http, str(base / "adir"), b"x").json()["message"]
    denied = upload(http, str(root_only / "f"), b"x", user="nobody")
    assert denied.status_code == 403
    assert not (root_only / "f").exists()
    no_path = http.post(
        "/files", params={"username": "root"}, content=b"x", headers={"Content-Type": "application/octet-stream"}
    )
    assert no_path.status_code == 400
    wrong_type = http.post(
        "/files", params={"path": str(base / "t")}, content=b"x", headers={"Content-Type": "text/plain"}
    )
    assert wrong_type.status_code == 400
    truncated = http.post(
        "/files",
        params={"username": "root"},
        content=b'--XX\r\nContent-Disposition: form-data; name="file"; filename="/tmp/x"\r\n\r\nno end',
        headers={"Content-Type": "multipart/form-data; boundary=XX"},
    )
    assert truncated.status_code == 400
    assert upload(http, str(base / "u"), b"x", user="no-such-user-xyz").status_code == 401


def test_access_token_and_signatures(secured: httpx.Client, base: Path) -> None:
    target = str(base / "signed.txt")
    params = {"path": target, "username": "root"}
    octet = {"Content-Type": "application/octet-stream"}
    assert secured.post("/files", params=params, content=b"x", headers=octet).status_code == 401
    wrong = secured.post("/files", params=params, content=b"x", headers={**octet, "X-Access-Token": "nope"})
    assert wrong.status_code == 401
    ok = secured.post("/files", params=params, content=b"x", headers={**octet, "X-Access-Token": TOKEN})
    assert ok.status_code == 200

    write_sig = sign(target, "write", "root", TOKEN)
    assert (
        secured.post("/files", params={**params, "signature": write_sig}, content=b"y", headers=octet).status_code
        == 200
    )
    read_sig = sign(target, "read", "root", TOKEN)
    assert secured.get("/files", params={**params, "signature": read_sig}).content == b"y"
    # a write signature does not allow reading, nor one made for another user or with another token
    for bad in (write_sig, sign(target, "read", "nobody", TOKEN), sign(target, "read", "root", "other")):
        response = secured.get("/files", params={**params, "signature": bad})
        assert response.status_code == 401
        assert response.json()["message"] == "invalid signature"

    future = int(time.time()) + 60
    expiring = sign(target, "read", "root", TOKEN, future)
    good = secured.get("/files", params={**params, "signature": expiring, "signature_expiration": str(future)})
    assert good.status_code == 200
    past = int(time.time()) - 1
    expired = sign(target, "read", "root", TOKEN, past)
    response = secured.get("/files", params={**params, "signature": expired, "signature_expiration": str(past)})
    assert response.status_code == 401
    assert response.json() == {"code": 401, "message": "signature is already expired"}
    # the expiration is part of what is signed
    tampered = secured.get("/files", params={**params, "signature": expiring, "signature_expiration": str(future + 1)})
    assert tampered.status_code == 401
    # default user: the signature's user part is empty
    default_sig = sign(target, "read", "", TOKEN)
    assert secured.get("/files", params={"path": target, "signature": default_sig}).status_code in (200, 403)


@pytest.mark.root
def test_full_disk_is_507(http: httpx.Client, base: Path) -> None:
    mount = base / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "envd-test-tmpfs", str(mount)], check=True)
    try:
        response = upload(http, str(mount / "big.bin"), os.urandom(3 * 1024 * 1024))
        assert response.status_code == 507, response.text
        assert response.json()["code"] == 507
        assert "disk space" in response.json()["message"]
        # multipart too
        response = http.post(
            "/files", params={"username": "root"}, files=[("file", (str(mount / "big2.bin"), os.urandom(3 << 20)))]
        )
        assert response.status_code == 507
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_download_streams_large_file_intact(http: httpx.Client, base: Path) -> None:
    target = base / "large.bin"
    digest = hashlib.sha256()
    with open(target, "wb") as f:
        for i in range(40):
            chunk = os.urandom(256 * 1024) + bytes([i])
            digest.update(chunk)
            f.write(chunk)
    received = hashlib.sha256()
    with http.stream("GET", "/files", params={"path": str(target), "username": "root"}) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            received.update(chunk)
    assert received.hexdigest() == digest.hexdigest()
