"""The real `base` image booted with the QEMU driver (user-mode networking, TCG here), driven by the e2b SDK.

Needs the image built (`wrenn image build base`, which scripts/test does before pytest; `base-debian-kernel` the
same way); skips naming that command otherwise. Every guest check polls for state; nothing waits for time.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from wrenn.agent.vmm import VM, UserNetwork, VMConfig, VMState, wait_envd
from wrenn.agent.vmm.qemu import QemuDriver
from wrenn.images import GuestImage, ImageNotFound, find_image

pytestmark = [pytest.mark.vm, pytest.mark.sdk, pytest.mark.slow]

BOOT_LIMIT = 180.0  # a TCG boot takes ~6 s alone; far more with other VMs on the same 2 cores
EXTRA_DISK_MB = 512
EXTRA_ARGS = "wrenn.dns=192.0.2.53,192.0.2.54 wrenn.hostname=sbx-test"


@pytest.fixture(scope="module", params=["base", "base-debian-kernel"])
def base_image(request: pytest.FixtureRequest) -> GuestImage:
    """`base` (microvm kernel) always when built; `base-debian-kernel` when someone built it too."""
    try:
        return find_image(str(request.param))
    except ImageNotFound as exc:
        pytest.skip(exc.message)


@dataclass
class Booted:
    vm: VM
    url: str
    image: GuestImage


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def booted(base_image: GuestImage, tmp_path: Path) -> AsyncIterator[Booted]:
    """The base image on a qcow2 overlay EXTRA_DISK_MB larger than the image, envd answering /health."""
    overlay = tmp_path / "disk.qcow2"
    virtual = base_image.size_bytes + EXTRA_DISK_MB * 1024 * 1024
    create = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base_image.rootfs), "-F", "raw", str(overlay)]
    qemu_img = await asyncio.create_subprocess_exec(*create, str(virtual))
    assert await qemu_img.wait() == 0
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    port = _free_port()
    config = VMConfig(
        vm_id="image-boot",
        kernel=base_image.kernel,
        initrd=base_image.initrd,
        kernel_cmdline=f"{base_image.kernel_cmdline} {EXTRA_ARGS}",  # no wrenn.ip=: the defaults must apply
        rootfs=overlay,
        vcpus=1,
        memory_mb=base_image.defaults.memory_mb,
        network=UserNetwork(host_port=port),
        run_dir=run_dir,
    )
    vm = await QemuDriver(data_dir=tmp_path / "data").start(config)
    try:
        try:
            await wait_envd(f"127.0.0.1:{port}", limit=BOOT_LIMIT)
        except TimeoutError:
            console = (run_dir / "console.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"envd did not answer /health within {BOOT_LIMIT} s; console:\n{console}")
        yield Booted(vm, f"http://127.0.0.1:{port}", base_image)
    finally:
        await vm.stop(grace=5)
        print("console.log tail:\n" + (run_dir / "console.log").read_text(errors="replace")[-2000:])


@pytest.fixture
def sandbox(booted: Booted, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An e2b `Sandbox` (SDK debug mode, no REST API) whose envd URL is the VM's forwarded port."""
    from e2b import Sandbox

    monkeypatch.setenv("E2B_DEBUG", "true")
    monkeypatch.setenv("E2B_SANDBOX_URL", booted.url)
    return Sandbox.create()


def _poll(sandbox: Any, command: str, done: Any, limit: float = 60.0) -> str:
    """Run `command` until `done(stdout)` holds; returns the last output."""
    loop_limit = int(limit / 0.2)
    out = ""
    for _ in range(loop_limit):
        out = sandbox.commands.run(command, user="root").stdout
        if done(out):
            return str(out)
        subprocess.run(["sleep", "0.2"], check=True)  # between polls of guest state, not instead of them
    return str(out)


async def test_envd_health_answers_204(booted: Booted) -> None:
    import httpx

    async with httpx.AsyncClient() as client:
        response = await client.get(f"{booted.url}/health")
    assert response.status_code == 204
    assert booted.vm.state is VMState.RUNNING


def test_user_account_and_tools(sandbox: Any) -> None:
    result = sandbox.commands.run("id -un; echo $HOME; getent passwd user | cut -d: -f6,7; pwd")
    assert result.stdout.split() == ["user", "/home/user", "/home/user:/bin/bash", "/home/user"]
    assert sandbox.commands.run("sudo -n id -u").stdout.strip() == "0"
    for tool in ("git --version", "curl --version", "python3 --version", "test -x /usr/sbin/resize2fs", "ip -V"):
        assert sandbox.commands.run(tool).exit_code == 0, tool
    python = sandbox.commands.run("python3 -c 'import google.protobuf, h11; print(\"ok\")'")
    assert python.stdout == "ok\n"


def test_network_from_the_contract(sandbox: Any) -> None:
    addresses = sandbox.commands.run("ip -4 -o addr show dev eth0; ip route show default").stdout
    assert "169.254.0.21/30" in addresses
    assert "default via 169.254.0.22 dev eth0" in addresses
    assert sandbox.commands.run("hostname").stdout.strip() == "sbx-test"
    resolv = sandbox.commands.run("grep nameserver /etc/resolv.conf").stdout
    assert resolv == "nameserver 192.0.2.53\nnameserver 192.0.2.54\n"


def test_init_is_pid1_and_grows_the_root_filesystem(sandbox: Any, booted: Booted) -> None:
    assert sandbox.commands.run("cat /proc/1/cmdline | tr '\\0' ' '").stdout.startswith("/usr/bin/python3 -IS /sbin/")
    wanted = booted.image.size_bytes // (1024 * 1024) + EXTRA_DISK_MB * 3 // 4
    out = _poll(sandbox, "df -B1M --output=size / | tail -1", lambda out: int(out) >= wanted)
    assert int(out) >= wanted, f"/ is {out.strip()} MiB, expected it grown past {wanted} MiB"


def test_init_reaps_orphans(sandbox: Any) -> None:
    # The inner shell exits at once; its child `true` is re-parented to PID 1 and must not stay a zombie.
    sandbox.commands.run("setsid sh -c 'true & exit 0'", user="root")
    zombies = "grep -l '^[0-9]* ([^)]*) Z' /proc/[0-9]*/stat 2>/dev/null | wc -l"
    assert _poll(sandbox, zombies, lambda out: out.strip() == "0").strip() == "0"


async def test_init_powers_off_cleanly_on_sigterm(booted: Booted, monkeypatch: pytest.MonkeyPatch) -> None:
    from e2b import Sandbox

    monkeypatch.setenv("E2B_DEBUG", "true")
    monkeypatch.setenv("E2B_SANDBOX_URL", booted.url)
    sandbox = await asyncio.to_thread(Sandbox.create)
    # The command's own stream may be cut by the shutdown it causes: its outcome is the VMM's exit below.
    with contextlib.suppress(Exception):
        await asyncio.to_thread(sandbox.commands.run, "kill -TERM 1", user="root", timeout=30)
    state = await asyncio.wait_for(booted.vm.wait_exited(), timeout=BOOT_LIMIT)
    assert state is VMState.CRASHED  # the guest ended itself: the driver's word for "exited unasked"
    console = (booted.vm.config.run_dir / "console.log").read_text(errors="replace")
    assert "wrenn-init:" in console
    assert "shutting down: signal SIGTERM" in console
