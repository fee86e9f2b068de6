"""End-to-end: the host agent with real microVMs (QEMU under TCG here), real namespaces, TAPs, overlays and cgroups.

The guest is the built `base` image with the real envd when `wrenn image build base` has run, else the VMM tests'
tiny busybox guest (lifecycle and leak checks still run; the envd command/file checks skip with the reason).
All tests share one data directory, so the template's warm snapshot is made once and every other create restores.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent.e2e_support import (
    census,
    envd_health,
    guest_image,
    images_file,
    read_file,
    run_command,
    write_file,
)
from wrenn.agent import AgentImage, AgentRuntime, AgentSettings, SandboxManager, StateStore, Step
from wrenn.agent._processes import kill_processes_mentioning, processes_mentioning
from wrenn.protocol.agent import CreateSandbox, SandboxInfo, SandboxState

pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.slow]

TOKEN = "e2e-access-token"
TRANSIT = f"10.{220 + secrets.randbelow(30)}.0.0/16"  # clear of the defaults (10.201, 10.213) and the bench


def sid(prefix: str, n: int) -> str:
    return f"{prefix}{n:0{20 - len(prefix)}d}"


@pytest.fixture(scope="module")
def image() -> tuple[AgentImage, bool]:
    try:
        return guest_image()
    except (OSError, subprocess.CalledProcessError, StopIteration) as exc:
        pytest.skip(f"no guest image: {exc}")


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    """One short data dir for the module (AF_UNIX socket paths below it must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="wae-", dir="/tmp"))
    try:
        yield path
    finally:
        kill_processes_mentioning(str(path) + "/")
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def prefix() -> str:
    """Resource names of our own: other agents (other tests, `wrenn up`) on this host use other prefixes."""
    return f"wt{secrets.token_hex(2)}"


@pytest.fixture
def settings(data_dir: Path, image: tuple[AgentImage, bool], prefix: str) -> AgentSettings:
    return AgentSettings(
        data_dir=data_dir,
        images_file=images_file(image[0], data_dir),
        envd_ready_limit=240,
        restore_ready_limit=120,
        resource_prefix=prefix,
        transit_cidr=TRANSIT,
        network_pool=0,  # the censuses below count namespaces while the agent runs; the pool has its own tests
    )


@pytest.fixture
async def manager(settings: AgentSettings) -> AsyncIterator[SandboxManager]:
    async with AgentRuntime(settings) as runtime:
        yield runtime.manager


async def test_create_run_echo_write_read_destroy_leaves_nothing(
    manager: SandboxManager, settings: AgentSettings, data_dir: Path, image: tuple[AgentImage, bool]
) -> None:
    before = census(data_dir, settings.resource_prefix)
    info = await manager.create(
        CreateSandbox(sandbox_id=sid("e", 1), template="base", env_vars={"GREETING": "hi"}, envd_access_token=TOKEN)
    )
    assert info.state is SandboxState.RUNNING
    assert info.accelerator.value in {"tcg", "kvm"}
    assert await envd_health(info.envd_address) == 204
    record = StateStore(data_dir / "sandboxes").load(info.sandbox_id)
    assert record is not None
    assert record.netns is not None
    netns = record.netns
    try:
        if image[1]:
            out, code = await run_command(info.envd_address, "/bin/echo", ["hello", "wrenn"], TOKEN)
            assert (out, code) == ("hello wrenn\n", 0)
            env_out, _ = await run_command(info.envd_address, "/bin/sh", ["-c", "echo $GREETING"], TOKEN)
            assert env_out == "hi\n"
            await write_file(info.envd_address, "/home/user/hello.txt", b"written by the e2e test\n", TOKEN)
            assert await read_file(info.envd_address, "/home/user/hello.txt", TOKEN) == b"written by the e2e test\n"
    finally:
        await manager.destroy(info.sandbox_id)
    after = census(data_dir, settings.resource_prefix)
    assert before.diff(after) == {}
    assert netns not in after.namespaces
    assert not processes_mentioning(str(data_dir / "sandboxes"))
    if not image[1]:
        pytest.skip("envd checks need the built base image (`wrenn image build base`); lifecycle checked")


async def test_a_restored_guest_runs_on_the_hosts_clock(
    manager: SandboxManager, image: tuple[AgentImage, bool], data_dir: Path
) -> None:
    """The warm snapshot's guest wakes up at the time of the snapshot; /init sets its clock (after answering: the
    clock must still be right for the first command)."""
    if not image[1]:
        pytest.skip("needs the built base image's envd (`wrenn image build base`)")
    first = await manager.create(CreateSandbox(sandbox_id=sid("k", 1), template="base"))  # the snapshot exists now
    made = time.time()
    await manager.destroy(first.sandbox_id)
    # Precondition, not readiness: the snapshot must be older than the tolerance, or a guest that kept the
    # snapshot's clock would pass too.
    await asyncio.sleep(max(0.0, 3.0 - (time.time() - made)))
    info = await manager.create(CreateSandbox(sandbox_id=sid("k", 2), template="base"))
    try:
        record = StateStore(data_dir / "sandboxes").load(info.sandbox_id)
        assert record is not None
        assert record.restored, "made from the warm snapshot"
        before = time.time()
        out, code = await run_command(info.envd_address, "/bin/date", ["+%s.%N"])
        after = time.time()
        assert code == 0
        guest = float(out)
        assert before - 1.0 <= guest <= after + 1.0, f"guest clock {guest:.3f}, host {before:.3f}..{after:.3f}"
    finally:
        await manager.destroy(info.sandbox_id)


async def test_a_cold_boot_create_is_ready_when_envd_takes_its_init(
    settings: AgentSettings, data_dir: Path, image: tuple[AgentImage, bool]
) -> None:
    """Warm templates off: the guest boots, and the create's ``/init`` is its readiness probe (refused until envd
    listens) — it must still land: env vars and the access token are the create's, and nothing is left after."""
    if not image[1]:
        pytest.skip("needs the built base image's envd (`wrenn image build base`)")
    before = census(data_dir, settings.resource_prefix)
    cold = settings.model_copy(update={"warm_templates": False})
    async with AgentRuntime(cold) as runtime:
        info = await runtime.manager.create(
            CreateSandbox(sandbox_id=sid("b", 1), template="base", env_vars={"BOOTED": "yes"}, envd_access_token=TOKEN)
        )
        try:
            record = StateStore(data_dir / "sandboxes").load(info.sandbox_id)
            assert record is not None
            assert not record.restored, "a boot, not a restore"
            out, code = await run_command(info.envd_address, "/bin/sh", ["-c", "echo $BOOTED"], TOKEN)
            assert (out, code) == ("yes\n", 0)
            async with httpx.AsyncClient(timeout=30) as client:
                denied = await client.get(
                    f"http://{info.envd_address}/files",
                    params={"path": "/etc/hostname"},
                    headers={"X-Access-Token": "not-the-token"},
                )
            assert denied.status_code == 401, denied.text
        finally:
            await runtime.manager.destroy(info.sandbox_id)
    assert before.diff(census(data_dir, settings.resource_prefix)) == {}


async def test_ten_concurrent_creates(manager: SandboxManager, settings: AgentSettings, data_dir: Path) -> None:
    before = census(data_dir, settings.resource_prefix)
    requests = [CreateSandbox(sandbox_id=sid("c", n), template="base") for n in range(10)]
    started = time.monotonic()
    infos: list[SandboxInfo | BaseException] = await asyncio.gather(
        *(manager.create(r) for r in requests), return_exceptions=True
    )
    elapsed = time.monotonic() - started
    try:
        failures = [i for i in infos if isinstance(i, BaseException)]
        assert not failures, failures
        ok = [i for i in infos if isinstance(i, SandboxInfo)]
        assert {i.state for i in ok} == {SandboxState.RUNNING}
        assert len({i.envd_address for i in ok}) == 10
        codes = await asyncio.gather(*(envd_health(i.envd_address) for i in ok))
        assert codes == [204] * 10
        print(f"10 concurrent creates in {elapsed:.1f} s")
    finally:
        await asyncio.gather(*(manager.destroy(r.sandbox_id) for r in requests), return_exceptions=True)
    assert before.diff(census(data_dir, settings.resource_prefix)) == {}


async def test_hundred_create_destroy_cycles_leak_nothing(
    manager: SandboxManager, settings: AgentSettings, data_dir: Path
) -> None:
    await manager.create(CreateSandbox(sandbox_id=sid("w", 0), template="base"))  # warm, then measure
    await manager.destroy(sid("w", 0))
    before = census(data_dir, settings.resource_prefix)
    fds_before = len(os.listdir("/proc/self/fd"))
    deadline = time.monotonic() + 600
    for n in range(100):
        assert time.monotonic() < deadline, f"100 cycles did not finish in 600 s (reached {n})"
        info = await manager.create(CreateSandbox(sandbox_id=sid("l", n), template="base"))
        assert info.state is SandboxState.RUNNING
        await manager.destroy(info.sandbox_id)
    after = census(data_dir, settings.resource_prefix)
    assert before.diff(after) == {}
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2  # the agent leaks no descriptors either


# ---- the network pool on real namespaces ----------------------------------------------------------------------


def ns_out(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], check=True, capture_output=True, text=True).stdout


async def test_network_pool_creates_take_prepared_slots_and_nothing_is_left(
    settings: AgentSettings, data_dir: Path
) -> None:
    before = census(data_dir, settings.resource_prefix)
    pooled = settings.model_copy(update={"network_pool": 2})
    store = StateStore(data_dir / "sandboxes")
    async with AgentRuntime(pooled) as runtime:
        manager = runtime.manager
        pool = manager.network_pool
        await pool.settled()
        prepared = census(data_dir, settings.resource_prefix)
        names = {f"{settings.resource_prefix}-ns-{slot}" for slot in pool.ready}
        assert len(names) == 2
        assert set(before.diff(prepared)["namespaces"]["new"]) == names  # type: ignore[index]
        first = pool.ready[0]

        denied = await manager.create(CreateSandbox(sandbox_id=sid("n", 1), template="base"))
        record = store.load(denied.sandbox_id)
        assert record is not None
        assert record.slot == first
        assert record.netns is not None
        assert await envd_health(denied.envd_address) == 204
        assert ns_out(record.netns, "ip", "route", "show", "default") == ""  # egress stays denied

        await pool.settled()
        second = pool.ready[0]
        allowed = await manager.create(CreateSandbox(sandbox_id=sid("n", 2), template="base", allow_internet=True))
        record2 = store.load(allowed.sandbox_id)
        assert record2 is not None
        assert record2.slot == second
        assert record2.netns is not None
        assert await envd_health(allowed.envd_address) == 204
        # The sandbox's egress was applied to the prepared slot (rules and route only: no traffic off the host).
        assert ns_out(record2.netns, "ip", "route", "show", "default") != ""
        assert "masquerade" in ns_out(record2.netns, "nft", "list", "ruleset")

        for info in (denied, allowed):
            await manager.destroy(info.sandbox_id)
        await pool.settled()
        refilled = census(data_dir, settings.resource_prefix)
        assert record.netns not in refilled.namespaces
        assert record2.netns not in refilled.namespaces
        assert len(refilled.namespaces - before.namespaces) == 2  # two new prepared slots, nothing else
        assert refilled.sandbox_files == before.sandbox_files
    assert before.diff(census(data_dir, settings.resource_prefix)) == {}  # closing the agent drained the pool
    assert json.loads((data_dir / "pool.json").read_text()) == {"slots": []}


# ---- SIGKILL of a real `wrenn agent` process mid-create -------------------------------------------------------


class AgentProcess:
    """`wrenn agent` as a subprocess on a free loopback port."""

    def __init__(self, settings: AgentSettings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        env = os.environ | {
            "WRENN_AGENT_IMAGES_FILE": str(self.settings.images_file),
            "WRENN_AGENT_ENVD_READY_LIMIT": "240",
            "WRENN_AGENT_RESTORE_READY_LIMIT": "120",
            "WRENN_AGENT_RESOURCE_PREFIX": self.settings.resource_prefix,
            "WRENN_AGENT_TRANSIT_CIDR": str(self.settings.transit_cidr),
            # With the pool on: the restarted agent must remove what the killed one prepared (the census after
            # the final stop says so), and creates take prepared slots.
            "WRENN_AGENT_NETWORK_POOL": "2",
        }
        argv = [sys.executable, "-m", "wrenn.cli", "agent", "--data-dir", str(self.settings.data_dir)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([*argv, "--listen", f"127.0.0.1:{port}"], env=env, stdout=log, stderr=log)

    async def wait_ready(self, limit: float = 120) -> None:
        async with asyncio.timeout(limit), httpx.AsyncClient(timeout=5) as client:
            while True:
                assert self.proc is not None
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                try:
                    if (await client.get(f"{self.url}/v1/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)

    def sigkill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _wait_for_step(store: StateStore, sandbox_id: str, step: Step, limit: float = 120) -> None:
    async with asyncio.timeout(limit):
        while True:
            record = await asyncio.to_thread(store.load, sandbox_id)
            if record is not None and record.begun(step):
                return
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("kill_at", [Step.DISK, Step.VM])
async def test_sigkill_mid_create_then_restart(settings: AgentSettings, data_dir: Path, kill_at: Step) -> None:
    before = census(data_dir, settings.resource_prefix)
    agent = AgentProcess(settings, data_dir / f"agent-{kill_at.value}.log")
    store = StateStore(data_dir / "sandboxes")
    keep, doomed = sid(f"k{kill_at.value[0]}", 1), sid(f"d{kill_at.value[0]}", 2)
    agent.start()
    try:
        await agent.wait_ready()
        async with httpx.AsyncClient(base_url=agent.url, timeout=300) as client:
            created = await client.post("/v1/sandboxes", json={"sandbox_id": keep, "template": "base"})
            assert created.status_code == 201, created.text
            kept = SandboxInfo.model_validate(created.json())
            pending = asyncio.create_task(client.post("/v1/sandboxes", json={"sandbox_id": doomed, "template": "base"}))
            await _wait_for_step(store, doomed, kill_at)
            agent.sigkill()
            with pytest.raises(httpx.TransportError):
                await pending
        assert await envd_health(kept.envd_address) == 204  # the VMM outlived its agent

        agent.start()
        await agent.wait_ready()
        async with httpx.AsyncClient(base_url=agent.url, timeout=300) as client:
            listed = (await client.get("/v1/sandboxes")).json()["sandboxes"]
            assert [(s["sandbox_id"], s["state"]) for s in listed] == [(keep, "running")], agent.log.read_text()[-5000:]
            assert not processes_mentioning(str(store.sandbox_dir(doomed)))
            assert store.load(doomed) is None
            assert await envd_health(kept.envd_address) == 204  # still usable after the restart
            # The restarted agent creates and destroys as usual.
            again = await client.post("/v1/sandboxes", json={"sandbox_id": doomed, "template": "base"})
            assert again.status_code == 201, again.text
            for sandbox_id in (keep, doomed):
                assert (await client.delete(f"/v1/sandboxes/{sandbox_id}")).status_code == 204
    finally:
        agent.stop()
    assert before.diff(census(data_dir, settings.resource_prefix)) == {}
