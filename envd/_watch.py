"""Directory watchers: inotify events turned into E2B filesystem events, for WatchDir and the polling watcher RPCs.

A :class:`DirWatcher` owns one inotify descriptor. Watches are added with the requesting user's filesystem
credentials (through :class:`UserFs`), so a user can only watch what they can read; entries attached to events are
stat'ed the same way. Recursive watchers add a watch for every directory that appears under the root and report
what was already inside it as ``CREATE`` events (it may have been filled before the watch existed).

Ordering guarantee: :meth:`Watchers.settle` reads and processes everything the kernel has queued for every
watcher. The filesystem service and ``/files`` call it before each operation, so an operation a client starts
after an earlier one finished never races the watcher's reaction to the earlier one (a directory created by
MakeDir is watched before the next upload into it begins).

Event names are paths relative to the watched directory (``sub/file.txt``), types follow E2B's envd (which uses
fsnotify): create/moved-to -> CREATE, modify -> WRITE, delete -> REMOVE, moved-from -> RENAME, attrib -> CHMOD.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import os
import posixpath
import secrets
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from . import _watch_inotify as ino
from ._filesystem import Entry, FsError, FsErrorKind, UserFs, entry_from_stat, translate
from ._users import User

MAX_EVENTS_PER_WATCHER = 10_000
MAX_WATCHERS = 100  # below the default fs.inotify.max_user_instances (128) of envd's uid
IDLE_WATCHER_SECONDS = 600.0  # a polling watcher nobody asked about for this long is dropped
_NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse", "fuseblk", "ceph", "9p", "afs"}


class EventKind(enum.IntEnum):
    """``filesystem.EventType`` numbers."""

    UNSPECIFIED = 0
    CREATE = 1
    WRITE = 2
    REMOVE = 3
    RENAME = 4
    CHMOD = 5


@dataclass(frozen=True)
class FsEvent:
    name: str
    kind: EventKind
    entry: Entry | None = None


def _kind_of(mask: int) -> EventKind:
    if mask & (ino.IN_CREATE | ino.IN_MOVED_TO):
        return EventKind.CREATE
    if mask & ino.IN_MODIFY:
        return EventKind.WRITE
    if mask & (ino.IN_DELETE | ino.IN_DELETE_SELF):
        return EventKind.REMOVE
    if mask & (ino.IN_MOVED_FROM | ino.IN_MOVE_SELF):
        return EventKind.RENAME
    if mask & ino.IN_ATTRIB:
        return EventKind.CHMOD
    return EventKind.UNSPECIFIED


def fs_type_of(path: str) -> str:
    """The filesystem type of the mount holding ``path`` (from /proc/self/mountinfo; "" when unknown)."""
    best, fstype = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
            for line in mounts:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                point = fields[4].replace("\\040", " ")
                if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                    best, fstype = point, right.split()[0]
    except OSError:
        return ""
    return fstype


def _is_network_fs(fstype: str) -> bool:
    return fstype in _NETWORK_FS or fstype.startswith("fuse.")


class DirWatcher:
    """Watches one directory tree for one user; events wait in a bounded buffer until taken."""

    def __init__(self, root: str, user: User, userfs: UserFs, *, recursive: bool, include_entry: bool) -> None:
        self.id = secrets.token_hex(8)
        self.root = root
        self.user = user
        self._userfs = userfs
        self._recursive = recursive
        self._include_entry = include_entry
        self._inotify: ino.Inotify | None = None
        self._paths: dict[int, str] = {}  # wd -> directory path relative to root ("" = root)
        self._events: collections.deque[FsEvent] = collections.deque()
        self._dropped = 0
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closed = False

    async def start(self, *, allow_network_mounts: bool) -> None:
        """Validate the root and add the initial watches as the user; raises :class:`FsError`."""
        try:
            st = await self._userfs.run(self.user, os.stat, self.root)
        except OSError as exc:
            raise translate(exc, f"watching {self.root}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise FsError(FsErrorKind.INVALID_ARGUMENT, f"path is not a directory: {self.root}")
        fstype = await self._userfs.run(self.user, lambda: fs_type_of(os.path.realpath(self.root)))
        if _is_network_fs(fstype) and not allow_network_mounts:
            raise FsError(
                FsErrorKind.FAILED_PRECONDITION,
                f"{self.root} is on a network filesystem ({fstype}); set allow_network_mounts to watch it",
            )
        try:
            self._inotify = ino.Inotify()
        except OSError as exc:  # EMFILE: inotify instances are limited per real uid (envd's, root's)
            raise FsError(FsErrorKind.RESOURCE_EXHAUSTED, f"cannot create a watcher: {exc.strerror}") from exc
        try:
            await self._userfs.run(self.user, self._add_tree, "", False)
        except OSError as exc:
            self.close()
            raise translate(exc, f"watching {self.root}") from exc
        except BaseException:
            self.close()
            raise
        asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._on_readable)

    def _add_tree(self, rel: str, report: bool) -> list[FsEvent]:
        """Watch ``rel`` (and, when recursive, every directory below it). Runs on a UserFs thread.

        With ``report``, entries found inside are returned as CREATE events: they appeared before the watch.
        """
        inotify = self._inotify
        if inotify is None:  # closed meanwhile
            return []
        found: list[FsEvent] = []
        pending = [rel]
        while pending:
            current = pending.pop()
            path = posixpath.join(self.root, current) if current else self.root
            try:
                wd = inotify.add_watch(path)
            except OSError:
                if not current:
                    raise
                continue  # vanished or unreadable subdirectory: nothing to watch there
            self._paths[wd] = current
            if not self._recursive and current:
                continue
            if not self._recursive and not report:
                continue
            try:
                with os.scandir(path) as it:
                    children = list(it)
            except OSError:
                continue
            for child in children:
                child_rel = posixpath.join(current, child.name) if current else child.name
                if report:
                    found.append(FsEvent(child_rel, EventKind.CREATE, self._entry(child_rel)))
                if self._recursive and child.is_dir(follow_symlinks=False):
                    pending.append(child_rel)
        return found

    def _entry(self, rel: str) -> Entry | None:
        if not self._include_entry:
            return None
        path = posixpath.join(self.root, rel) if rel else self.root
        try:
            return entry_from_stat(path, os.lstat(path))
        except OSError:
            return None

    def _on_readable(self) -> None:
        self._ready.set()

    async def settle(self) -> None:
        """Read everything the kernel has queued and turn it into events (including new watches)."""
        async with self._lock:
            if self._inotify is None:
                return
            raw = self._inotify.read()
            self._ready.clear()
            if raw:
                events = await self._userfs.run(self.user, self._translate, raw)
                if not self._closed:
                    self._push(events)

    def _translate(self, raw: list[ino.RawEvent]) -> list[FsEvent]:
        """Raw inotify events -> FsEvents. Runs on a UserFs thread (adds watches, stats entries as the user)."""
        events: list[FsEvent] = []
        for event in raw:
            if event.mask & ino.IN_Q_OVERFLOW:
                self._dropped += 1
                continue
            base = self._paths.get(event.wd)
            if base is None:
                continue
            if event.mask & ino.IN_IGNORED:
                del self._paths[event.wd]
                continue
            is_self = bool(event.mask & (ino.IN_DELETE_SELF | ino.IN_MOVE_SELF))
            if is_self and base:
                continue  # the parent's watch already reported it under its name
            rel = posixpath.join(base, event.name) if event.name else base
            kind = _kind_of(event.mask)
            if kind is EventKind.UNSPECIFIED:
                continue
            with_entry = kind not in (EventKind.REMOVE, EventKind.RENAME)
            events.append(FsEvent(rel or ".", kind, self._entry(rel) if with_entry else None))
            if self._recursive and kind is EventKind.CREATE and event.mask & ino.IN_ISDIR:
                events.extend(self._add_tree(rel, True))
        return events

    def _push(self, events: list[FsEvent]) -> None:
        for event in events:
            if len(self._events) >= MAX_EVENTS_PER_WATCHER:
                self._dropped += 1
                continue
            self._events.append(event)

    async def take(self) -> list[FsEvent]:
        """All events since the last take (settling first)."""
        await self.settle()
        events = list(self._events)
        self._events.clear()
        return events

    async def stream(self) -> AsyncIterator[FsEvent]:
        """Events as they happen, until the watcher is closed."""
        while not self._closed:
            await self.settle()
            while self._events:
                yield self._events.popleft()
            await self._ready.wait()  # close() sets it too, ending the loop

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ready.set()  # wake a streaming reader so it sees the close
        if self._inotify is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing is registered there
                asyncio.get_running_loop().remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None


class Watchers:
    """The live watchers of one envd: the polling ones by id, plus the streaming ones for :meth:`settle`."""

    def __init__(self, userfs: UserFs) -> None:
        self._userfs = userfs
        self._by_id: dict[str, DirWatcher] = {}
        self._used: dict[str, float] = {}  # watcher id -> time.monotonic() of its last use
        self._streaming: set[DirWatcher] = set()

    async def open(
        self, root: str, user: User, *, recursive: bool, include_entry: bool, allow_network_mounts: bool
    ) -> DirWatcher:
        self._drop_idle()
        if len(self._by_id) + len(self._streaming) >= MAX_WATCHERS:
            raise FsError(FsErrorKind.RESOURCE_EXHAUSTED, f"too many watchers (limit {MAX_WATCHERS})")
        watcher = DirWatcher(root, user, self._userfs, recursive=recursive, include_entry=include_entry)
        await watcher.start(allow_network_mounts=allow_network_mounts)
        return watcher

    def keep(self, watcher: DirWatcher) -> str:
        self._by_id[watcher.id] = watcher
        self._used[watcher.id] = time.monotonic()
        return watcher.id

    def get(self, watcher_id: str, user: User) -> DirWatcher:
        watcher = self._by_id.get(watcher_id)
        if watcher is None or watcher.user.uid != user.uid:
            raise FsError(FsErrorKind.NOT_FOUND, f"watcher {watcher_id!r} not found")
        self._used[watcher_id] = time.monotonic()
        return watcher

    def _drop_idle(self) -> None:
        """Polling watchers have no connection whose end would free them: drop the ones clients forgot."""
        cutoff = time.monotonic() - IDLE_WATCHER_SECONDS
        for watcher_id in [w for w, used in self._used.items() if used < cutoff]:
            self._used.pop(watcher_id, None)
            watcher = self._by_id.pop(watcher_id, None)
            if watcher is not None:
                watcher.close()

    def remove(self, watcher_id: str, user: User) -> None:
        watcher = self.get(watcher_id, user)
        del self._by_id[watcher_id]
        self._used.pop(watcher_id, None)
        watcher.close()

    def add_streaming(self, watcher: DirWatcher) -> None:
        self._streaming.add(watcher)

    def discard_streaming(self, watcher: DirWatcher) -> None:
        self._streaming.discard(watcher)
        watcher.close()

    async def settle(self) -> None:
        """Bring every watcher up to date with what the kernel has queued (see the module docstring)."""
        for watcher in [*self._by_id.values(), *self._streaming]:
            await watcher.settle()

    def close(self) -> None:
        for watcher in [*self._by_id.values(), *self._streaming]:
            watcher.close()
        self._by_id.clear()
        self._used.clear()
        self._streaming.clear()
