"""`spawn_in_netns`: the VMM's process is born inside the sandbox's namespace, with the fds it is handed, and the
agent's own threads stay where they were."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from wrenn.agent.vmm._process import spawn_in_netns, wait_pid_exit

pytestmark = pytest.mark.root


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"wrenn-tspawn-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


async def test_the_child_is_born_in_the_namespace_with_the_fds_it_is_given(netns: str, tmp_path: Path) -> None:
    ours = os.readlink("/proc/thread-self/ns/net")
    out = tmp_path / "out"
    read_end, write_end = os.pipe()  # close-on-exec, as every fd of ours
    try:
        os.write(write_end, b"handed over")
        os.close(write_end)
        script = "readlink /proc/self/ns/net; cat <&5"
        pid = await spawn_in_netns(netns, ["sh", "-c", script], out, out, fds={5: read_end})
        await asyncio.wait_for(wait_pid_exit(pid), 30)
    finally:
        os.close(read_end)
    namespace, handed = out.read_text().splitlines()
    assert namespace == f"net:[{os.stat(f'/run/netns/{netns}').st_ino}]"
    assert handed == "handed over"
    assert namespace != ours
    assert os.readlink("/proc/thread-self/ns/net") == ours, "we did not move"


async def test_a_namespace_that_does_not_exist_fails_the_spawn(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await spawn_in_netns("wrenn-no-such-namespace", ["true"], tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing was spawned"
