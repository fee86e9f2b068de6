"""The official e2b SDK (debug mode) driving a real envd: sandbox.commands end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest
from e2b import CommandExitException, InvalidArgumentException, NotFoundException, TimeoutException

pytestmark = pytest.mark.sdk


def test_run_returns_output_and_exit_code(e2b_sandbox: Any) -> None:
    result = e2b_sandbox.commands.run("echo out; echo err >&2")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 0)


def test_nonzero_exit_raises_command_exit(e2b_sandbox: Any) -> None:
    with pytest.raises(CommandExitException) as info:
        e2b_sandbox.commands.run("echo bad >&2; exit 7")
    assert info.value.exit_code == 7
    assert info.value.stderr == "bad\n"
    assert info.value.error == "exit status 7"


def test_default_user_home_and_env(e2b_sandbox: Any) -> None:
    result = e2b_sandbox.commands.run('id -un; pwd; echo "$HOME $FOO"', envs={"FOO": "bar"})
    assert result.stdout == "user\n/home/user\n/home/user bar\n"


def test_user_and_cwd(e2b_sandbox: Any) -> None:
    result = e2b_sandbox.commands.run("id -un; pwd", user="root", cwd="/tmp")
    assert result.stdout == "root\n/tmp\n"


def test_missing_cwd_is_invalid_argument(e2b_sandbox: Any) -> None:
    with pytest.raises(InvalidArgumentException):
        e2b_sandbox.commands.run("pwd", cwd="/definitely/not/here")


def test_background_and_wait(e2b_sandbox: Any) -> None:
    handle = e2b_sandbox.commands.run("sleep 0.3; echo done", background=True)
    assert handle.pid > 0
    result = handle.wait()
    assert result.stdout == "done\n"
    assert result.exit_code == 0


def test_stdin_send_and_close(e2b_sandbox: Any) -> None:
    handle = e2b_sandbox.commands.run("cat", background=True, stdin=True)
    e2b_sandbox.commands.send_stdin(handle.pid, "hello ")
    e2b_sandbox.commands.send_stdin(handle.pid, "world")
    e2b_sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "hello world"


def test_stream_input(e2b_sandbox: Any) -> None:
    handle = e2b_sandbox.commands.run("cat", background=True, stdin=True)
    e2b_sandbox.commands.stream_input(handle.pid, ["a", b"b", "c"])
    e2b_sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "abc"


def test_kill_and_list(e2b_sandbox: Any) -> None:
    handle = e2b_sandbox.commands.run("sleep 30", background=True)
    listed = {p.pid: p for p in e2b_sandbox.commands.list()}
    assert handle.pid in listed
    assert listed[handle.pid].cmd == "/bin/bash"
    assert listed[handle.pid].args == ["-l", "-c", "sleep 30"]
    assert e2b_sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as info:
        handle.wait()
    assert info.value.exit_code == -1
    assert handle.pid not in {p.pid for p in e2b_sandbox.commands.list()}
    assert e2b_sandbox.commands.kill(handle.pid) is False


def test_connect_unknown_pid_is_not_found(e2b_sandbox: Any) -> None:
    with pytest.raises(NotFoundException):
        e2b_sandbox.commands.connect(999999)


def test_connect_by_pid_after_first_client_went_away(e2b_sandbox: Any) -> None:
    # A separate Python process starts the command and exits: its connection to envd is gone for good.
    script = (
        "from e2b import Sandbox\n"
        "h = Sandbox.create().commands.run('echo first; sleep 1; echo second', background=True, timeout=0)\n"
        "print(h.pid)\n"
    )
    env = {**os.environ, "E2B_DEBUG": "true"}
    started = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, check=True, timeout=60)
    pid = int(started.stdout)
    assert pid in {p.pid for p in e2b_sandbox.commands.list()}
    result = e2b_sandbox.commands.connect(pid).wait()
    assert result.stdout == "first\nsecond\n"
    assert result.exit_code == 0


def test_timeout_kills_the_command(e2b_sandbox: Any) -> None:
    started = time.monotonic()
    with pytest.raises((TimeoutException, CommandExitException)):
        e2b_sandbox.commands.run("sleep 30", timeout=1)
    assert time.monotonic() - started < 15
    deadline = time.monotonic() + 10
    while any(p.args == ["-l", "-c", "sleep 30"] for p in e2b_sandbox.commands.list()):
        assert time.monotonic() < deadline, "the timed-out command is still running"
        time.sleep(0.05)


def test_is_running(e2b_sandbox: Any) -> None:
    assert e2b_sandbox.is_running() is True
