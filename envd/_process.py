"""process.Process: starting, attaching to, feeding and signalling processes, which outlive their clients.

Lifecycle of a process (`ProcState`): RUNNING from spawn until the child is reaped and its output drained, then
EXITED, kept for `Settings.exited_retention` seconds so a late Connect still gets its output and end event, then
forgotten. Output is read by event-loop callbacks whether or not anyone listens, into a bounded ring of recent
output that a re-attaching Connect replays; live listeners (Start's and Connect's streams) each get a queue. A
listener that falls more than `MAX_LISTENER_BACKLOG` bytes behind is cut off with `resource_exhausted` (it can
re-attach), so a slow client never stalls the process or grows envd's memory without bound.

Each process leads its own session and process group (`setsid`), so signals reach the whole tree it started, and a
PTY process gets the PTY as its controlling terminal. The exit is noticed through a pidfd (no thread, no SIGCHLD
handler); output still arriving from the group after the leader's exit is collected for `DRAIN_GRACE` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import errno
import logging
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf.message import Message

from . import _pty
from ._connect import Code, ConnectError, Rpc, RpcContext
from ._proto import process as pb
from ._spawners import RemoteChild, Spawners, SpawnerUnavailable
from ._state import Settings, State
from ._users import UnknownUser, User, child_env, default_user_name, lookup

_log = logging.getLogger("envd.process")

SERVICE = "process.Process"
MAX_LISTENER_BACKLOG = 32 * 1024 * 1024
DRAIN_GRACE = 0.2
READ_SIZE = 64 * 1024

_Child = subprocess.Popen[bytes] | RemoteChild
"""A started process: envd's own child, or a per-user spawner's (`wrenn.envd._spawners`)."""

_SIGNALS = {
    pb.enum_value("Signal", "SIGNAL_SIGKILL"): signal.SIGKILL,
    pb.enum_value("Signal", "SIGNAL_SIGTERM"): signal.SIGTERM,
}


class ProcState(enum.Enum):
    RUNNING = "running"
    EXITED = "exited"


class _Listener:
    """One stream's view of a process: a queue of ProcessEvent messages, ended by the end event or a cut-off."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message | ConnectError | None] = asyncio.Queue()
        self.backlog = 0
        self.cut = False

    def push(self, event: Message, size: int = 0) -> None:
        if self.cut:
            return
        self.backlog += size
        if self.backlog > MAX_LISTENER_BACKLOG:
            self.cut = True
            self.queue.put_nowait(
                ConnectError(Code.RESOURCE_EXHAUSTED, "client fell too far behind the output; re-attach with Connect")
            )
            return
        self.queue.put_nowait(event)

    def close(self) -> None:
        self.queue.put_nowait(None)

    async def events(self) -> AsyncIterator[Message]:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            if isinstance(item, ConnectError):
                raise item
            data = item.data  # type: ignore[attr-defined]
            self.backlog -= len(data.stdout) + len(data.stderr) + len(data.pty)
            yield item


class _Process:
    """One child process with its pipes or PTY, output ring, listeners and end event."""

    def __init__(self, popen: _Child, config: Message, tag: str | None, settings: Settings) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.config = config
        self.tag = tag
        self.state = ProcState.RUNNING
        self.stdin_fd: int | None = None
        self.pty_fd: int | None = None
        self.end: Message | None = None
        self.listeners: set[_Listener] = set()
        self._ring: collections.deque[Message] = collections.deque()
        self._ring_bytes = 0
        self._ring_limit = settings.output_buffer_bytes
        self._readers: dict[int, str] = {}  # fd -> output kind (stdout, stderr, pty)
        self._exit_status: int | None = None
        self._pidfd: int | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._write_lock = asyncio.Lock()
        self.done = asyncio.Event()
        self.on_finished: Callable[[_Process], object] | None = None

    # -- output ------------------------------------------------------------------------------------------------
    def watch(self, loop: asyncio.AbstractEventLoop, outputs: dict[int, str]) -> None:
        for fd, kind in outputs.items():
            os.set_blocking(fd, False)
            self._readers[fd] = kind
            loop.add_reader(fd, self._on_readable, loop, fd)
        if isinstance(self.popen, RemoteChild):  # its spawner reports the exit (it is the parent, not envd)
            self.popen.on_exit = lambda: self._on_exit(loop)
            if self.popen.returncode is not None:
                self._on_exit(loop)
            return
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):  # no pidfd (old kernel): a thread waits instead
            loop.run_in_executor(None, self._wait_blocking, loop)
        else:
            loop.add_reader(self._pidfd, self._on_exit, loop)

    def _on_readable(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        kind = self._readers.get(fd)
        if kind is None:
            return
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: every PTY slave closed
            if exc.errno != errno.EIO:
                _log.warning("pid %d: reading %s failed: %s", self.pid, kind, exc)
            data = b""
        if not data:
            self._close_reader(loop, fd)
            self._maybe_finish(loop)
            return
        self._emit_output(kind, data)

    def _emit_output(self, kind: str, data: bytes) -> None:
        event = pb.ProcessEvent(data=pb.ProcessEvent.DataEvent(**{kind: data}))
        self._ring.append(event)
        self._ring_bytes += len(data)
        while self._ring_bytes > self._ring_limit and len(self._ring) > 1:
            old = self._ring.popleft()
            d = old.data  # type: ignore[attr-defined]
            self._ring_bytes -= len(d.stdout) + len(d.stderr) + len(d.pty)
        for listener in self.listeners:
            listener.push(event, len(data))

    def _close_reader(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        if self._readers.pop(fd, None) is None:
            return
        loop.remove_reader(fd)
        if fd == self.pty_fd:
            return  # the PTY master also carries input; closed in _finish
        os.close(fd)

    # -- exit --------------------------------------------------------------------------------------------------
    def _wait_blocking(self, loop: asyncio.AbstractEventLoop) -> None:
        assert isinstance(self.popen, subprocess.Popen)
        self.popen.wait()
        loop.call_soon_threadsafe(self._on_exit, loop)

    def _on_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.popen.poll() is None:
            return
        if self._pidfd is not None:
            loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self._exit_status = self.popen.returncode
        if self._readers:
            # Descendants may still hold the output open; collect what arrives for a moment, then stop listening.
            self._timers.append(loop.call_later(DRAIN_GRACE, self._force_finish, loop))
        self._maybe_finish(loop)

    def _force_finish(self, loop: asyncio.AbstractEventLoop) -> None:
        for fd in list(self._readers):
            with contextlib.suppress(OSError):
                for _ in range(16):  # bounded: a descendant may write forever (`yes &`)
                    data = os.read(fd, READ_SIZE)
                    if not data:
                        break
                    self._emit_output(self._readers[fd], data)
            self._close_reader(loop, fd)
        self._maybe_finish(loop)

    def _maybe_finish(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._exit_status is None or self._readers or self.state is ProcState.EXITED:
            return
        self.state = ProcState.EXITED
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._close_input()
        if self.pty_fd is not None:
            os.close(self.pty_fd)
            self.pty_fd = None
        self.end = pb.ProcessEvent(end=_end_event(self._exit_status))
        for listener in self.listeners:
            listener.push(self.end)
            listener.close()
        self.done.set()
        if self.on_finished is not None:
            self.on_finished(self)

    def _close_input(self) -> None:
        if self.stdin_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.stdin_fd)
            self.stdin_fd = None

    # -- listeners ---------------------------------------------------------------------------------------------
    def subscribe(self, *, replay: bool) -> _Listener:
        listener = _Listener()
        if replay:
            for event in self._ring:
                d = event.data  # type: ignore[attr-defined]
                listener.push(event, len(d.stdout) + len(d.stderr) + len(d.pty))
        if self.end is not None:
            listener.push(self.end)
            listener.close()
        else:
            self.listeners.add(listener)
        return listener

    # -- input and control -------------------------------------------------------------------------------------
    async def write_input(self, data: bytes, *, pty: bool) -> None:
        if self.state is not ProcState.RUNNING:
            raise ConnectError(Code.NOT_FOUND, f"process with pid {self.pid} has exited")
        fd = self.pty_fd if pty else self.stdin_fd
        if fd is None:
            what = "a PTY" if pty else "an open stdin"
            raise ConnectError(Code.FAILED_PRECONDITION, f"process {self.pid} has no {what}")
        async with self._write_lock:
            await _write_all(fd, data)

    def close_stdin(self) -> None:
        if self.state is not ProcState.RUNNING:
            raise ConnectError(Code.NOT_FOUND, f"process with pid {self.pid} has exited")
        if self.pty_fd is not None:
            os.write(self.pty_fd, b"\x04")  # end-of-file for the terminal's reader
            return
        self._close_input()

    def signal(self, signum: int) -> None:
        if self.state is not ProcState.RUNNING or self._exit_status is not None:
            raise ConnectError(Code.NOT_FOUND, f"process with pid {self.pid} has exited")
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def resize(self, cols: int, rows: int) -> None:
        if self.pty_fd is None:
            raise ConnectError(Code.FAILED_PRECONDITION, f"process {self.pid} has no PTY")
        _pty.resize(self.pty_fd, cols, rows)

    def kill_after(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        """Connect-Timeout-Ms on Start: the process may live this long."""

        def expire() -> None:
            if self.state is ProcState.RUNNING and self._exit_status is None:
                _log.info("pid %d: lifetime of %.1f s elapsed; killing it", self.pid, seconds)
                self.signal(signal.SIGKILL)

        self._timers.append(loop.call_later(seconds, expire))

    def info(self) -> Message:
        info = pb.ProcessInfo(pid=self.pid)
        info.config.CopyFrom(self.config)
        if self.tag is not None:
            info.tag = self.tag
        return _msg(info)


async def _write_all(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_writer(fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_writer(fd)
            continue
        except OSError as exc:
            raise ConnectError(Code.FAILED_PRECONDITION, f"cannot write input: {exc.strerror}") from exc
        view = view[written:]


def _end_event(status: int) -> Message:
    end = pb.ProcessEvent.EndEvent()
    if status >= 0:
        end.exit_code = status
        end.exited = True
        end.status = f"exit status {status}"
        if status != 0:
            end.error = end.status
    else:
        end.exit_code = -1
        end.exited = False
        try:
            name = (signal.strsignal(-status) or f"signal {-status}").lower()
        except ValueError:
            name = f"signal {-status}"
        end.status = f"signal: {name}"
        end.error = end.status
    return _msg(end)


class ProcessManager:
    """Owns every process envd started; closing it kills those still running."""

    def __init__(self, state: State, settings: Settings) -> None:
        self._state = state
        self._settings = settings
        self._procs: dict[int, _Process] = {}
        self._spawners = Spawners()

    def prestart(self) -> None:
        """Start the default user's spawner now (envd runs as root and the user is another): its interpreter's
        start then happens before the first command instead of inside it — in a guest, before the snapshot."""
        if os.geteuid() != 0:
            return
        try:
            user = lookup(default_user_name(self._state.default_user))
        except UnknownUser:
            return
        if user.uid != 0:
            self._spawners.prestart(user)

    # -- lookup ------------------------------------------------------------------------------------------------
    def find(self, selector: Message) -> _Process:
        which = selector.WhichOneof("selector")
        if which == "pid":
            proc = self._procs.get(selector.pid)  # type: ignore[attr-defined]
            if proc is None:
                raise ConnectError(Code.NOT_FOUND, f"process with pid {selector.pid} not found")  # type: ignore[attr-defined]
            return proc
        if which == "tag":
            tag = selector.tag  # type: ignore[attr-defined]
            matches = sorted(
                (p for p in self._procs.values() if p.tag == tag),
                key=lambda p: (p.state is ProcState.RUNNING, p.pid),
            )
            if not matches:
                raise ConnectError(Code.NOT_FOUND, f"process with tag {tag!r} not found")
            return matches[-1]
        raise ConnectError(Code.INVALID_ARGUMENT, "process selector needs a pid or a tag")

    def running(self) -> list[_Process]:
        return [p for p in self._procs.values() if p.state is ProcState.RUNNING]

    # -- start -------------------------------------------------------------------------------------------------
    def start(self, request: Any, ctx: RpcContext) -> _Process:
        config = request.process
        if not config.cmd:
            raise ConnectError(Code.INVALID_ARGUMENT, "process.cmd is required")
        user = ctx.user
        if os.geteuid() != 0 and user.uid != os.geteuid():
            raise ConnectError(Code.PERMISSION_DENIED, f"envd is not root and cannot run processes as {user.name!r}")
        cwd = self._cwd(config.cwd if config.HasField("cwd") else None, user)
        env = child_env(user, self._state.env_vars, dict(config.envs))
        use_pty = request.HasField("pty")
        want_stdin = request.stdin if request.HasField("stdin") else True
        loop = asyncio.get_running_loop()
        popen, outputs, stdin_fd, pty_fd = _spawn(
            [config.cmd, *config.args],
            cwd,
            env,
            user,
            use_pty,
            request.pty.size if use_pty else None,
            want_stdin,
            self._spawners,
        )
        proc = _Process(popen, config, request.tag if request.HasField("tag") else None, self._settings)
        proc.stdin_fd = stdin_fd
        proc.pty_fd = pty_fd
        self._procs[proc.pid] = proc
        proc.watch(loop, outputs)
        if ctx.deadline is not None:
            proc.kill_after(loop, max(0.0, ctx.deadline - time.monotonic()))
        proc.on_finished = lambda p: loop.call_later(self._settings.exited_retention, self._forget, p)
        _log.info("started pid %d as %s: %s", proc.pid, user.name, config.cmd)
        return proc

    def _cwd(self, requested: str | None, user: User) -> str:
        if requested:
            path = os.path.expanduser(requested) if requested.startswith("~") else requested
            if requested == "~" or requested.startswith("~/"):
                path = user.home + requested[1:]
            if not os.path.isabs(path):
                path = os.path.join(user.home, path)
            if not os.path.isdir(path):
                raise ConnectError(Code.INVALID_ARGUMENT, f"cwd '{requested}' does not exist or is not a directory")
            return path
        for candidate in (self._state.default_workdir, user.home):
            if candidate and os.path.isdir(candidate):
                return candidate
        return "/"

    def _forget(self, proc: _Process) -> None:
        if self._procs.get(proc.pid) is proc:
            del self._procs[proc.pid]

    async def aclose(self) -> None:
        for proc in self.running():
            with contextlib.suppress(ConnectError, OSError):
                proc.signal(signal.SIGKILL)
        waits = [asyncio.wait_for(p.done.wait(), 5) for p in self.running()]
        await asyncio.gather(*waits, return_exceptions=True)
        self._spawners.close()


def _spawn(
    argv: list[str],
    cwd: str,
    env: dict[str, str],
    user: User,
    use_pty: bool,
    size: Any,
    want_stdin: bool,
    spawners: Spawners,
) -> tuple[_Child, dict[int, str], int | None, int | None]:
    """Start the child; returns (child, output fds by kind, stdin write fd, PTY master).

    As envd's own user CPython spawns with ``vfork``. As another user a ``fork`` would be needed (setuid in the
    child), so a pipe-connected child goes through that user's spawner (`wrenn.envd._spawners`), which is that user
    already and uses ``vfork``; a PTY child (its controlling terminal needs code in the child) and any spawn a
    spawner cannot take are forked here."""
    as_other = os.geteuid() == 0 and user.uid != os.geteuid()
    ids: dict[str, Any] = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)} if as_other else {}
    to_close: list[int] = []
    try:
        if use_pty:
            master, slave = _pty.open_pty(size.cols or 80, size.rows or 24, user.uid)
            to_close.append(slave)
            try:
                popen = subprocess.Popen(
                    argv,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_pty.become_controlling_tty,
                    **ids,
                )
            except BaseException:
                os.close(master)
                raise
            return popen, {master: "pty"}, None, master
        out_r, out_w = os.pipe()
        to_close.append(out_w)
        err_r, err_w = os.pipe()
        to_close.append(err_w)
        in_r: int | None = None
        in_w: int | None = None
        if want_stdin:
            in_r, in_w = os.pipe()
            to_close.append(in_r)
        try:
            child: _Child | None = None
            if as_other:
                child = _via_spawner(spawners, user, argv, cwd, env, (in_r, out_w, err_w))
            if child is None:
                child = subprocess.Popen(
                    argv,
                    stdin=in_r if in_r is not None else subprocess.DEVNULL,
                    stdout=out_w,
                    stderr=err_w,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                    **ids,
                )
        except BaseException:
            for fd in (out_r, err_r, in_w):
                if fd is not None:
                    os.close(fd)
            raise
        if in_w is not None:
            os.set_blocking(in_w, False)
        return child, {out_r: "stdout", err_r: "stderr"}, in_w, None
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        raise ConnectError(Code.INVALID_ARGUMENT, f"cannot start {argv[0]!r}: {exc.strerror}") from exc
    except OSError as exc:
        raise ConnectError(Code.INTERNAL, f"cannot start {argv[0]!r}: {exc}") from exc
    finally:
        for fd in to_close:
            os.close(fd)


def _via_spawner(
    spawners: Spawners, user: User, argv: list[str], cwd: str, env: dict[str, str], fds: tuple[int | None, int, int]
) -> RemoteChild | None:
    """The child started by `user`'s spawner; None when the spawner cannot take it (the caller forks instead)."""
    stdin = fds[0] if fds[0] is not None else os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return spawners.spawn(user, argv, cwd, env, (stdin, fds[1], fds[2]))
    except SpawnerUnavailable as exc:
        _log.info("spawning as %s without its spawner: %s", user.name, exc)
        return None
    finally:
        if fds[0] is None:
            os.close(stdin)


def register(rpc: Rpc, state: State, settings: Settings) -> ProcessManager:
    """Install process.Process on `rpc`; the returned manager kills leftover processes on aclose()."""
    manager = ProcessManager(state, settings)

    async def start(request: Any, ctx: RpcContext) -> AsyncIterator[Message]:
        proc = manager.start(request, ctx)
        listener = proc.subscribe(replay=False)
        try:
            yield pb.StartResponse(event=pb.ProcessEvent(start=pb.ProcessEvent.StartEvent(pid=proc.pid)))
            async for event in listener.events():
                yield pb.StartResponse(event=event)
        finally:
            proc.listeners.discard(listener)

    async def connect(request: Any, ctx: RpcContext) -> AsyncIterator[Message]:
        proc = manager.find(request.process)
        listener = proc.subscribe(replay=True)
        try:
            yield pb.ConnectResponse(event=pb.ProcessEvent(start=pb.ProcessEvent.StartEvent(pid=proc.pid)))
            async for event in listener.events():
                yield pb.ConnectResponse(event=event)
        finally:
            proc.listeners.discard(listener)

    async def list_(request: Any, ctx: RpcContext) -> Message:
        return _msg(pb.ListResponse(processes=[p.info() for p in manager.running()]))

    async def send_input(request: Any, ctx: RpcContext) -> Message:
        proc = manager.find(request.process)
        await _send(proc, request.input)
        return _msg(pb.SendInputResponse())

    async def stream_input(requests: AsyncIterator[Any], ctx: RpcContext) -> Message:
        proc: _Process | None = None
        async for request in requests:
            which = request.WhichOneof("event")
            if which == "start":
                proc = manager.find(request.start.process)
            elif which == "data":
                if proc is None:
                    raise ConnectError(Code.FAILED_PRECONDITION, "the first StreamInput message must be start")
                await _send(proc, request.data.input)
        return _msg(pb.StreamInputResponse())

    async def send_signal(request: Any, ctx: RpcContext) -> Message:
        proc = manager.find(request.process)
        signum = _SIGNALS.get(request.signal)
        if signum is None:
            raise ConnectError(Code.INVALID_ARGUMENT, f"unsupported signal {pb.enum_name('Signal', request.signal)}")
        proc.signal(signum)
        return _msg(pb.SendSignalResponse())

    async def close_stdin(request: Any, ctx: RpcContext) -> Message:
        manager.find(request.process).close_stdin()
        return _msg(pb.CloseStdinResponse())

    async def update(request: Any, ctx: RpcContext) -> Message:
        proc = manager.find(request.process)
        if request.HasField("pty"):
            proc.resize(request.pty.size.cols, request.pty.size.rows)
        return _msg(pb.UpdateResponse())

    rpc.server_stream(SERVICE, "Start", start, own_deadline=True)
    rpc.server_stream(SERVICE, "Connect", connect)
    rpc.unary(SERVICE, "List", list_)
    rpc.unary(SERVICE, "SendInput", send_input)
    rpc.client_stream(SERVICE, "StreamInput", stream_input)
    rpc.unary(SERVICE, "SendSignal", send_signal)
    rpc.unary(SERVICE, "CloseStdin", close_stdin)
    rpc.unary(SERVICE, "Update", update)
    return manager


async def _send(proc: _Process, data: Any) -> None:
    which = data.WhichOneof("input")
    if which == "stdin":
        await proc.write_input(data.stdin, pty=False)
    elif which == "pty":
        await proc.write_input(data.pty, pty=True)


def _msg(message: Any) -> Message:
    """Type a message made from a run-time class (`_proto` classes are `Any` to mypy)."""
    assert isinstance(message, Message)
    return message
