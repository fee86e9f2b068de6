"""envd's side of the per-user spawners (`_spawner.py`): one per user, started on first use as that user.

`Spawners.spawn(user, ...)` returns a `RemoteChild`, which offers the part of ``subprocess.Popen`` that the process
service uses (``pid``, ``poll()``, ``returncode``) plus ``on_exit``, called on the event loop when the spawner
reports the exit. The request is synchronous (the spawner answers within a millisecond or two; a ``fork`` from
envd blocks the loop as long); exits arrive on a second socket that the event loop reads.

When a spawner cannot be used — it cannot be started, its socket fails, a request does not fit in a message — the
call raises `SpawnerUnavailable` and the caller spawns the old way (``fork`` + setuid). When a spawner dies (the
user ran ``pkill python3``), its running children are orphaned: envd then watches each through a pidfd and, as the
exit status went to init, reports `LOST_STATUS` for it. The next spawn as that user starts a new spawner.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ._users import User

_log = logging.getLogger("envd.spawners")

SCRIPT = Path(__file__).with_name("_spawner.py")
ANSWER_TIMEOUT_S = 30.0
"""Bound on the spawner's answer (its own start, the first time, under TCG: a few hundred ms)."""
LOST_STATUS = 255
"""The exit status reported for a child whose spawner died before it (the real one went to init)."""
_ERRORS: dict[str, type[OSError]] = {
    "FileNotFoundError": FileNotFoundError,
    "PermissionError": PermissionError,
    "NotADirectoryError": NotADirectoryError,
}


class SpawnerUnavailable(Exception):
    """This spawn cannot go through a spawner; spawn it another way."""


class RemoteChild:
    """A process a spawner started: its pid, and its exit status once the spawner reported it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.on_exit: Callable[[], object] | None = None

    def poll(self) -> int | None:
        return self.returncode

    def _exited(self, returncode: int) -> None:
        if self.returncode is not None:
            return
        self.returncode = returncode
        if self.on_exit is not None:
            self.on_exit()


class _Spawner:
    def __init__(self, user: User, loop: asyncio.AbstractEventLoop) -> None:
        self.user = user
        self._loop = loop
        requests, their_requests = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        events, their_events = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = _start(user, their_requests.fileno(), their_events.fileno())
        except BaseException:
            for sock in (requests, their_requests, events, their_events):
                sock.close()
            raise
        their_requests.close()
        their_events.close()
        requests.settimeout(ANSWER_TIMEOUT_S)
        events.setblocking(False)
        self._requests = requests
        self._events = events
        self.children: dict[int, RemoteChild] = {}
        self.alive = True
        self.served = 0
        """Spawns answered; a spawner that died before its first one cannot run for this user (unreadable script)."""
        loop.add_reader(events.fileno(), self._on_event)

    def spawn(self, argv: list[str], cwd: str, env: dict[str, str], fds: tuple[int, int, int]) -> RemoteChild:
        message = json.dumps({"argv": argv, "cwd": cwd, "env": env}).encode()
        try:
            socket.send_fds(self._requests, [message], list(fds))
            answer = self._requests.recv(1 << 16)
        except OSError as exc:  # EMSGSIZE (a huge env: the spawner is fine), a dead or hung spawner
            if exc.errno != errno.EMSGSIZE:
                self._died(f"its socket failed: {exc!r}")
            raise SpawnerUnavailable(str(exc)) from exc
        if not answer:
            self._died("it closed its socket")
            raise SpawnerUnavailable("the spawner ended")
        self.served += 1
        try:
            reply = json.loads(answer)
            if "pid" not in reply:
                error = _ERRORS.get(str(reply.get("exception")), OSError)
                raise error(int(reply.get("errno", 0)), str(reply.get("strerror", "spawn failed")))
            pid = int(reply["pid"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._died(f"it sent a malformed answer {answer[:80]!r}")
            raise SpawnerUnavailable("malformed answer") from exc
        child = RemoteChild(pid)
        self.children[child.pid] = child
        return child

    def _on_event(self) -> None:
        problem = self._read_events()
        if problem is not None:
            self._died(problem)

    def _read_events(self) -> str | None:
        """Apply every exit report waiting on the event socket; what went wrong with the spawner, if anything."""
        while True:
            try:
                data = self._events.recv(1 << 16)
            except BlockingIOError:
                return None
            except OSError as exc:
                return f"its event socket failed: {exc}"
            if not data:
                return "it ended"
            try:
                event = json.loads(data)
                pid, returncode = int(event["exit"]), int(event["returncode"])
            except (ValueError, KeyError, TypeError):
                # it runs as the user, who may tamper with it: what it says can only concern that user's children
                return f"it sent a malformed event {data[:80]!r}"
            child = self.children.pop(pid, None)
            if child is not None:
                child._exited(returncode)

    def _died(self, why: str) -> None:
        if not self.alive:
            return
        self.alive = False
        self._read_events()  # exits it reported before it went keep their real status
        _log.warning("the process spawner of %s stopped (%s); %d children watched directly",
                     self.user.name, why, len(self.children))  # fmt: skip
        self._loop.remove_reader(self._events.fileno())
        self._close_sockets()
        with contextlib.suppress(OSError):
            self.process.kill()  # a hung one too: its answers can no longer be matched to requests
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)  # our child: reaped, not left a zombie
        for child in list(self.children.values()):
            _watch_orphan(self._loop, child)
        self.children.clear()

    def _close_sockets(self) -> None:
        for sock in (self._requests, self._events):
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        """End the spawner (it exits when its request socket closes); children already started live on."""
        if self.alive:
            self.alive = False
            self._loop.remove_reader(self._events.fileno())
            self._close_sockets()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=2)


def _start(user: User, requests_fd: int, events_fd: int) -> subprocess.Popen[bytes]:
    """The spawner process, as `user`: on envd's interpreter, or Debian's python3 when the user may not run that
    one (envd from a virtualenv under /root, as in development)."""
    candidates = list(dict.fromkeys([sys.executable, "/usr/bin/python3"]))
    for number, python in enumerate(candidates, 1):
        try:
            return subprocess.Popen(
                [python, "-I", "-S", str(SCRIPT), str(requests_fd), str(events_fd)],
                pass_fds=(requests_fd, events_fd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                cwd="/",
                env={"PATH": os.defpath, "LANG": "C.UTF-8"},
                user=user.uid,
                group=user.gid,
                extra_groups=list(user.groups),
                start_new_session=True,
            )
        except (PermissionError, FileNotFoundError):
            if number == len(candidates):
                raise
    raise AssertionError("unreachable")


def _watch_orphan(loop: asyncio.AbstractEventLoop, child: RemoteChild) -> None:
    """Its spawner is gone, and with it the exit status: notice the exit itself through a pidfd."""
    try:
        pidfd = os.pidfd_open(child.pid)
    except OSError:  # already gone
        child._exited(LOST_STATUS)
        return

    def exited() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        child._exited(LOST_STATUS)

    loop.add_reader(pidfd, exited)


class Spawners:
    """The spawners of this envd, one per uid."""

    def __init__(self) -> None:
        self._by_uid: dict[int, _Spawner] = {}
        self._broken: set[int] = set()

    def spawn(
        self, user: User, argv: list[str], cwd: str, env: dict[str, str], fds: tuple[int, int, int]
    ) -> RemoteChild:
        """Start `argv` as `user` through the user's spawner (started now if needed); `SpawnerUnavailable` when
        this must be done another way, the spawn's own `OSError` when the program could not be started."""
        return self._get(user).spawn(argv, cwd, env, fds)

    def prestart(self, user: User) -> None:
        """Start the user's spawner ahead of its first use (its interpreter start then overlaps other work)."""
        with contextlib.suppress(SpawnerUnavailable):
            self._get(user)

    def _get(self, user: User) -> _Spawner:
        if user.uid in self._broken:
            raise SpawnerUnavailable(f"no spawner can be started for {user.name}")
        spawner = self._by_uid.get(user.uid)
        if spawner is not None and spawner.alive and spawner.user == user:
            return spawner
        if spawner is not None:
            spawner.close()
            if spawner.served == 0:  # it never got as far as one answer: it cannot run for this user
                _log.warning("the process spawner of %s ended before its first answer; forking instead", user.name)
                self._broken.add(user.uid)
                raise SpawnerUnavailable(f"no spawner can run for {user.name}")
        try:
            spawner = _Spawner(user, asyncio.get_running_loop())
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _log.warning("cannot start a process spawner for %s: %s; forking instead", user.name, exc)
            self._broken.add(user.uid)
            raise SpawnerUnavailable(str(exc)) from exc
        self._by_uid[user.uid] = spawner
        return spawner

    def close(self) -> None:
        for spawner in self._by_uid.values():
            spawner.close()
        self._by_uid.clear()
