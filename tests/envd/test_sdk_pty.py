"""The official e2b SDK (debug mode) driving a real envd: sandbox.pty end to end."""

from __future__ import annotations

from typing import Any

import pytest
from e2b import CommandExitException, PtySize

pytestmark = pytest.mark.sdk


def test_pty_input_resize_and_exit(e2b_sandbox: Any) -> None:
    handle = e2b_sandbox.pty.create(PtySize(rows=24, cols=80))
    e2b_sandbox.pty.resize(handle.pid, PtySize(rows=33, cols=101))
    e2b_sandbox.pty.send_stdin(handle.pid, b"stty size; tty; id -un; exit\n")
    chunks: list[bytes] = []
    result = handle.wait(on_pty=chunks.append)
    screen = b"".join(chunks)
    assert result.exit_code == 0
    assert b"33 101" in screen
    assert b"/dev/pts/" in screen
    assert b"\r\nuser\r\n" in screen


def test_pty_kill(e2b_sandbox: Any) -> None:
    handle = e2b_sandbox.pty.create(PtySize(rows=24, cols=80))
    assert e2b_sandbox.pty.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as info:
        handle.wait()
    assert info.value.exit_code == -1
    assert e2b_sandbox.pty.kill(handle.pid) is False


def test_pty_env_and_cwd(e2b_sandbox: Any) -> None:
    handle = e2b_sandbox.pty.create(PtySize(rows=24, cols=80), envs={"GREETING": "hi-pty"}, cwd="/tmp")
    e2b_sandbox.pty.send_stdin(handle.pid, b'echo "$GREETING:$(pwd)"; exit\n')
    chunks: list[bytes] = []
    handle.wait(on_pty=chunks.append)
    assert b"hi-pty:/tmp" in b"".join(chunks)
