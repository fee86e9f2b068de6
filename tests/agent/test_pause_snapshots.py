"""Named snapshots in the host agent (fake VMM driver): the source keeps running, new sandboxes restore from the
snapshot, a snapshot backing live sandboxes cannot be deleted, and the agent routes answer with their statuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from tests.agent.fakes import Env, FakeResources, FakeSettings, fake_image, health, sid
from wrenn.agent import StateStore, create_agent_app
from wrenn.protocol.agent import CreateSandbox, SandboxState
from wrenn.protocol.errors import Conflict, NotFound


async def test_snapshot_keeps_the_source_running_and_clones_restore_from_it(env: Env) -> None:
    async with env.manager() as manager:
        source = await manager.create(CreateSandbox(sandbox_id=sid(1), template="base", memory_mb=512))
        snap = await manager.snapshot(sid(1), "snapone")
        assert (snap.snapshot_id, snap.template, snap.source_sandbox, snap.memory_mb) == (
            "snapone",
            "base",
            sid(1),
            512,
        )
        assert manager.get(sid(1)).state is SandboxState.RUNNING
        assert await health(source.envd_address) == 204
        with pytest.raises(Conflict):
            await manager.snapshot(sid(1), "snapone")
        assert [s.snapshot_id for s in manager.list_snapshots()] == ["snapone"]

        clone = await manager.create(CreateSandbox(sandbox_id=sid(2), template="snapone"))
        assert clone.state is SandboxState.RUNNING
        assert clone.memory_mb == 512, "a clone has its snapshot's size"
        assert await health(clone.envd_address) == 204
        record = StateStore(env.root / "sandboxes").load(sid(2))
        assert record is not None
        assert (record.template_key, record.restored) == ("snap-snapone", True)
        # A snapshot of a clone names the image template, not the snapshot.
        assert (await manager.snapshot(sid(2), "snaptwo")).template == "base"

        with pytest.raises(Conflict):
            await manager.delete_snapshot("snapone")
        await manager.destroy(sid(2))
        await manager.delete_snapshot("snapone")
        await manager.delete_snapshot("snaptwo")
        with pytest.raises(NotFound):
            await manager.delete_snapshot("snapone")
        assert manager.list_snapshots() == []
        await manager.destroy(sid(1))
    env.nothing_left()


async def test_unfinished_snapshot_is_removed_at_start(env: Env) -> None:
    (env.root / "snapshots" / "halfdone" / "snapshot").mkdir(parents=True)
    async with env.manager() as manager:
        assert manager.list_snapshots() == []
    assert not (env.root / "snapshots" / "halfdone").exists()


async def test_agent_snapshot_routes(short_tmp: Path) -> None:
    settings = FakeSettings(data_dir=short_tmp, driver="fake").with_fakes(FakeResources(), fake_image(short_tmp / "i"))
    app, _runtime = create_agent_app(settings)
    sandbox_id = "abcdefghij0123456789"
    async with falcon.testing.ASGIConductor(app) as conductor:
        created = await conductor.simulate_post("/v1/sandboxes", json={"sandbox_id": sandbox_id, "template": "base"})
        assert created.status_code == 201, created.text
        taken = await conductor.simulate_post(f"/v1/sandboxes/{sandbox_id}/snapshots", json={"snapshot_id": "s1"})
        assert (taken.status_code, taken.json["snapshot_id"]) == (201, "s1")
        listed = await conductor.simulate_get("/v1/snapshots")
        assert [s["snapshot_id"] for s in listed.json["snapshots"]] == ["s1"]
        bad = await conductor.simulate_post(f"/v1/sandboxes/{sandbox_id}/snapshots", json={"snapshot_id": "a b"})
        assert bad.status_code == 400
        assert (await conductor.simulate_delete("/v1/snapshots/s1")).status_code == 204
        assert (await conductor.simulate_delete("/v1/snapshots/s1")).status_code == 404
        assert (await conductor.simulate_delete(f"/v1/sandboxes/{sandbox_id}")).status_code == 204


async def test_env_vars_are_sent_unless_the_guest_has_the_wanted_ones(env: Env) -> None:
    """A warm template's guest holds no env vars, so an empty map is not sent (it costs a restored guest's first
    request under TCG); a snapshot's guest holds its source's, so there even an empty map is sent, to clear them."""
    async with env.manager() as manager:
        sent: dict[str, object] = {}
        init = manager._envd.init

        async def recording(address: str, **kwargs: Any) -> None:
            sent[address] = kwargs["env_vars"]
            await init(address, **kwargs)

        manager._envd.init = recording  # type: ignore[method-assign]
        plain = await manager.create(CreateSandbox(sandbox_id=sid(1), template="base"))
        with_env = await manager.create(CreateSandbox(sandbox_id=sid(2), template="base", env_vars={"A": "1"}))
        await manager.snapshot(sid(2), "snapenv")
        clone = await manager.create(CreateSandbox(sandbox_id=sid(3), template="snapenv"))
        assert sent[plain.envd_address] is None
        assert sent[with_env.envd_address] == {"A": "1"}
        assert sent[clone.envd_address] == {}, "clears what the snapshot's guest had"
        for n in (1, 2, 3):
            await manager.destroy(sid(n))
        await manager.delete_snapshot("snapenv")
    env.nothing_left()
