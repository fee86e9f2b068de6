"""The official e2b SDK (debug mode: envd at localhost:49983) driving files and watchers of a real envd.

Paths are relative, so they land in the default user's home (/home/user), as in E2B sandboxes.
"""

from __future__ import annotations

import io
import os
import pwd
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = [
    pytest.mark.sdk,
    pytest.mark.skipif(os.geteuid() != 0, reason="envd must run as root to act as the `user` account"),
]


@pytest.fixture
def sandbox(os_user: str, envd_debug_port: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from e2b import Sandbox

    monkeypatch.setenv("E2B_DEBUG", "true")
    monkeypatch.setenv("E2B_API_KEY", "e2b_" + "0" * 40)
    sbx = Sandbox.create()
    yield sbx
    sbx.kill()


@pytest.fixture
def workdir(sandbox: Any) -> Iterator[str]:
    """A fresh directory name relative to the user's home, removed afterwards."""
    name = f"sdk-files-{uuid.uuid4().hex[:10]}"
    yield name
    if sandbox.files.exists(name):
        sandbox.files.remove(name)


def test_write_and_read_text_bytes_and_streams(sandbox: Any, workdir: str) -> None:
    info = sandbox.files.write(f"{workdir}/hello.txt", "héllo wörld")
    assert info.path == f"/home/user/{workdir}/hello.txt"
    assert info.name == "hello.txt"
    assert sandbox.files.read(f"{workdir}/hello.txt") == "héllo wörld"

    blob = os.urandom(300_000)
    sandbox.files.write(f"{workdir}/blob.bin", blob)
    assert bytes(sandbox.files.read(f"{workdir}/blob.bin", format="bytes")) == blob

    # a file-like object goes as application/octet-stream, streamed
    sandbox.files.write(f"{workdir}/streamed.bin", io.BytesIO(blob[::-1]))
    with sandbox.files.read(f"{workdir}/streamed.bin", format="stream") as stream:
        assert b"".join(stream) == blob[::-1]

    owner = pwd.getpwnam("user").pw_uid
    assert os.stat(f"/home/user/{workdir}/blob.bin").st_uid == owner
    assert os.stat(f"/home/user/{workdir}").st_uid == owner


def test_write_files_sends_several_files_in_one_request(sandbox: Any, workdir: str) -> None:
    infos = sandbox.files.write_files(
        [{"path": f"{workdir}/a.txt", "data": "A"}, {"path": f"{workdir}/sub/b.txt", "data": b"B"}]
    )
    assert [i.path for i in infos] == [f"/home/user/{workdir}/a.txt", f"/home/user/{workdir}/sub/b.txt"]
    assert sandbox.files.read(f"{workdir}/sub/b.txt") == "B"


def test_gzip_both_ways(sandbox: Any, workdir: str) -> None:
    text = "compress me " * 10_000
    sandbox.files.write(f"{workdir}/gz.txt", text, gzip=True)
    assert sandbox.files.read(f"{workdir}/gz.txt", gzip=True) == text
    assert sandbox.files.read(f"{workdir}/gz.txt") == text


def test_metadata_round_trip(sandbox: Any, workdir: str) -> None:
    info = sandbox.files.write(f"{workdir}/m.txt", "m", metadata={"Project": "wrenn", "stage": "raw"})
    assert info.metadata == {"project": "wrenn", "stage": "raw"}
    assert sandbox.files.get_info(f"{workdir}/m.txt").metadata == {"project": "wrenn", "stage": "raw"}
    listed = sandbox.files.list(workdir)
    assert listed[0].metadata == {"project": "wrenn", "stage": "raw"}


def test_list_with_depth_exists_make_dir_remove_rename_info(sandbox: Any, workdir: str) -> None:
    from e2b import FileType
    from e2b.exceptions import NotFoundException

    assert sandbox.files.make_dir(f"{workdir}/d1/d2") is True
    assert sandbox.files.make_dir(f"{workdir}/d1/d2") is False
    sandbox.files.write(f"{workdir}/d1/f1.txt", "1")
    sandbox.files.write(f"{workdir}/d1/d2/f2.txt", "22")

    shallow = sandbox.files.list(f"{workdir}/d1")
    assert [(e.name, e.type) for e in shallow] == [("d2", FileType.DIR), ("f1.txt", FileType.FILE)]
    deep = sandbox.files.list(f"{workdir}/d1", depth=2)
    assert [e.path for e in deep] == [
        f"/home/user/{workdir}/d1/d2",
        f"/home/user/{workdir}/d1/d2/f2.txt",
        f"/home/user/{workdir}/d1/f1.txt",
    ]

    info = sandbox.files.get_info(f"{workdir}/d1/d2/f2.txt")
    assert info.type == FileType.FILE
    assert info.size == 2
    assert info.owner == "user"
    assert info.permissions == "-rw-r--r--"
    assert abs(info.modified_time.timestamp() - time.time()) < 60

    assert sandbox.files.exists(f"{workdir}/d1/f1.txt") is True
    moved = sandbox.files.rename(f"{workdir}/d1/f1.txt", f"{workdir}/moved.txt")
    assert moved.path == f"/home/user/{workdir}/moved.txt"
    assert sandbox.files.exists(f"{workdir}/d1/f1.txt") is False
    assert sandbox.files.read(f"{workdir}/moved.txt") == "1"

    sandbox.files.remove(f"{workdir}/d1")
    assert sandbox.files.exists(f"{workdir}/d1") is False
    with pytest.raises(NotFoundException):
        sandbox.files.read(f"{workdir}/d1/d2/f2.txt")
    with pytest.raises(NotFoundException):
        sandbox.files.get_info(f"{workdir}/nope")


def test_permission_denied_for_the_user(sandbox: Any) -> None:
    from e2b.exceptions import SandboxException

    with pytest.raises(SandboxException):
        sandbox.files.write("/root/envd-sdk-denied.txt", "no")
    assert not os.path.exists("/root/envd-sdk-denied.txt")
    # as root it works
    sandbox.files.write("/root/envd-sdk-allowed.txt", "yes", user="root")
    try:
        assert sandbox.files.read("/root/envd-sdk-allowed.txt", user="root") == "yes"
    finally:
        os.unlink("/root/envd-sdk-allowed.txt")


def test_watch_dir_reports_create_chmod_write(sandbox: Any, workdir: str) -> None:
    from e2b import FilesystemEventType

    sandbox.files.make_dir(workdir)
    handle = sandbox.files.watch_dir(workdir)
    sandbox.files.write(f"{workdir}/w.txt", "watched")
    events = handle.get_new_events()
    assert [(e.type, e.name) for e in events] == [
        (FilesystemEventType.CREATE, "w.txt"),
        (FilesystemEventType.CHMOD, "w.txt"),
        (FilesystemEventType.WRITE, "w.txt"),
    ]
    handle.stop()


def test_watch_dir_recursive_and_new_nested_folder(sandbox: Any, workdir: str) -> None:
    from e2b import FilesystemEventType

    sandbox.files.make_dir(f"{workdir}/nested")
    handle = sandbox.files.watch_dir(workdir, recursive=True, include_entry=True)
    sandbox.files.write(f"{workdir}/nested/f.txt", "x")
    sandbox.files.make_dir(f"{workdir}/later")
    sandbox.files.write(f"{workdir}/later/g.txt", "y")
    events = handle.get_new_events()
    seen = [(e.type, e.name) for e in events]
    assert seen[0] == (FilesystemEventType.CREATE, "nested/f.txt")
    assert (FilesystemEventType.WRITE, "nested/f.txt") in seen
    assert (FilesystemEventType.CREATE, "later") in seen
    assert (FilesystemEventType.WRITE, "later/g.txt") in seen
    assert events[0].entry is not None
    assert events[0].entry.path == f"/home/user/{workdir}/nested/f.txt"
    handle.stop()

    plain = sandbox.files.watch_dir(workdir)  # not recursive: nested changes are not reported
    sandbox.files.write(f"{workdir}/nested/f.txt", "changed")
    assert plain.get_new_events() == []
    plain.stop()


def test_watch_errors(sandbox: Any, workdir: str) -> None:
    from e2b.exceptions import NotFoundException, SandboxException

    with pytest.raises(NotFoundException):
        sandbox.files.watch_dir(f"{workdir}/missing")
    sandbox.files.write(f"{workdir}/file.txt", "f")
    with pytest.raises(SandboxException):
        sandbox.files.watch_dir(f"{workdir}/file.txt")


def test_symlink_info_reports_target(sandbox: Any, workdir: str) -> None:
    from e2b import FileType

    sandbox.files.write(f"{workdir}/target.txt", "t")
    os.symlink("target.txt", f"/home/user/{workdir}/link.txt")
    info = sandbox.files.get_info(f"{workdir}/link.txt")
    assert info.symlink_target == f"/home/user/{workdir}/target.txt"
    assert info.type == FileType.SYMLINK  # envd sets EntryInfo.is_symlink (field 12), which e2b >= 2.6x reads
    dir_info = sandbox.files.get_info(workdir)
    assert dir_info.type == FileType.DIR
    assert dir_info.size > 0
    assert dir_info.permissions == "drwxr-xr-x"


async def test_async_sandbox_streams(os_user: str, envd_debug_port: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from e2b import AsyncSandbox

    monkeypatch.setenv("E2B_DEBUG", "true")
    monkeypatch.setenv("E2B_API_KEY", "e2b_" + "0" * 40)
    sbx = await AsyncSandbox.create()
    name = f"sdk-files-async-{uuid.uuid4().hex[:10]}"
    try:

        async def chunks() -> Any:
            for i in range(8):
                yield bytes([i]) * 100_000

        await sbx.files.write(f"{name}/async.bin", chunks())
        stream = await sbx.files.read(f"{name}/async.bin", format="stream")
        async with stream:
            data = b"".join([chunk async for chunk in stream])
        assert data == b"".join(bytes([i]) * 100_000 for i in range(8))
        entries = await sbx.files.list(name)
        assert [e.name for e in entries] == ["async.bin"]
    finally:
        await sbx.files.remove(name)
        await sbx.kill()
