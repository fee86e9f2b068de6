"""The per-user spawner (envd/_spawner.py, envd/_spawners.py): a process run as another user than envd's is started
by that user's spawner (so CPython can ``vfork``), with the user's ids and groups; when the spawner is killed the
running process's end is still reported and the next start gets a new spawner; a spawn the spawner cannot take (an
environment too large for one message) is forked by envd as before. Needs root (envd switching users)."""

from __future__ import annotations

import os
import pwd
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.envd.conftest import Connect, basic, end_event, output

START = "process.Process/Start"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="envd must be root to run processes as another user")


def _sh(script: str, **extra: Any) -> dict[str, Any]:
    return {"process": {"cmd": "/bin/sh", "args": ["-c", script], **extra}}


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _wait_file(path: Path, limit: float = 15) -> str:
    deadline = time.monotonic() + limit
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)
    return path.read_text().strip()


@pytest.fixture
def marker() -> Iterator[Path]:
    """A file the test user may write (pytest's tmp_path is not reachable by it)."""
    with tempfile.TemporaryDirectory(prefix="envd-spawner-") as tmp:
        os.chmod(tmp, 0o777)
        path = Path(tmp) / "ppid"
        path.touch()
        os.chmod(path, 0o666)
        yield path


def test_another_users_process_comes_from_that_users_spawner(rpc: Connect, os_user: str, marker: Path) -> None:
    entry = pwd.getpwnam(os_user)
    messages = rpc.stream(START, _sh(f"echo $PPID > {marker}; id -u; id -G"), headers=basic(os_user))
    uid, groups = output(messages).decode().split("\n")[:2]
    assert int(uid) == entry.pw_uid
    assert sorted(int(g) for g in groups.split()) == sorted(os.getgrouplist(os_user, entry.pw_gid))
    spawner = int(marker.read_text())
    cmdline = Path(f"/proc/{spawner}/cmdline").read_bytes().split(b"\0")
    assert any(part.endswith(b"_spawner.py") for part in cmdline), cmdline
    assert _status(spawner)["Uid"].split()[0] == str(entry.pw_uid), "the spawner runs as the user itself"
    # root's processes are still envd's own children
    root_out = output(rpc.stream(START, _sh("ps -o comm= -p $PPID || cat /proc/$PPID/comm"), headers=basic("root")))
    assert b"python" in root_out


def test_a_killed_spawner_still_ends_its_process_and_is_replaced(rpc: Connect, os_user: str, marker: Path) -> None:
    result: dict[str, Any] = {}

    def long_running() -> None:
        result["messages"] = rpc.stream(START, _sh(f"echo $PPID > {marker}; sleep 1; exit 7"), headers=basic(os_user))

    worker = threading.Thread(target=long_running)
    worker.start()
    spawner = int(_wait_file(marker))
    os.kill(spawner, signal.SIGKILL)  # the user's `pkill python3` would do this
    worker.join(30)
    assert not worker.is_alive()
    end = end_event(result["messages"])
    assert end["exited"] is True
    assert end["exitCode"] == 255, "the real status went to init with the spawner gone: reported as lost (255)"
    # the next process as that user gets a new spawner and a real exit status
    again = rpc.stream(START, _sh("echo $PPID; exit 3"), headers=basic(os_user))
    assert end_event(again)["exitCode"] == 3
    assert int(output(again)) != spawner


def test_an_environment_too_big_for_the_spawner_is_forked_by_envd(rpc: Connect, os_user: str) -> None:
    big = {f"BIG{n}": "x" * 100_000 for n in range(3)}  # 300 kB: more than one socket message, less than ARG_MAX
    messages = rpc.stream(START, _sh("id -un; echo ${#BIG0} ${#BIG2}", envs=big), headers=basic(os_user))
    assert output(messages) == f"{os_user}\n100000 100000\n".encode()
    assert end_event(messages) == {"exited": True, "status": "exit status 0"}
