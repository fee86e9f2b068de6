"""Host-process plumbing shared by the drivers: pidfiles, identity checks, exit waiting, signals.

Exit waiting uses pidfds, so it works the same for a VMM we spawned and for one adopted after an agent restart
(not our child). Children we spawned ourselves are also reaped here so none is left a zombie.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path

from wrenn.agent._netns import in_netns


def read_pidfile(path: Path) -> int | None:
    """The pid in `path`, or None when the file is missing or does not hold a number."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def cmdline(pid: int) -> list[str] | None:
    """The argv of `pid`, or None when the process is gone (a zombie has an empty cmdline: gone too)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def is_process_of(pid: int, marker: str) -> bool:
    """Whether `pid` is alive and one of its arguments contains `marker` (guards against reused pids)."""
    args = cmdline(pid)
    return args is not None and any(marker in arg for arg in args)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


async def wait_pid_exit(pid: int) -> None:
    """Return once process `pid` has exited (reaping it if it is our child)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited = loop.create_future()

    def on_readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    _reap(pid)


def send_signal(pid: int, sig: signal.Signals) -> None:
    """Signal `pid`; a process that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


async def kill_and_wait(pid: int, limit: float = 10.0) -> None:
    """SIGKILL `pid` and wait (bounded) until it is gone."""
    send_signal(pid, signal.SIGKILL)
    async with asyncio.timeout(limit):
        await wait_pid_exit(pid)


def remove_files(*paths: Path) -> None:
    """Unlink each path that exists."""
    for path in paths:
        path.unlink(missing_ok=True)


def tail(path: Path, limit: int = 2000) -> str:
    """The last `limit` characters of a log file, or '' when there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    return data[-limit:].decode(errors="replace").strip()


def spawn_detached(
    argv: list[str], stdout: Path | None = None, stderr: Path | None = None, *, fds: Mapping[int, int] | None = None
) -> int:
    """Start `argv` in its own session with stdin from /dev/null and return its pid. `fds` maps an fd number of the
    child to one of ours that it gets as that number (every other fd of ours is close-on-exec, PEP 446).

    posix_spawn rather than subprocess: the VMM must outlive this process (no Popen object to finalise, no
    process group to take down with us); `wait_pid_exit` reaps it while we are still its parent.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)
    ]
    for fd, path in ((1, stdout), (2, stderr)):
        if path is not None:
            actions.append((os.POSIX_SPAWN_OPEN, fd, str(path), flags, 0o640))
    for child_fd, own_fd in (fds or {}).items():
        actions.append((os.POSIX_SPAWN_DUP2, own_fd, child_fd))  # the copy a dup2 makes is inherited
    return os.posix_spawnp(argv[0], argv, dict(os.environ), file_actions=actions, setsid=True)


async def spawn_in_netns(
    netns: str | None,
    argv: list[str],
    stdout: Path | None = None,
    stderr: Path | None = None,
    *,
    fds: Mapping[int, int] | None = None,
) -> int:
    """`spawn_detached`, the child born inside network namespace `netns` (None: this process's).

    The spawn runs in a thread of its own that enters the namespace first (`wrenn.agent._netns`): a new process
    inherits the namespaces of the thread that made it, so no ``ip netns exec`` runs first (its exec, mount
    namespace and sysfs mount cost ~1.5 ms per spawn here). A thread of its own, not the shared pool, so that a
    thread that failed to leave the namespace ends instead of serving other work. Cancelled while the thread
    spawns, the child is killed once it exists."""
    loop = asyncio.get_running_loop()
    spawned: asyncio.Future[int] = loop.create_future()

    def settle(pid: int | None, error: BaseException | None) -> None:
        if spawned.cancelled():
            if pid is not None:
                send_signal(pid, signal.SIGKILL)
                _reap_later(pid)
        elif error is not None:
            spawned.set_exception(error)
        else:
            assert pid is not None
            spawned.set_result(pid)

    def spawn() -> None:
        pid: int | None = None
        error: BaseException | None = None
        try:
            if netns is None:
                pid = spawn_detached(argv, stdout, stderr, fds=fds)
            else:
                with in_netns(netns):
                    pid = spawn_detached(argv, stdout, stderr, fds=fds)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, pid, error)

    threading.Thread(target=spawn, name="wrenn-vmm-spawn", daemon=True).start()
    return await spawned


def _reap_later(pid: int) -> None:
    """Reap `pid` (our child, just killed) once it is gone, without waiting here."""
    task = asyncio.ensure_future(wait_pid_exit(pid))
    _background.add(task)
    task.add_done_callback(_background.discard)


_background: set[asyncio.Future[None]] = set()
