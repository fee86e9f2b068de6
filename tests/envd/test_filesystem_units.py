"""In-process checks of the pieces under the Filesystem service: per-thread credentials, mode strings, watchers."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from wrenn.envd._filesystem import FsError, FsErrorKind, UserFs, go_mode_string, stat_entry
from wrenn.envd._users import lookup
from wrenn.envd._watch import EventKind, Watchers

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching filesystem credentials needs root")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (stat.S_IFREG | 0o644, "-rw-r--r--"),
        (stat.S_IFDIR | 0o755, "drwxr-xr-x"),
        (stat.S_IFDIR | stat.S_ISVTX | 0o777, "dtrwxrwxrwx"),
        (stat.S_IFLNK | 0o777, "Lrwxrwxrwx"),
        (stat.S_IFREG | stat.S_ISUID | 0o755, "urwxr-xr-x"),
        (stat.S_IFREG | stat.S_ISGID | 0o2755 & 0o777, "grwxr-xr-x"),
        (stat.S_IFCHR | 0o666, "Dcrw-rw-rw-"),
        (stat.S_IFBLK | 0o660, "Drw-rw----"),
        (stat.S_IFIFO | 0o600, "prw-------"),
        (stat.S_IFSOCK | 0o777, "Srwxrwxrwx"),
        (stat.S_IFREG, "----------"),
    ],
)
def test_go_mode_string(mode: int, expected: str) -> None:
    assert go_mode_string(mode) == expected


@pytest.fixture
def private_file() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="envd-creds-", dir="/tmp"))
    directory.chmod(0o755)
    path = directory / "root-only"
    path.write_text("secret")
    path.chmod(0o600)
    yield path
    shutil.rmtree(directory)


@pytest.fixture
async def userfs() -> AsyncIterator[UserFs]:
    fs = UserFs(workers=2)
    yield fs
    await asyncio.get_running_loop().run_in_executor(None, fs.close)


def _read(path: Path) -> str:
    return path.read_text()


@needs_root
async def test_worker_acts_as_user_and_restores(userfs: UserFs, private_file: Path) -> None:
    nobody, root = lookup("nobody"), lookup("root")
    groups_before = os.getgroups()
    with pytest.raises(PermissionError):
        await userfs.run(nobody, _read, private_file)
    # the same workers act as root again right after, and the event loop's thread never changed identity
    assert await userfs.run(root, _read, private_file) == "secret"
    assert _read(private_file) == "secret"
    assert os.getgroups() == groups_before


@needs_root
async def test_other_threads_keep_their_rights_while_a_worker_acts_as_user(userfs: UserFs, private_file: Path) -> None:
    nobody = lookup("nobody")
    inside = threading.Event()
    release = threading.Event()

    def hold_as_nobody() -> bool:
        inside.set()
        release.wait(10)
        try:
            private_file.read_text()
        except PermissionError:
            return True
        return False

    job = asyncio.ensure_future(userfs.run(nobody, hold_as_nobody))
    assert await asyncio.get_running_loop().run_in_executor(None, inside.wait, 10)
    # while the worker is `nobody`, this (root) thread can still read the file
    assert _read(private_file) == "secret"
    release.set()
    assert await job is True


@needs_root
async def test_many_interleaved_identities_never_leak(userfs: UserFs, private_file: Path) -> None:
    nobody, root = lookup("nobody"), lookup("root")

    def probe() -> bool:
        try:
            private_file.read_text()
        except PermissionError:
            return False
        return True

    users = [nobody, root] * 40
    results = await asyncio.gather(*(userfs.run(u, probe) for u in users))
    assert results == [u is root for u in users]


def test_switching_is_refused_outside_workers() -> None:
    fs = UserFs(workers=1)
    try:
        with pytest.raises(RuntimeError), fs.acting_as(lookup("root")):
            pass
    finally:
        fs.close()


def test_stat_entry_errors(tmp_path: Path) -> None:
    with pytest.raises(FsError) as info:
        stat_entry(str(tmp_path / "missing"))
    assert info.value.kind is FsErrorKind.NOT_FOUND


async def test_watchers_settle_and_idle_expiry(userfs: UserFs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    me = lookup("root") if os.geteuid() == 0 else lookup(os.environ.get("USER", "root"))
    watchers = Watchers(userfs)
    try:
        watcher = await watchers.open(
            str(tmp_path), me, recursive=False, include_entry=False, allow_network_mounts=False
        )
        watcher_id = watchers.keep(watcher)
        (tmp_path / "f").write_text("x")
        await watchers.settle()  # processed now, without waiting for the event loop to notice the fd
        events = await watchers.get(watcher_id, me).take()
        assert [(e.name, e.kind) for e in events] == [("f", EventKind.CREATE), ("f", EventKind.WRITE)]

        monkeypatch.setattr("wrenn.envd._watch.IDLE_WATCHER_SECONDS", -1.0)
        other = await watchers.open(str(tmp_path), me, recursive=False, include_entry=False, allow_network_mounts=False)
        watchers.keep(other)
        with pytest.raises(FsError):
            watchers.get(watcher_id, me)  # dropped as idle when `other` was opened
    finally:
        watchers.close()
