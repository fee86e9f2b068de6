"""filesystem.Filesystem over the Connect JSON wire format against a real envd subprocess.

envd runs as root here; requests name `root` or `nobody` with `Authorization: Basic`, so permission errors come
from the kernel checking the request user's own credentials.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Connect, EnvdProcess, basic

ROOT = basic("root")
NOBODY = basic("nobody")
FS = "filesystem.Filesystem/"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="acting as other users needs envd to run as root")


def call(rpc: Connect, method: str, body: dict[str, Any], headers: dict[str, str] = ROOT) -> tuple[int, Any]:
    response = rpc.unary(FS + method, body, headers)
    return response.status_code, response.json()


@pytest.fixture
def tree() -> Iterator[Path]:
    """{a.txt, sub/{b.txt, deep/c.txt}, link -> a.txt, private/ (0700 root)} in a world-traversable directory.

    (pytest's tmp_path lives under a 0700 directory, which `nobody` could not even reach.)
    """
    tmp_path = Path(tempfile.mkdtemp(prefix="envd-fs-", dir="/tmp"))
    tmp_path.chmod(0o755)
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "sub" / "b.txt").write_text("bb")
    (tmp_path / "sub" / "deep" / "c.txt").write_text("c")
    (tmp_path / "link").symlink_to(tmp_path / "a.txt")
    (tmp_path / "private").mkdir(mode=0o700)
    (tmp_path / "private" / "secret").write_text("s")
    yield tmp_path
    shutil.rmtree(tmp_path)


def test_stat_file_reports_entry_fields(rpc: Connect, tree: Path) -> None:
    os.chmod(tree / "a.txt", 0o640)
    status, body = call(rpc, "Stat", {"path": str(tree / "a.txt")})
    assert status == 200
    entry = body["entry"]
    assert entry["name"] == "a.txt"
    assert entry["type"] == "FILE_TYPE_FILE"
    assert entry["path"] == str(tree / "a.txt")
    assert entry["size"] == "5"
    assert entry["mode"] == 0o640
    assert entry["permissions"] == "-rw-r-----"
    assert entry["owner"] == "root"
    assert entry["group"] == "root"
    assert entry["modifiedTime"].endswith("Z")
    assert "symlinkTarget" not in entry


def test_stat_symlink_reports_target_type_and_target(rpc: Connect, tree: Path) -> None:
    status, body = call(rpc, "Stat", {"path": str(tree / "link")})
    assert status == 200
    entry = body["entry"]
    assert entry["type"] == "FILE_TYPE_FILE"
    assert entry["symlinkTarget"] == str(tree / "a.txt")
    assert entry["permissions"].startswith("L")


def test_stat_directory_and_relative_path_resolves_in_home(rpc: Connect, tree: Path) -> None:
    status, body = call(rpc, "Stat", {"path": str(tree / "sub")})
    assert status == 200
    assert body["entry"]["type"] == "FILE_TYPE_DIRECTORY"
    assert body["entry"]["permissions"].startswith("d")
    status, body = call(rpc, "Stat", {"path": "~"})
    assert status == 200
    assert body["entry"]["path"] == os.path.expanduser("~root")


def test_stat_missing_is_not_found(rpc: Connect, tree: Path) -> None:
    status, body = call(rpc, "Stat", {"path": str(tree / "missing")})
    assert status == 404
    assert body["code"] == "not_found"


def test_stat_as_user_without_search_permission_is_denied(rpc: Connect, tree: Path) -> None:
    status, body = call(rpc, "Stat", {"path": str(tree / "private" / "secret")}, NOBODY)
    assert status == 403
    assert body["code"] == "permission_denied"
    # root may: the check really is per user
    assert call(rpc, "Stat", {"path": str(tree / "private" / "secret")})[0] == 200


def test_unknown_user_is_unauthenticated(rpc: Connect, tree: Path) -> None:
    status, body = call(rpc, "Stat", {"path": str(tree)}, basic("no-such-user-xyz"))
    assert status == 401
    assert body["code"] == "unauthenticated"


def test_make_dir_creates_parents_and_reports_existing(rpc: Connect, tree: Path) -> None:
    target = tree / "x" / "y" / "z"
    status, body = call(rpc, "MakeDir", {"path": str(target)})
    assert status == 200
    assert body["entry"]["type"] == "FILE_TYPE_DIRECTORY"
    assert target.is_dir()
    status, body = call(rpc, "MakeDir", {"path": str(target)})
    assert (status, body["code"]) == (409, "already_exists")
    status, body = call(rpc, "MakeDir", {"path": str(tree / "a.txt")})
    assert (status, body["code"]) == (400, "invalid_argument")


def test_make_dir_as_user_is_owned_by_user_or_denied(rpc: Connect, tree: Path) -> None:
    status, body = call(rpc, "MakeDir", {"path": str(tree / "by-nobody")}, NOBODY)
    assert (status, body["code"]) == (403, "permission_denied")
    open_dir = tree / "open"
    open_dir.mkdir(mode=0o777)
    open_dir.chmod(0o777)
    status, body = call(rpc, "MakeDir", {"path": str(open_dir / "n1" / "n2")}, NOBODY)
    assert status == 200, body
    assert body["entry"]["owner"] == "nobody"
    assert (open_dir / "n1").stat().st_uid == 65534
    assert (open_dir / "n1" / "n2").stat().st_uid == 65534


def test_move_renames_and_creates_destination_parents(rpc: Connect, tree: Path) -> None:
    status, body = call(rpc, "Move", {"source": str(tree / "a.txt"), "destination": str(tree / "new" / "moved.txt")})
    assert status == 200
    assert body["entry"]["path"] == str(tree / "new" / "moved.txt")
    assert body["entry"]["name"] == "moved.txt"
    assert not (tree / "a.txt").exists()
    assert (tree / "new" / "moved.txt").read_text() == "hello"


def test_move_missing_source_is_not_found_and_denied_for_other_user(rpc: Connect, tree: Path) -> None:
    status, body = call(rpc, "Move", {"source": str(tree / "missing"), "destination": str(tree / "m2")})
    assert (status, body["code"]) == (404, "not_found")
    status, body = call(rpc, "Move", {"source": str(tree / "a.txt"), "destination": str(tree / "m3")}, NOBODY)
    assert (status, body["code"]) == (403, "permission_denied")
    assert (tree / "a.txt").exists()


def test_list_dir_depth_one_and_two(rpc: Connect, tree: Path) -> None:
    status, body = call(rpc, "ListDir", {"path": str(tree / "sub")})
    assert status == 200
    assert [(e["name"], e["type"]) for e in body["entries"]] == [
        ("b.txt", "FILE_TYPE_FILE"),
        ("deep", "FILE_TYPE_DIRECTORY"),
    ]
    status, body = call(rpc, "ListDir", {"path": str(tree / "sub"), "depth": 2})
    assert [e["path"] for e in body["entries"]] == [
        str(tree / "sub" / "b.txt"),
        str(tree / "sub" / "deep"),
        str(tree / "sub" / "deep" / "c.txt"),
    ]


def test_list_dir_errors(rpc: Connect, tree: Path) -> None:
    status, body = call(rpc, "ListDir", {"path": str(tree / "a.txt")})
    assert (status, body["code"]) == (400, "invalid_argument")
    assert "not a directory" in body["message"]
    status, body = call(rpc, "ListDir", {"path": str(tree / "missing")})
    assert (status, body["code"]) == (404, "not_found")
    status, body = call(rpc, "ListDir", {"path": str(tree / "private")}, NOBODY)
    assert (status, body["code"]) == (403, "permission_denied")


def test_remove_file_tree_and_missing(rpc: Connect, tree: Path) -> None:
    assert call(rpc, "Remove", {"path": str(tree / "link")})[0] == 200
    assert (tree / "a.txt").exists(), "removing a symlink must not remove its target"
    assert call(rpc, "Remove", {"path": str(tree / "sub")})[0] == 200
    assert not (tree / "sub").exists()
    status, body = call(rpc, "Remove", {"path": str(tree / "sub")})
    assert (status, body["code"]) == (404, "not_found")
    status, body = call(rpc, "Remove", {"path": str(tree / "a.txt")}, NOBODY)
    assert (status, body["code"]) == (403, "permission_denied")


def _events(rpc: Connect, watcher_id: str, want: int, headers: dict[str, str] = ROOT) -> list[dict[str, Any]]:
    """Poll GetWatcherEvents until at least `want` events arrived (bounded)."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(events) < want and time.monotonic() < deadline:
        status, body = call(rpc, "GetWatcherEvents", {"watcherId": watcher_id}, headers)
        assert status == 200, body
        events.extend(body.get("events", []))
    return events


def test_polling_watcher_reports_create_chmod_write_remove(rpc: Connect, tree: Path) -> None:
    status, body = call(rpc, "CreateWatcher", {"path": str(tree / "sub"), "includeEntry": True})
    assert status == 200, body
    watcher = body["watcherId"]
    (tree / "sub" / "new.txt").write_text("data")
    first = _events(rpc, watcher, 2)
    assert [(e["name"], e["type"]) for e in first] == [
        ("new.txt", "EVENT_TYPE_CREATE"),
        ("new.txt", "EVENT_TYPE_WRITE"),
    ]
    assert first[0]["entry"]["name"] == "new.txt"
    assert first[1]["entry"]["size"] == "4"
    os.chmod(tree / "sub" / "new.txt", 0o600)
    (tree / "sub" / "new.txt").unlink()
    kinds = [(e["name"], e["type"]) for e in _events(rpc, watcher, 2)]
    assert kinds == [("new.txt", "EVENT_TYPE_CHMOD"), ("new.txt", "EVENT_TYPE_REMOVE")]
    # not recursive: changes in sub/deep are not reported
    (tree / "sub" / "deep" / "c.txt").write_text("changed")
    assert call(rpc, "GetWatcherEvents", {"watcherId": watcher})[1].get("events", []) == []
    assert call(rpc, "RemoveWatcher", {"watcherId": watcher})[0] == 200
    status, body = call(rpc, "GetWatcherEvents", {"watcherId": watcher})
    assert (status, body["code"]) == (404, "not_found")


def test_recursive_watcher_follows_new_directories(rpc: Connect, tree: Path) -> None:
    _status, body = call(rpc, "CreateWatcher", {"path": str(tree), "recursive": True})
    watcher = body["watcherId"]
    assert call(rpc, "MakeDir", {"path": str(tree / "fresh" / "inner")})[0] == 200
    # MakeDir finished, so the watcher already watches fresh/inner (watchers settle before each operation)
    assert call(rpc, "Stat", {"path": str(tree)})[0] == 200
    (tree / "fresh" / "inner" / "f.txt").write_text("x")
    (tree / "sub" / "deep" / "c.txt").write_text("changed")
    events = _events(rpc, watcher, 4)
    names = {(e["name"], e["type"]) for e in events}
    assert ("fresh", "EVENT_TYPE_CREATE") in names
    assert ("fresh/inner/f.txt", "EVENT_TYPE_WRITE") in names
    assert ("sub/deep/c.txt", "EVENT_TYPE_WRITE") in names
    call(rpc, "RemoveWatcher", {"watcherId": watcher})


def test_recursive_watcher_follows_renamed_directories(rpc: Connect, tree: Path) -> None:
    watcher = call(rpc, "CreateWatcher", {"path": str(tree), "recursive": True})[1]["watcherId"]
    assert call(rpc, "Move", {"source": str(tree / "sub"), "destination": str(tree / "renamed")})[0] == 200
    assert call(rpc, "Stat", {"path": str(tree / "renamed")})[0] == 200  # settles the watcher
    (tree / "renamed" / "deep" / "after.txt").write_text("a")
    events = _events(rpc, watcher, 4)
    kinds = [(e["name"], e["type"]) for e in events]
    assert ("sub", "EVENT_TYPE_RENAME") in kinds
    assert ("renamed", "EVENT_TYPE_CREATE") in kinds
    assert ("renamed/deep/after.txt", "EVENT_TYPE_WRITE") in kinds
    call(rpc, "RemoveWatcher", {"watcherId": watcher})


def test_watcher_errors(rpc: Connect, tree: Path) -> None:
    status, body = call(rpc, "CreateWatcher", {"path": str(tree / "missing")})
    assert (status, body["code"]) == (404, "not_found")
    status, body = call(rpc, "CreateWatcher", {"path": str(tree / "a.txt")})
    assert (status, body["code"]) == (400, "invalid_argument")
    status, body = call(rpc, "CreateWatcher", {"path": str(tree / "private")}, NOBODY)
    assert (status, body["code"]) == (403, "permission_denied")
    status, body = call(rpc, "RemoveWatcher", {"watcherId": "nope"})
    assert (status, body["code"]) == (404, "not_found")
    # another user's watcher is invisible
    watcher = call(rpc, "CreateWatcher", {"path": str(tree)})[1]["watcherId"]
    assert call(rpc, "GetWatcherEvents", {"watcherId": watcher}, NOBODY)[0] == 404
    call(rpc, "RemoveWatcher", {"watcherId": watcher})


def test_watch_dir_stream_starts_then_streams_events(rpc: Connect, tree: Path) -> None:
    with rpc.open_stream(FS + "WatchDir", {"path": str(tree), "recursive": True}, ROOT) as stream:
        flags, first = stream.next()
        assert flags == 0
        assert first == {"start": {}}
        (tree / "sub" / "streamed.txt").write_text("s")
        seen: list[tuple[str, str]] = []
        while ("sub/streamed.txt", "EVENT_TYPE_WRITE") not in seen:
            flags, msg = stream.next()
            assert flags == 0
            if "filesystem" in msg:
                seen.append((msg["filesystem"]["name"], msg["filesystem"]["type"]))
        assert seen[0] == ("sub/streamed.txt", "EVENT_TYPE_CREATE")


def test_watch_dir_stream_error_for_missing_directory(rpc: Connect, tree: Path) -> None:
    messages = rpc.stream(FS + "WatchDir", {"path": str(tree / "missing")}, ROOT)
    assert messages[-1][0] == "end"
    assert messages[-1][1]["error"]["code"] == "not_found"


def _inotify_fds(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
        except FileNotFoundError:
            continue  # closed while listing
    return count


def _wait_inotify_fds(pid: int, expected: int) -> int:
    deadline = time.monotonic() + 10
    while (count := _inotify_fds(pid)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def test_watchers_release_their_inotify_descriptors(envd_factory: Callable[..., EnvdProcess], tree: Path) -> None:
    envd = envd_factory()
    pid = envd.proc.pid
    client = Connect(envd.url)
    try:
        assert _inotify_fds(pid) == 0
        watcher = call(client, "CreateWatcher", {"path": str(tree), "recursive": True})[1]["watcherId"]
        assert _inotify_fds(pid) == 1
        assert call(client, "RemoveWatcher", {"watcherId": watcher})[0] == 200
        assert _inotify_fds(pid) == 0
        with client.open_stream(FS + "WatchDir", {"path": str(tree)}, ROOT) as stream:
            assert stream.next()[1] == {"start": {}}
            assert _inotify_fds(pid) == 1
        # the client went away mid-stream: envd notices the disconnect and closes the stream's watcher
        assert _wait_inotify_fds(pid, 0) == 0
    finally:
        client.close()
