"""A process spawner that already is the target user: envd's way to start a process as another user with ``vfork``.

CPython can only ``fork`` when it must change uid/gid/groups in the child (a ``vfork`` child sharing the parent's
memory must not run glibc's set*id), and a fork copies the page tables of envd's ~30 MiB: 1.5-4 ms here, and more
on a loaded host. This program runs as the user (envd starts one per user, as that user), so its children need no
identity change and ``subprocess`` spawns them with ``vfork``: ≈ 1 ms.

It is run as a script (``python3 -I -S _spawner.py REQ_FD EVENT_FD``), not imported: the standard library only, and
none of envd. Two ``SOCK_SEQPACKET`` sockets connect it to envd:

* requests (envd blocks on the answer): a JSON object ``{"argv", "cwd", "env"}`` with the child's stdin, stdout and
  stderr as three file descriptors (``SCM_RIGHTS``); the answer is ``{"pid": N}`` or
  ``{"errno": E, "strerror": "...", "exception": "FileNotFoundError"}`` when the spawn failed;
* events (read by envd's event loop): ``{"exit": PID, "returncode": RC}`` when a child ended (this process is its
  parent and reaps it, watching each child through a pidfd).

It exits when envd closes the request socket (envd ended). Its children lead their own sessions, as envd's do.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys

MAX_MESSAGE = 1024 * 1024


def _spawn(message: bytes, fds: list[int]) -> tuple[dict[str, object], subprocess.Popen[bytes] | None]:
    """Start one child; (answer, child) — child None when it could not be started."""
    if len(fds) != 3:
        return {"errno": 0, "strerror": f"expected 3 file descriptors, got {len(fds)}", "exception": "OSError"}, None
    request = json.loads(message)
    try:
        child = subprocess.Popen(
            request["argv"],
            stdin=fds[0],
            stdout=fds[1],
            stderr=fds[2],
            cwd=request["cwd"],
            env=request["env"],
            start_new_session=True,
        )
    except OSError as exc:
        answer = {"errno": exc.errno or 0, "strerror": exc.strerror or str(exc), "exception": type(exc).__name__}
        return answer, None
    return {"pid": child.pid}, child


def main(argv: list[str]) -> int:
    requests = socket.socket(fileno=int(argv[1]))
    events = socket.socket(fileno=int(argv[2]))
    selector = selectors.DefaultSelector()
    selector.register(requests, selectors.EVENT_READ)
    children: dict[int, subprocess.Popen[bytes]] = {}  # pidfd -> child
    while True:
        for key, _ in selector.select():
            if key.fileobj is requests:
                message, fds, _flags, _addr = socket.recv_fds(requests, MAX_MESSAGE, 3)
                if not message:
                    return 0  # envd is gone; the children live on (init reaps them)
                try:
                    answer, child = _spawn(message, fds)
                finally:
                    for fd in fds:
                        os.close(fd)
                if child is not None:
                    pidfd = os.pidfd_open(child.pid)
                    children[pidfd] = child
                    selector.register(pidfd, selectors.EVENT_READ)
                requests.sendall(json.dumps(answer).encode())
            else:
                pidfd = key.fd
                selector.unregister(pidfd)
                os.close(pidfd)
                child = children.pop(pidfd)
                returncode = child.wait()
                events.sendall(json.dumps({"exit": child.pid, "returncode": returncode}).encode())


if __name__ == "__main__":
    sys.exit(main(sys.argv))
