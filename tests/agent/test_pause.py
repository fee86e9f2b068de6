"""Pause and resume in the host agent against the fake VMM driver and fake host resources: the state machine,
conflicts, restart safety (a paused sandbox survives an agent restart; crashes mid-pause and mid-resume are settled,
never silently dropped) and the agent's HTTP routes. No root needed; the real-VM tests are tests/e2e/test_pause*."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import falcon.testing
import pytest

from tests.agent.fakes import Env, FakeResources, FakeSettings, fake_image, health, sid
from wrenn.agent import StateStore, create_agent_app
from wrenn.agent._processes import processes_mentioning
from wrenn.agent.pause import PAUSE_DIR, PAUSE_FILE, PausePhase, PauseRecord
from wrenn.protocol.agent import CreateSandbox, SandboxState
from wrenn.protocol.errors import Conflict, NotFound


def vmm_pids(env: Env, sandbox_id: str) -> list[int]:
    return processes_mentioning(str(env.root / "sandboxes" / sandbox_id / "run") + "/")


def pause_record(env: Env, sandbox_id: str) -> PauseRecord | None:
    path = env.root / "sandboxes" / sandbox_id / PAUSE_DIR / PAUSE_FILE
    return PauseRecord.model_validate_json(path.read_text()) if path.exists() else None


async def test_pause_frees_the_vmm_and_resume_brings_the_same_sandbox_back(env: Env) -> None:
    async with env.manager() as manager:
        created = await manager.create(CreateSandbox(sandbox_id=sid(1), template="base", envd_access_token="tok"))
        assert vmm_pids(env, sid(1))
        paused = await manager.pause(sid(1))
        assert paused.state is SandboxState.PAUSED
        assert not vmm_pids(env, sid(1)), "the VMM must be gone while paused"
        assert await health(created.envd_address) is None
        assert sid(1) in env.resources.networks, "the namespace/slot stays while paused"
        saved = pause_record(env, sid(1))
        assert saved is not None
        assert saved.phase is PausePhase.SAVED
        with pytest.raises(Conflict):
            await manager.pause(sid(1))
        for _cycle in range(3):
            info, resumed = await manager.resume(sid(1))
            assert resumed
            expected = (sid(1), SandboxState.RUNNING, created.envd_address)
            assert (info.sandbox_id, info.state, info.envd_address) == expected
            assert await health(info.envd_address) == 204
            assert pause_record(env, sid(1)) is None
            _, again = await manager.resume(sid(1))
            assert not again, "resume of a running sandbox is a no-op"
            await manager.pause(sid(1))
        await manager.resume(sid(1))
        with pytest.raises(NotFound):
            await manager.pause(sid(9))
        await manager.destroy(sid(1))
    env.nothing_left()


async def test_paused_sandbox_can_be_destroyed(env: Env) -> None:
    async with env.manager() as manager:
        await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
        await manager.pause(sid(1), memory=False)
        await manager.destroy(sid(1))
    env.nothing_left()


async def test_memory_false_resume_boots_fresh_on_the_disk(env: Env) -> None:
    async with env.manager() as manager:
        await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
        await manager.pause(sid(1), memory=False)
        record = pause_record(env, sid(1))
        assert record is not None
        assert not record.memory
        info, resumed = await manager.resume(sid(1))
        assert resumed
        assert await health(info.envd_address) == 204
        await manager.destroy(sid(1))
    env.nothing_left()


async def test_restarted_agent_lists_the_paused_sandbox_and_resumes_it(env: Env) -> None:
    async with env.manager() as manager:
        await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
        await manager.pause(sid(1))
    async with env.manager() as manager:
        assert [(s.sandbox_id, s.state) for s in manager.list()] == [(sid(1), SandboxState.PAUSED)]
        info, resumed = await manager.resume(sid(1))
        assert resumed
        assert await health(info.envd_address) == 204
        await manager.destroy(sid(1))
    env.nothing_left()


async def test_restart_mid_pause_with_the_vmm_alive_lets_the_sandbox_run_on(env: Env) -> None:
    async with env.manager() as manager:
        info = await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
    # The agent died after writing SAVING (before the snapshot completed): the VMM still runs.
    directory = env.root / "sandboxes" / sid(1) / PAUSE_DIR
    directory.mkdir()
    (directory / PAUSE_FILE).write_text(PauseRecord(phase=PausePhase.SAVING).model_dump_json())
    async with env.manager() as manager:
        assert manager.get(sid(1)).state is SandboxState.RUNNING
        assert await health(info.envd_address) == 204
        assert not directory.exists()
        await manager.pause(sid(1))
        await manager.resume(sid(1))
        await manager.destroy(sid(1))
    env.nothing_left()


async def test_restart_mid_pause_with_the_vmm_gone_marks_failed_and_keeps_files(env: Env) -> None:
    async with env.manager() as manager:
        await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
    directory = env.root / "sandboxes" / sid(1) / PAUSE_DIR
    directory.mkdir()
    (directory / PAUSE_FILE).write_text(PauseRecord(phase=PausePhase.SAVING).model_dump_json())
    for pid in vmm_pids(env, sid(1)):
        os.kill(pid, signal.SIGKILL)
    async with env.manager() as manager:
        assert manager.get(sid(1)).state is SandboxState.FAILED
        record = StateStore(env.root / "sandboxes").load(sid(1))
        assert record is not None
        assert record.disk is not None
        assert record.disk.exists(), "the disk is kept for the user"
        assert record.error is not None
        assert "mid-pause" in record.error
        with pytest.raises(Conflict):
            await manager.resume(sid(1))
    async with env.manager() as manager:  # still there after another restart
        assert manager.get(sid(1)).state is SandboxState.FAILED
        await manager.destroy(sid(1))
    env.nothing_left()


async def test_restart_after_the_snapshot_completed_keeps_it_paused(env: Env) -> None:
    async with env.manager() as manager:
        await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
        await manager.pause(sid(1))
    # As if the agent died between writing SAVED and recording PAUSED, with the VMM not yet ended.
    store = StateStore(env.root / "sandboxes")
    record = store.load(sid(1))
    assert record is not None
    record.state = SandboxState.RUNNING
    store.save(record)
    async with env.manager() as manager:
        assert manager.get(sid(1)).state is SandboxState.PAUSED
        info, resumed = await manager.resume(sid(1))
        assert resumed
        assert await health(info.envd_address) == 204
        await manager.destroy(sid(1))
    env.nothing_left()


async def test_restart_mid_resume_without_a_vmm_is_failed_with_files_kept(env: Env) -> None:
    async with env.manager() as manager:
        await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
        await manager.pause(sid(1))
    path = env.root / "sandboxes" / sid(1) / PAUSE_DIR / PAUSE_FILE
    saved = PauseRecord.model_validate_json(path.read_text())
    path.write_text(saved.model_copy(update={"phase": PausePhase.RESUMING}).model_dump_json())
    async with env.manager() as manager:
        assert manager.get(sid(1)).state is SandboxState.FAILED
        assert (env.root / "sandboxes" / sid(1) / PAUSE_DIR / "snapshot").is_dir()
        await manager.destroy(sid(1))
    env.nothing_left()


async def test_agent_routes(short_tmp: Path) -> None:
    settings = FakeSettings(data_dir=short_tmp, driver="fake").with_fakes(FakeResources(), fake_image(short_tmp / "i"))
    app, _runtime = create_agent_app(settings)
    sandbox_id = "abcdefghij0123456789"
    async with falcon.testing.ASGIConductor(app) as conductor:
        created = await conductor.simulate_post("/v1/sandboxes", json={"sandbox_id": sandbox_id, "template": "base"})
        assert created.status_code == 201, created.text
        paused = await conductor.simulate_post(f"/v1/sandboxes/{sandbox_id}/pause", json={"memory": True})
        assert (paused.status_code, paused.json["state"]) == (200, "paused")
        again = await conductor.simulate_post(f"/v1/sandboxes/{sandbox_id}/pause")
        assert (again.status_code, again.json["code"]) == (409, 409)
        listed = await conductor.simulate_get("/v1/sandboxes")
        assert [s["state"] for s in listed.json["sandboxes"]] == ["paused"]
        resumed = await conductor.simulate_post(f"/v1/sandboxes/{sandbox_id}/resume")
        assert (resumed.status_code, resumed.json["state"]) == (201, "running")
        running = await conductor.simulate_post(f"/v1/sandboxes/{sandbox_id}/resume")
        assert (running.status_code, running.json["state"]) == (200, "running")
        missing = await conductor.simulate_post(f"/v1/sandboxes/{'z' * 20}/pause")
        assert missing.status_code == 404
        bad = await conductor.simulate_post(f"/v1/sandboxes/{sandbox_id}/pause", json={"memory": "maybe"})
        assert bad.status_code == 400
        assert (await conductor.simulate_delete(f"/v1/sandboxes/{sandbox_id}")).status_code == 204
