"""The network pool (`wrenn.agent._netpool`) inside the sandbox manager, over the fake driver and fake host
resources: refill, creates taking prepared slots (egress applied), fallback when empty or failing, rollback,
restart recovery, and nothing left after destroy and close. No root needed; tests/agent/test_e2e.py runs the pool
on real namespaces."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from tests.agent.fakes import Env, FakeResources, health, sid
from wrenn.agent import StateStore
from wrenn.agent._netpool import POOL_FILE
from wrenn.protocol.agent import CreateSandbox, SandboxState
from wrenn.protocol.errors import Unavailable


def pool_file(env: Env) -> list[int]:
    return list(json.loads((env.root / POOL_FILE).read_text())["slots"])


async def test_pool_fills_creates_take_from_it_and_it_refills(env: Env) -> None:
    async with env.manager(pool=2) as manager:
        pool = manager.network_pool
        await pool.settled()
        first = pool.ready
        assert len(first) == 2
        assert env.resources.prepared == set(first)
        assert sorted(first) == pool_file(env)  # recorded on disk

        info = await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
        assert info.state is SandboxState.RUNNING
        assert await health(info.envd_address) == 204
        slot, allowed = env.resources.taken[sid(1)]
        assert (slot, allowed) == (first[0], False)
        record = StateStore(env.root / "sandboxes").load(sid(1))
        assert record is not None
        assert record.slot == slot

        await pool.settled()
        assert len(pool.ready) == 2
        assert slot not in pool.ready
        assert sorted(pool.ready) == pool_file(env)  # the taken slot is forgotten by the pool's file
        await manager.destroy(sid(1))
        assert sid(1) not in env.resources.networks
    env.nothing_left()  # close tore the prepared slots down
    assert pool_file(env) == []


async def test_allowed_egress_is_applied_to_a_prepared_slot(env: Env) -> None:
    async with env.manager(pool=1) as manager:
        await manager.network_pool.settled()
        await manager.create(CreateSandbox(sandbox_id=sid(1), template="base", allow_internet=True))
        assert env.resources.taken[sid(1)][1] is True
        await manager.destroy(sid(1))
    env.nothing_left()


async def test_empty_pool_falls_back_to_setting_up_the_network(env: Env) -> None:
    async with env.manager(pool=1) as manager:
        await manager.network_pool.settled()
        for n in (1, 2, 3):  # the first takes the prepared slot; the others find the pool empty or refilled
            await manager.create(CreateSandbox(sandbox_id=sid(n), template="base"))
        assert len(env.resources.taken) >= 1
        slots = {env.resources.networks[sid(n)] for n in (1, 2, 3)}
        assert len(slots) == 3  # distinct slots, whichever way they came
        for n in (1, 2, 3):
            await manager.destroy(sid(n))
    env.nothing_left()


async def test_a_create_failing_after_taking_a_slot_tears_it_down(env: Env) -> None:
    async with env.manager(pool=1) as manager:
        await manager.network_pool.settled()
        env.resources.fail_at = "disk"
        with pytest.raises(Unavailable, match="injected failure in disk"):
            await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
        assert sid(1) in env.resources.taken
        assert sid(1) not in env.resources.networks
        env.resources.fail_at = None
    env.nothing_left()


async def test_failing_preparation_backs_off_and_leaves_nothing(env: Env) -> None:
    env.resources.fail_at = "prepare"
    async with env.manager(pool=2) as manager:
        await manager.network_pool.settled()  # returns while it backs off
        assert not manager.network_pool.ready, "the prepared slot went to the create"
        assert pool_file(env) == []
        info = await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
        assert sid(1) not in env.resources.taken  # set up by the create itself
        assert info.state is SandboxState.RUNNING
        await manager.destroy(sid(1))
    env.nothing_left()


async def test_restart_removes_the_previous_pool_but_keeps_what_sandboxes_claim(env: Env) -> None:
    async with env.manager(pool=1) as manager:
        await manager.network_pool.settled()
        kept = await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
        kept_slot = env.resources.taken[sid(1)][0]
    # What a SIGKILLed agent leaves: prepared slots on the host and in its pool file, one slot half-prepared (in the
    # file only), and the slot it had just handed to sid(1) (its file not rewritten yet).
    env.resources.prepared |= {40, 41}
    (env.root / POOL_FILE).write_text(json.dumps({"slots": [40, 41, 42, kept_slot]}))

    async with env.manager(pool=2) as restarted:
        assert restarted.get(sid(1)).state is SandboxState.RUNNING
        assert await health(kept.envd_address) == 204
        assert env.resources.networks[sid(1)] == kept_slot  # the sandbox's network was not touched
        await restarted.network_pool.settled()
        assert env.resources.prepared == set(restarted.network_pool.ready)  # 40 and 41 are gone
        assert not {40, 41, kept_slot} & set(restarted.network_pool.ready)
        assert len(restarted.network_pool.ready) == 2
        await restarted.destroy(sid(1))
    env.nothing_left()
    assert pool_file(env) == []


async def test_unreadable_pool_file_is_survived(env: Env) -> None:
    (env.root / POOL_FILE).write_text("{not json")
    async with env.manager(pool=1) as manager:
        await manager.network_pool.settled()
        assert len(manager.network_pool.ready) == 1
    env.nothing_left()


async def test_pool_off_prepares_nothing(env: Env) -> None:
    async with env.manager(pool=0) as manager:
        await manager.network_pool.settled()
        await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
        assert env.resources.taken == {}
        assert env.resources.prepared == set()
        await manager.destroy(sid(1))
    env.nothing_left()


def test_default_settings_enable_a_small_pool(tmp_path: Path) -> None:
    from wrenn.agent import AgentSettings

    assert 1 <= AgentSettings(data_dir=tmp_path).network_pool <= 4
    assert AgentSettings(data_dir=tmp_path, network_pool=0).network_pool == 0


class SlowPrepare(FakeResources):
    """`prepare_network` in a worker thread that waits for `release`, as the real one runs `ip`/`nft` in a thread."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    async def prepare_network(self, slot: int) -> None:
        await asyncio.to_thread(self._prepare, slot)

    def _prepare(self, slot: int) -> None:
        self.started.set()
        assert self.release.wait(30)
        self.prepared.add(slot)  # the last of the host work lands after the cancellation


async def test_close_during_a_preparation_waits_for_it_then_undoes_it(env: Env) -> None:
    env.resources = SlowPrepare()
    resources = env.resources
    manager = env.manager(pool=1)
    await manager.open()
    await asyncio.to_thread(resources.started.wait, 30)
    closing = asyncio.create_task(manager.aclose())
    for _ in range(5):
        await asyncio.sleep(0)  # let aclose begin and its cancellation reach the refill task; the thread still works
    assert manager.network_pool._task is None  # aclose has cancelled the refill task
    assert not resources.release.is_set()
    resources.release.set()
    await asyncio.wait_for(closing, 30)
    env.nothing_left()
    assert pool_file(env) == []


class HeldDisk(FakeResources):
    """`create_disk` waits for `release`: a create held in the middle, with its slot taken from the pool."""

    def __init__(self) -> None:
        super().__init__()
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.preparations = 0

    async def prepare_network(self, slot: int) -> None:
        self.preparations += 1
        await super().prepare_network(slot)

    async def create_disk(self, base: Path, base_format: str, dest: Path, size_mb: int) -> None:
        self.held.set()
        await self.release.wait()
        await super().create_disk(base, base_format, dest, size_mb)


async def test_the_refill_waits_for_the_running_create(env: Env) -> None:
    """A slot's setup (~70 ms of ip/nft) is not started while a create runs: it would compete with its VMM."""
    env.resources = resources = HeldDisk()
    async with env.manager(pool=1) as manager:
        await manager.network_pool.settled()
        assert resources.preparations == 1
        create = asyncio.create_task(manager.create(CreateSandbox(sandbox_id=sid(1), template="base")))
        await asyncio.wait_for(resources.held.wait(), 30)
        for _ in range(20):
            await asyncio.sleep(0)  # give the refill every chance to start
        assert resources.preparations == 1, "no slot prepared while the create runs"
        assert not manager.network_pool.ready, "the prepared slot went to the create"
        resources.release.set()
        await asyncio.wait_for(create, 30)
        await manager.network_pool.settled()
        assert resources.preparations == 2
        assert len(manager.network_pool.ready) == 1
        await manager.destroy(sid(1))
    env.nothing_left()


async def test_a_long_create_does_not_starve_the_refill(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("wrenn.agent._netpool.QUIET_LIMIT", 0.05)
    env.resources = resources = HeldDisk()
    async with env.manager(pool=1) as manager:
        await manager.network_pool.settled()
        create = asyncio.create_task(manager.create(CreateSandbox(sandbox_id=sid(1), template="base")))
        await asyncio.wait_for(resources.held.wait(), 30)
        await asyncio.wait_for(manager.network_pool.settled(), 30)  # refilled though the create still runs
        assert not create.done()
        assert resources.preparations == 2
        resources.release.set()
        await asyncio.wait_for(create, 30)
        await manager.destroy(sid(1))
    env.nothing_left()
