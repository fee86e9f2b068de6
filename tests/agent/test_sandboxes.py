"""The sandbox manager against the fake VMM driver and fake host resources: the create step machine, rollback of
every step, idempotent destroy, warm templates, capacity, and recovery after an agent restart. No root needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.agent.fakes import Env, free_port, health, sid
from wrenn.agent import StateStore, Step, WarmTemplates
from wrenn.agent._processes import processes_mentioning
from wrenn.agent.vmm import VMMError
from wrenn.agent.vmm.fake import FakeDriver
from wrenn.protocol.agent import CreateSandbox, SandboxState
from wrenn.protocol.errors import Conflict, Exhausted, NotFound, Unavailable, WrennError


async def test_create_get_list_destroy_leaves_nothing(env: Env) -> None:
    async with env.manager() as manager:
        info = await manager.create(CreateSandbox(sandbox_id=sid(1), template="base", metadata={"k": "v"}))
        assert info.state is SandboxState.RUNNING
        assert info.metadata == {"k": "v"}
        assert await health(info.envd_address) == 204
        assert manager.get(sid(1)) == info
        assert [s.sandbox_id for s in manager.list()] == [sid(1)]
        assert len(env.resources.cgroups[sid(1)]) == 1  # the VMM pid was placed in its cgroup
        host = await manager.host_info()
        assert (host.sandboxes_running, host.memory_mb_used, host.vcpus_used) == (1, 256, 1)
        await manager.destroy(sid(1))
        await manager.destroy(sid(1))  # idempotent
        with pytest.raises(NotFound):
            manager.get(sid(1))
        with pytest.raises(NotFound):
            await manager.destroy(sid(2))
    env.nothing_left()


async def test_second_create_restores_from_the_warm_template(env: Env) -> None:
    async with env.manager() as manager:
        await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
        await manager.create(CreateSandbox(sandbox_id=sid(2), template="base"))
        store = StateStore(env.root / "sandboxes")
        records = [store.load(sid(n)) for n in (1, 2)]
        assert all(r is not None and r.restored for r in records)
        assert [d.name for d in (env.root / "templates").iterdir()] == [WarmTemplates.shape_key(env.image, 1, 256)]
        # A different shape gets its own warm snapshot.
        await manager.create(CreateSandbox(sandbox_id=sid(3), template="base", memory_mb=512))
        assert len(list((env.root / "templates").iterdir())) == 2
        for n in (1, 2, 3):
            await manager.destroy(sid(n))
    env.nothing_left()


async def test_prewarm_makes_the_shapes_in_the_background(env: Env) -> None:
    """`open(prewarm=...)`: the warm snapshot of each shape is made without a create asking; an unknown template
    is logged and skipped; the first create of a prewarmed shape restores from it; closing mid-prewarm is clean."""
    manager = env.manager()
    await manager.open(prewarm=[("nosuch", 1, 256), ("base", 1, 512)])
    try:
        await manager.prewarmed()
        key = WarmTemplates.shape_key(env.image, 1, 512)
        assert [d.name for d in (env.root / "templates").iterdir()] == [key]
        assert (env.root / "templates" / key / "ready").is_file()
        await manager.create(CreateSandbox(sandbox_id=sid(1), template="base", memory_mb=512))
        record = StateStore(env.root / "sandboxes").load(sid(1))
        assert record is not None
        assert record.restored
        assert record.template_key == key
        await manager.destroy(sid(1))
    finally:
        await manager.aclose()
    second = env.manager()
    await second.open(prewarm=[("base", 2, 256)])
    await second.aclose()  # cancels a prewarm that may be mid-boot: nothing of it is left half-made
    leftovers = [d for d in (env.root / "templates").iterdir() if not (d / "ready").is_file()]
    assert leftovers == []
    env.nothing_left()


async def test_cold_boot_when_warm_templates_are_off(short_tmp: Path) -> None:
    tmp_path = short_tmp
    env = Env(tmp_path, warm=False)
    try:
        async with env.manager() as manager:
            await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
            record = StateStore(tmp_path / "sandboxes").load(sid(1))
            assert record is not None
            assert not record.restored
            assert record.steps == [Step.SLOT, Step.NETWORK, Step.DISK, Step.CGROUP, Step.VM, Step.INIT]
            await manager.destroy(sid(1))
        env.nothing_left()
    finally:
        await env.envd.aclose()


@pytest.mark.parametrize("operation", ["network", "disk", "cgroup", "placement"])
async def test_a_failing_step_is_rolled_back(env: Env, operation: str) -> None:
    async with env.manager() as manager:
        await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))  # warm template made first
        env.resources.fail_at = operation
        with pytest.raises(Unavailable, match="injected"):
            await manager.create(CreateSandbox(sandbox_id=sid(2), template="base"))
        with pytest.raises(NotFound):
            manager.get(sid(2))
        env.resources.fail_at = None
        await manager.destroy(sid(1))
        # The slot and the id are free again.
        info = await manager.create(CreateSandbox(sandbox_id=sid(2), template="base"))
        assert info.state is SandboxState.RUNNING
        await manager.destroy(sid(2))
    env.nothing_left()


async def test_envd_never_answering_fails_a_boot_and_kills_the_vmm(env: Env) -> None:
    env.warm = False
    async with env.manager() as manager:
        manager._limits.ready_cold = 0.5  # the fake guest answers at once; a broken one must not hang the create
        real_init = env.envd.init
        nobody = f"127.0.0.1:{free_port()}"  # nothing listens: every attempt is refused, as before envd is up
        attempts = 0

        async def init_elsewhere(address: str, **kwargs: Any) -> None:
            nonlocal attempts
            attempts += 1
            await real_init(nobody, **kwargs)

        env.envd.init = init_elsewhere  # type: ignore[method-assign]
        with pytest.raises(Unavailable, match=r"did not answer POST /init within 0\.5 s"):
            await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
        assert attempts == 1  # the probe loop is envd's /init itself, with the boot's limit
    env.nothing_left()


async def test_duplicate_unknown_template_and_capacity(env: Env) -> None:
    async with env.manager() as manager:
        await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
        with pytest.raises(Conflict):
            await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
        with pytest.raises(NotFound):
            await manager.create(CreateSandbox(sandbox_id=sid(2), template="nope"))
        with pytest.raises(Exhausted):
            await manager.create(CreateSandbox(sandbox_id=sid(3), template="base", memory_mb=262144))
        await manager.destroy(sid(1))
    env.nothing_left()


async def test_restart_adopts_running_and_undoes_half_done(env: Env) -> None:
    manager = env.manager()
    await manager.open()
    a = await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
    await manager.create(CreateSandbox(sandbox_id=sid(2), template="base"))
    # A crash mid-create: sid(3) got as far as a running VMM, but the record still says CREATING.
    b = await manager.create(CreateSandbox(sandbox_id=sid(3), template="base"))
    store = StateStore(env.root / "sandboxes")
    record = store.load(sid(3))
    assert record is not None
    record.state = SandboxState.CREATING
    record.steps = record.steps[:-1]
    store.save(record)
    # And a sandbox whose VMM died while the agent was down.
    dead = store.load(sid(2))
    assert dead is not None
    await manager.aclose()  # handles released; the VMMs keep running
    assert processes_mentioning(str(b.sandbox_id))
    vm = await FakeDriver().adopt(dead.run_dir or Path())
    await vm.kill()
    await vm.aclose()
    # And a directory without a record (a crash before the first write).
    (env.root / "sandboxes" / sid(4)).mkdir()

    async with env.manager() as restarted:
        assert [s.sandbox_id for s in restarted.list()] == [sid(1)]
        assert restarted.get(sid(1)).state is SandboxState.RUNNING
        assert await health(a.envd_address) == 204
        assert env.resources.stale_calls[-1][0] == {sid(1)}
        assert not (env.root / "sandboxes" / sid(4)).exists()
        assert not processes_mentioning(str(env.root / "sandboxes" / sid(3)))
        # The restarted agent reuses the warm template and can destroy what it adopted.
        await restarted.create(CreateSandbox(sandbox_id=sid(5), template="base"))
        await restarted.destroy(sid(1))
        await restarted.destroy(sid(5))
    env.nothing_left()


async def test_crash_before_vm_step_recorded_is_undone(env: Env) -> None:
    """A record that reached DISK (overlay may exist) but no further is undone from its steps."""
    async with env.manager() as manager:
        await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
        store = StateStore(env.root / "sandboxes")
        record = store.load(sid(1))
        assert record is not None
    # simulate: the agent died right after beginning DISK (VM handle released above, so kill it first)
    vm = await FakeDriver().adopt(record.run_dir or Path())
    await vm.kill()
    await vm.aclose()
    record.state = SandboxState.CREATING
    record.steps = [Step.SLOT, Step.NETWORK, Step.DISK]
    store.save(record)
    async with env.manager():
        pass
    env.nothing_left()


async def test_stopping_record_is_finished(env: Env) -> None:
    async with env.manager() as manager:
        await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
    store = StateStore(env.root / "sandboxes")
    record = store.load(sid(1))
    assert record is not None
    record.state = SandboxState.STOPPING
    store.save(record)
    async with env.manager() as manager:
        assert manager.list() == []
    env.nothing_left()


def test_state_file_is_json_and_atomic(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from wrenn.agent import SandboxRecord

    store = StateStore(tmp_path)
    record = SandboxRecord(
        sandbox_id=sid(1), request=CreateSandbox(sandbox_id=sid(1), template="base"), created_at=datetime.now(UTC)
    )
    store.save(record)
    assert json.loads((tmp_path / sid(1) / "state.json").read_text())["state"] == "creating"
    assert not list((tmp_path / sid(1)).glob(".*tmp"))
    assert store.load(sid(1)) == record
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "state.json").write_text("{not json")
    records, orphans = store.load_all()
    assert records == [record]
    assert orphans == [tmp_path / "garbage"]


def test_error_kinds_of_vmm_errors_are_wrenn_errors() -> None:
    assert issubclass(VMMError, WrennError)


def test_prewarm_setting_is_template_vcpus_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from wrenn.agent import AgentSettings

    settings = AgentSettings(data_dir=tmp_path, prewarm=["base:1:512", "my.tpl-2:4:2048"])
    assert settings.prewarm_shapes() == [("base", 1, 512), ("my.tpl-2", 4, 2048)]
    monkeypatch.setenv("WRENN_AGENT_PREWARM", '["base:2:256"]')
    assert AgentSettings(data_dir=tmp_path).prewarm_shapes() == [("base", 2, 256)]
    for bad in ("base", "base:0:512", "base:1:", ":1:512", "base:1:512:9"):
        with pytest.raises(ValidationError, match="TEMPLATE:VCPUS:MEMORY_MB"):
            AgentSettings(data_dir=tmp_path, prewarm=[bad])
