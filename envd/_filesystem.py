"""The filesystem as the request's user: identities, entries, operations and the ``filesystem.Filesystem`` service.

envd runs as root, but every filesystem operation a client asks for is done with the rights of the Linux user
the request names (``Authorization: Basic`` for RPC, ``username`` for ``/files``). Root never does a user's
operation with root's rights: operations run on :class:`UserFs`'s own worker threads, and each call first switches
that thread's filesystem credentials (fsuid, fsgid and supplementary groups, via raw per-thread syscalls) to the
user's, so the kernel itself checks permissions and new files and directories belong to the user. The process's
real and effective ids never change, so other threads (the event loop, process spawning) are unaffected.

Errors::

    FsError (kind: FsErrorKind)    raised by every operation; OSError is translated here, once
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import errno
import functools
import grp
import os
import platform
import posixpath
import pwd
import shutil
import stat
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import _proto
from ._connect import Code, ConnectError, Rpc, RpcContext
from ._http import Router
from ._paths import PathError, resolve
from ._state import State
from ._users import User

T = TypeVar("T")

METADATA_XATTR_PREFIX = "user.e2b."


class FsErrorKind(enum.Enum):
    """What went wrong, in the vocabulary both Connect codes and HTTP statuses are chosen from."""

    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    INVALID_ARGUMENT = "invalid_argument"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    INTERNAL = "internal"


class FsError(Exception):
    """A filesystem operation failed; ``kind`` says how, the message says where."""

    def __init__(self, kind: FsErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


_ERRNO_KINDS = {
    errno.ENOENT: FsErrorKind.NOT_FOUND,
    errno.EEXIST: FsErrorKind.ALREADY_EXISTS,
    errno.ENOTEMPTY: FsErrorKind.FAILED_PRECONDITION,
    errno.EACCES: FsErrorKind.PERMISSION_DENIED,
    errno.EPERM: FsErrorKind.PERMISSION_DENIED,
    errno.EROFS: FsErrorKind.PERMISSION_DENIED,
    errno.ENOSPC: FsErrorKind.RESOURCE_EXHAUSTED,
    errno.EDQUOT: FsErrorKind.RESOURCE_EXHAUSTED,
    errno.EISDIR: FsErrorKind.INVALID_ARGUMENT,
    errno.ENOTDIR: FsErrorKind.INVALID_ARGUMENT,
    errno.EINVAL: FsErrorKind.INVALID_ARGUMENT,
    errno.ENAMETOOLONG: FsErrorKind.INVALID_ARGUMENT,
    errno.ELOOP: FsErrorKind.FAILED_PRECONDITION,
    errno.EXDEV: FsErrorKind.FAILED_PRECONDITION,
}


def translate(exc: OSError, what: str) -> FsError:
    """Map an ``OSError`` to an :class:`FsError` whose message names the operation and path."""
    kind = _ERRNO_KINDS.get(exc.errno or 0, FsErrorKind.INTERNAL)
    reason = {
        FsErrorKind.NOT_FOUND: "no such file or directory",
        FsErrorKind.PERMISSION_DENIED: "permission denied",
        FsErrorKind.RESOURCE_EXHAUSTED: "not enough disk space",
    }.get(kind, exc.strerror or str(exc))
    if exc.errno == errno.EISDIR:
        reason = "path is a directory"
    elif exc.errno == errno.ENOTDIR:
        reason = "not a directory"
    return FsError(kind, f"{what}: {reason}")


# --- identities ---------------------------------------------------------------------------------------------------


_SYSCALLS = {
    # (setgroups, setfsuid, setfsgid): the plain syscalls act on the calling thread only, unlike glibc's
    # setgroups() wrapper which broadcasts to every thread of the process.
    "x86_64": (116, 122, 123),
    "aarch64": (159, 151, 152),
}


class _ThreadCredentials:
    """Per-thread filesystem credential switching through raw syscalls (Linux only)."""

    def __init__(self) -> None:
        numbers = _SYSCALLS.get(platform.machine())
        if numbers is None:
            raise RuntimeError(f"no syscall numbers for {platform.machine()}")
        self._setgroups, self._setfsuid, self._setfsgid = numbers
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self._own = (os.geteuid(), os.getegid(), tuple(os.getgroups()))

    def _call(self, number: int, *args: Any) -> int:
        result = int(self._syscall(ctypes.c_long(number), *args))
        if result < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return result

    def assume(self, uid: int, gid: int, groups: tuple[int, ...]) -> None:
        array = (ctypes.c_uint * max(len(groups), 1))(*groups)
        self._call(self._setgroups, ctypes.c_size_t(len(groups)), array)
        self._call(self._setfsgid, ctypes.c_uint(gid))
        self._call(self._setfsuid, ctypes.c_uint(uid))
        # setfsuid/setfsgid report failure only by returning the old id: read back with an invalid id (-1).
        if self._call(self._setfsuid, ctypes.c_uint(0xFFFFFFFF)) != uid or (
            self._call(self._setfsgid, ctypes.c_uint(0xFFFFFFFF)) != gid
        ):
            raise PermissionError(errno.EPERM, "could not switch filesystem credentials")

    def restore(self) -> None:
        self.assume(*self._own)


class UserFs:
    """Runs blocking filesystem calls on worker threads that act with a given user's filesystem credentials.

    When envd itself is not root (tests, a developer's machine) it can only act as itself; asking for another
    user is a permission error rather than a silent escalation or downgrade.
    """

    def __init__(self, *, workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="envd-fs")
        self._is_root = os.geteuid() == 0
        self._creds = _ThreadCredentials() if self._is_root else None
        self._closed = False

    async def run(self, user: User, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` as ``user`` on a worker thread and return its result."""
        if self._closed:
            raise RuntimeError("UserFs is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(self.call, user, fn, *args))

    def call(self, user: User, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` as ``user`` on the *current* thread (which must be one of this object's workers)."""
        with self.acting_as(user):
            return fn(*args)

    @contextlib.contextmanager
    def acting_as(self, user: User) -> Iterator[None]:
        if not threading.current_thread().name.startswith("envd-fs"):
            raise RuntimeError("filesystem credentials may only be switched on UserFs worker threads")
        if self._creds is None:
            if user.uid != os.geteuid():
                raise FsError(
                    FsErrorKind.PERMISSION_DENIED, f"envd is not running as root and cannot act as user {user.name!r}"
                )
            yield
            return
        try:
            self._creds.assume(user.uid, user.gid, user.groups)
            yield
        finally:
            self._creds.restore()

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)


# --- entries ------------------------------------------------------------------------------------------------------


class FileKind(enum.IntEnum):
    """``filesystem.FileType`` numbers."""

    UNSPECIFIED = 0
    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3


@dataclass(frozen=True)
class Entry:
    """One ``EntryInfo``: what Stat, ListDir, MakeDir, Move and watch events report about a path."""

    name: str
    kind: FileKind
    path: str
    size: int = 0
    mode: int = 0
    permissions: str = ""
    owner: str = ""
    group: str = ""
    modified_ns: int = 0
    symlink_target: str | None = None
    is_symlink: bool = False
    metadata: dict[str, str] = field(default_factory=dict)


_GO_MODE_LETTERS = "dalTLDpSugct?"


def go_mode_string(mode: int) -> str:
    """Format ``st_mode`` the way Go's ``FileMode.String()`` does (``-rw-r--r--``, ``drwxr-xr-x``, ``Lrwxrwxrwx``)."""
    flags = {
        "d": stat.S_ISDIR(mode),
        "L": stat.S_ISLNK(mode),
        "D": stat.S_ISBLK(mode) or stat.S_ISCHR(mode),
        "p": stat.S_ISFIFO(mode),
        "S": stat.S_ISSOCK(mode),
        "u": bool(mode & stat.S_ISUID),
        "g": bool(mode & stat.S_ISGID),
        "c": stat.S_ISCHR(mode),
        "t": bool(mode & stat.S_ISVTX),
    }
    prefix = "".join(letter for letter in _GO_MODE_LETTERS if flags.get(letter))
    perms = "".join(ch if mode & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))
    return (prefix or "-") + perms


def _kind_of(mode: int) -> FileKind:
    if stat.S_ISREG(mode):
        return FileKind.FILE
    if stat.S_ISDIR(mode):
        return FileKind.DIRECTORY
    if stat.S_ISLNK(mode):
        return FileKind.SYMLINK
    return FileKind.UNSPECIFIED


_NAME_CACHE_LIMIT = 1024


class _Names:
    """uid/gid -> name lookups, caching only hits: a user added later (``useradd`` in the sandbox) shows up."""

    def __init__(self, lookup: Callable[[int], str]) -> None:
        self._lookup = lookup
        self._cache: dict[int, str] = {}

    def __call__(self, ident: int) -> str:
        name = self._cache.get(ident)
        if name is not None:
            return name
        try:
            name = self._lookup(ident)
        except KeyError:
            return str(ident)
        if len(self._cache) >= _NAME_CACHE_LIMIT:
            self._cache.clear()
        self._cache[ident] = name
        return name


_user_name = _Names(lambda uid: pwd.getpwuid(uid).pw_name)
_group_name = _Names(lambda gid: grp.getgrgid(gid).gr_name)


def read_metadata(path: str) -> dict[str, str]:
    """The ``user.e2b.*`` extended attributes of ``path`` (following symlinks), prefix stripped."""
    try:
        names = os.listxattr(path)
    except OSError:
        return {}
    metadata: dict[str, str] = {}
    for name in names:
        if not name.startswith(METADATA_XATTR_PREFIX):
            continue
        try:
            value = os.getxattr(path, name)
        except OSError:
            continue
        metadata[name[len(METADATA_XATTR_PREFIX) :]] = value.decode("utf-8", "replace")
    return metadata


def write_metadata(path: str, metadata: dict[str, str]) -> None:
    """Replace the ``user.e2b.*`` attributes of ``path`` with ``metadata`` (keys lowercased)."""
    wanted = {key.lower(): value for key, value in metadata.items()}
    if not wanted:
        try:
            names = os.listxattr(path)
        except OSError:
            return  # nothing to clear where the filesystem keeps no xattrs
        if not any(name.startswith(METADATA_XATTR_PREFIX) for name in names):
            return
    try:
        for name in os.listxattr(path):
            if name.startswith(METADATA_XATTR_PREFIX) and name[len(METADATA_XATTR_PREFIX) :] not in wanted:
                os.removexattr(path, name)
        for key, value in wanted.items():
            os.setxattr(path, METADATA_XATTR_PREFIX + key, value.encode("utf-8"))
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            raise FsError(FsErrorKind.FAILED_PRECONDITION, f"{path}: filesystem does not support metadata") from exc
        raise translate(exc, f"setting metadata on {path}") from exc


def entry_from_stat(path: str, st: os.stat_result, *, follow: bool = True) -> Entry:
    """Build an :class:`Entry` from an ``lstat`` result; symlinks report their target's type (E2B's semantics)."""
    mode = st.st_mode
    kind = _kind_of(mode)
    perm = stat.S_IMODE(mode) & 0o777
    target: str | None = None
    is_link = stat.S_ISLNK(mode)
    metadata: dict[str, str] = {}
    if is_link and follow:
        target = os.path.realpath(path)
        try:
            target_st = os.stat(path)
        except OSError:
            kind = FileKind.SYMLINK
            perm = 0
        else:
            kind = _kind_of(target_st.st_mode)
            perm = stat.S_IMODE(target_st.st_mode) & 0o777
            metadata = read_metadata(path)
    elif not is_link:
        metadata = read_metadata(path)
    return Entry(
        name=posixpath.basename(path) or "/",
        kind=kind,
        path=path,
        size=st.st_size,
        mode=perm,
        permissions=go_mode_string(mode),
        owner=_user_name(st.st_uid),
        group=_group_name(st.st_gid),
        modified_ns=st.st_mtime_ns,
        symlink_target=target,
        is_symlink=is_link,
        metadata=metadata,
    )


# --- operations (blocking; run them through UserFs) -----------------------------------------------------------------


def stat_entry(path: str) -> Entry:
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise translate(exc, f"stat {path}") from exc
    return entry_from_stat(path, st)


def make_dir(path: str) -> Entry:
    """Create ``path`` and missing parents; ``ALREADY_EXISTS`` if it is a directory, ``INVALID_ARGUMENT`` if not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise translate(exc, f"stat {path}") from exc
    else:
        if stat.S_ISDIR(st.st_mode):
            raise FsError(FsErrorKind.ALREADY_EXISTS, f"directory already exists: {path}")
        raise FsError(FsErrorKind.INVALID_ARGUMENT, f"path already exists but is not a directory: {path}")
    try:
        os.makedirs(path, mode=0o755, exist_ok=False)
    except FileExistsError as exc:
        raise FsError(FsErrorKind.ALREADY_EXISTS, f"directory already exists: {path}") from exc
    except OSError as exc:
        raise translate(exc, f"creating directory {path}") from exc
    return stat_entry(path)


def ensure_parent(path: str) -> None:
    """Create the missing parent directories of ``path`` (as the current thread's user)."""
    parent = posixpath.dirname(path)
    if not parent or os.path.isdir(parent):
        return
    try:
        os.makedirs(parent, mode=0o755, exist_ok=True)
    except FileExistsError as exc:
        raise FsError(FsErrorKind.INVALID_ARGUMENT, f"{parent}: not a directory") from exc
    except OSError as exc:
        raise translate(exc, f"creating directory {parent}") from exc


def move(source: str, destination: str) -> Entry:
    """Rename ``source`` to ``destination``, creating the destination's parents; copies across filesystems."""
    try:
        os.lstat(source)
    except OSError as exc:
        raise translate(exc, f"stat {source}") from exc
    ensure_parent(destination)
    try:
        os.rename(source, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise translate(exc, f"moving {source} to {destination}") from exc
        try:
            shutil.move(source, destination)
        except OSError as exc2:
            raise translate(exc2, f"moving {source} to {destination}") from exc2
    return stat_entry(destination)


def list_dir(path: str, depth: int) -> list[Entry]:
    """Entries under ``path`` down to ``depth`` levels (0 means 1), depth-first in name order, not into symlinks."""
    depth = max(depth, 1)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise translate(exc, f"listing {path}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise FsError(FsErrorKind.INVALID_ARGUMENT, f"path is not a directory: {path}")
    entries: list[Entry] = []
    _walk(path, depth, entries, top=True)
    return entries


def _walk(directory: str, depth: int, out: list[Entry], *, top: bool) -> None:
    try:
        with os.scandir(directory) as it:
            children = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        if top:
            raise translate(exc, f"listing {directory}") from exc
        return  # an unreadable subdirectory is listed but not descended into, like `find` does
    for child in children:
        try:
            st = child.stat(follow_symlinks=False)
        except OSError:
            continue  # removed while listing
        out.append(entry_from_stat(child.path, st))
        if depth > 1 and stat.S_ISDIR(st.st_mode):
            _walk(child.path, depth - 1, out, top=False)


def remove(path: str) -> None:
    """Remove a file, a symlink (not its target) or a whole directory tree."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise translate(exc, f"removing {path}") from exc
    try:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError as exc:
        raise translate(exc, f"removing {path}") from exc


# --- the filesystem.Filesystem service ------------------------------------------------------------------------------

_CODES = {kind: Code(kind.value) for kind in FsErrorKind}


def to_connect(error: FsError) -> ConnectError:
    return ConnectError(_CODES[error.kind], error.message)


def entry_message(entry: Entry) -> Any:
    """An :class:`Entry` as a ``filesystem.EntryInfo`` message."""
    msg: Any = _proto.filesystem.EntryInfo(
        name=entry.name,
        type=int(entry.kind),
        path=entry.path,
        size=entry.size,
        mode=entry.mode,
        permissions=entry.permissions,
        owner=entry.owner,
        group=entry.group,
    )
    msg.modified_time.FromNanoseconds(entry.modified_ns)
    if entry.symlink_target is not None:
        msg.symlink_target = entry.symlink_target
    if entry.is_symlink and "is_symlink" in msg.DESCRIPTOR.fields_by_name:
        msg.is_symlink = True  # newer e2b SDKs (EntryInfo field 12) show the link itself with this
    for key, value in entry.metadata.items():
        msg.metadata[key] = value
    return msg


class FilesystemService:
    """State shared by the Filesystem RPCs and ``/files``: the credential-switching workers and the watchers."""

    def __init__(self, state: State) -> None:
        from ._watch import Watchers

        self.state = state
        self.userfs = UserFs()
        self.watchers = Watchers(self.userfs)

    def resolve(self, path: str, user: User) -> str:
        try:
            return resolve(path, home=user.home, workdir=self.state.default_workdir)
        except PathError as exc:
            raise FsError(FsErrorKind.INVALID_ARGUMENT, str(exc)) from exc

    async def run(self, user: User, fn: Callable[..., T], *args: Any) -> T:
        """Settle the watchers (see ``_watch``), then run ``fn`` as ``user``."""
        await self.watchers.settle()
        return await self.userfs.run(user, fn, *args)

    def register(self, rpc: Rpc) -> None:
        service = "filesystem.Filesystem"
        for method, handler in (
            ("Stat", self._stat),
            ("MakeDir", self._make_dir),
            ("Move", self._move),
            ("ListDir", self._list_dir),
            ("Remove", self._remove),
            ("CreateWatcher", self._create_watcher),
            ("GetWatcherEvents", self._get_watcher_events),
            ("RemoveWatcher", self._remove_watcher),
        ):
            rpc.unary(service, method, _translated(handler))
        rpc.server_stream(service, "WatchDir", self._watch_dir, own_deadline=True)

    async def _stat(self, msg: Any, ctx: RpcContext) -> Any:
        entry = await self.run(ctx.user, stat_entry, self.resolve(msg.path, ctx.user))
        return _proto.filesystem.StatResponse(entry=entry_message(entry))

    async def _make_dir(self, msg: Any, ctx: RpcContext) -> Any:
        entry = await self.run(ctx.user, make_dir, self.resolve(msg.path, ctx.user))
        return _proto.filesystem.MakeDirResponse(entry=entry_message(entry))

    async def _move(self, msg: Any, ctx: RpcContext) -> Any:
        source, destination = self.resolve(msg.source, ctx.user), self.resolve(msg.destination, ctx.user)
        entry = await self.run(ctx.user, move, source, destination)
        return _proto.filesystem.MoveResponse(entry=entry_message(entry))

    async def _list_dir(self, msg: Any, ctx: RpcContext) -> Any:
        entries = await self.run(ctx.user, list_dir, self.resolve(msg.path, ctx.user), int(msg.depth))
        return _proto.filesystem.ListDirResponse(entries=[entry_message(e) for e in entries])

    async def _remove(self, msg: Any, ctx: RpcContext) -> Any:
        await self.run(ctx.user, remove, self.resolve(msg.path, ctx.user))
        return _proto.filesystem.RemoveResponse()

    async def _create_watcher(self, msg: Any, ctx: RpcContext) -> Any:
        await self.watchers.settle()
        watcher = await self.watchers.open(
            self.resolve(msg.path, ctx.user),
            ctx.user,
            recursive=msg.recursive,
            include_entry=msg.include_entry,
            allow_network_mounts=msg.allow_network_mounts,
        )
        return _proto.filesystem.CreateWatcherResponse(watcher_id=self.watchers.keep(watcher))

    async def _get_watcher_events(self, msg: Any, ctx: RpcContext) -> Any:
        events = await self.watchers.get(msg.watcher_id, ctx.user).take()
        return _proto.filesystem.GetWatcherEventsResponse(events=[_event_message(e) for e in events])

    async def _remove_watcher(self, msg: Any, ctx: RpcContext) -> Any:
        self.watchers.remove(msg.watcher_id, ctx.user)
        return _proto.filesystem.RemoveWatcherResponse()

    async def _watch_dir(self, msg: Any, ctx: RpcContext) -> AsyncIterator[Any]:
        try:
            await self.watchers.settle()
            watcher = await self.watchers.open(
                self.resolve(msg.path, ctx.user),
                ctx.user,
                recursive=msg.recursive,
                include_entry=msg.include_entry,
                allow_network_mounts=msg.allow_network_mounts,
            )
        except FsError as exc:
            raise to_connect(exc) from exc
        self.watchers.add_streaming(watcher)
        try:
            start: Any = _proto.filesystem.WatchDirResponse()
            start.start.SetInParent()
            yield start
            async for event in watcher.stream():
                yield _proto.filesystem.WatchDirResponse(filesystem=_event_message(event))
        finally:
            self.watchers.discard_streaming(watcher)

    async def aclose(self) -> None:
        self.watchers.close()
        await asyncio.get_running_loop().run_in_executor(None, self.userfs.close)


def _event_message(event: Any) -> Any:
    msg: Any = _proto.filesystem.FilesystemEvent(name=event.name, type=int(event.kind))
    if event.entry is not None:
        msg.entry.CopyFrom(entry_message(event.entry))
    return msg


def _translated(handler: Callable[[Any, RpcContext], Awaitable[Any]]) -> Callable[[Any, RpcContext], Awaitable[Any]]:
    async def call(msg: Any, ctx: RpcContext) -> Any:
        try:
            return await handler(msg, ctx)
        except FsError as exc:
            raise to_connect(exc) from exc

    return call


def register(rpc: Rpc, state: State, router: Router | None = None) -> FilesystemService:
    """Register ``filesystem.Filesystem`` on ``rpc`` and, given the router, ``GET|POST /files`` (they share state)."""
    service = FilesystemService(state)
    service.register(rpc)
    if router is not None:
        from ._files import register_routes

        register_routes(router, service)
    return service
