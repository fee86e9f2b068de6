"""The control plane's pause/resume state machine (`wrenn.api.lifecycle.PauseResume`) on a real PostgreSQL database:
conditional transitions, 409/404, rollback when the agent fails, and `settle` repairing a row a dead control plane
left ``pausing``/``resuming``. The host agent is a scripted stand-in (its HTTP API is tested in tests/agent)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from wrenn.api.lifecycle import PauseResume
from wrenn.api.sandboxes import SandboxRecord, SandboxState
from wrenn.api.store import Store
from wrenn.protocol.agent import Accelerator, SandboxInfo
from wrenn.protocol.agent import SandboxState as AgentState
from wrenn.protocol.errors import Conflict, NotFound, Unavailable

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


@dataclass
class ScriptedAgent:
    """Answers like a host agent; `state` is what it reports, `fail` makes pause/resume raise."""

    state: AgentState = AgentState.RUNNING
    fail: Exception | None = None
    calls: list[str] = field(default_factory=list)

    def _info(self, sandbox_id: str) -> SandboxInfo:
        return SandboxInfo(
            sandbox_id=sandbox_id,
            template="base",
            state=self.state,
            vcpus=1,
            memory_mb=256,
            disk_mb=2048,
            created_at=NOW,
            envd_address="10.0.0.2:49983",
            accelerator=Accelerator.TCG,
        )

    async def pause_sandbox(self, sandbox_id: str, *, memory: bool = True) -> SandboxInfo:
        self.calls.append(f"pause memory={memory}")
        if self.fail is not None:
            raise self.fail
        self.state = AgentState.PAUSED
        return self._info(sandbox_id)

    async def resume_sandbox(self, sandbox_id: str) -> SandboxInfo:
        self.calls.append("resume")
        if self.fail is not None:
            raise self.fail
        self.state = AgentState.RUNNING
        return self._info(sandbox_id)

    async def get_sandbox(self, sandbox_id: str) -> SandboxInfo:
        self.calls.append("get")
        return self._info(sandbox_id)


@dataclass
class Hosts:
    agent: ScriptedAgent

    async def client(self, host_id: str) -> ScriptedAgent:
        return self.agent


@dataclass
class Env:
    store: Store
    team: uuid.UUID
    agent: ScriptedAgent
    lifecycle: PauseResume
    paused: list[str]
    resumed: list[str]

    async def sandbox(self, state: SandboxState = SandboxState.RUNNING) -> str:
        sandbox_id = uuid.uuid4().hex[:20]
        host = f"h{uuid.uuid4().hex[:10]}"
        async with self.store.transaction() as conn:
            await conn.execute(
                "INSERT INTO hosts (id, name, address, secret_hash, created_at, last_heartbeat_at) "
                "VALUES (%s, 'h', 'http://127.0.0.1:1', 'x', now(), now())",
                (host,),
            )
            await conn.execute(
                "INSERT INTO sandboxes (id, team_id, host_id, template, state, vcpus, memory_mb, disk_mb, envd_version,"
                " envd_token, created_at, started_at, end_at) VALUES (%s, %s, %s, 'base', %s, 1, 256, 2048, '0.6.13',"
                " 'tok', now(), now(), now())",
                (sandbox_id, self.team, host, state.value),
            )
        return sandbox_id

    async def state(self, sandbox_id: str) -> tuple[SandboxState, datetime]:
        row = await self.store.fetch_one("SELECT state, end_at FROM sandboxes WHERE id = %s", (sandbox_id,))
        assert row is not None
        return SandboxState(row["state"]), row["end_at"]


@pytest.fixture
async def env(store: Store) -> Env:
    team = uuid.uuid4()
    async with store.transaction() as conn:
        await conn.execute("INSERT INTO teams (id, name, created_at) VALUES (%s, 'pause', now())", (team,))
    agent = ScriptedAgent()
    paused: list[str] = []
    resumed: list[str] = []

    async def on_resumed(rec: SandboxRecord) -> None:
        resumed.append(rec.id)

    lifecycle = PauseResume(
        store=store,
        hosts=Hosts(agent),  # type: ignore[arg-type]
        clock=lambda: NOW,
        on_paused=lambda rec: paused.append(rec.id),
        on_resumed=on_resumed,
    )
    return Env(store, team, agent, lifecycle, paused, resumed)


async def test_pause_then_resume_with_statuses(env: Env) -> None:
    sandbox_id = await env.sandbox()
    rec = await env.lifecycle.pause(env.team, sandbox_id, memory=False)
    assert rec.state is SandboxState.PAUSED
    assert env.agent.calls == ["pause memory=False"]
    assert env.paused == [sandbox_id], "the proxy is told before the VM stops"
    with pytest.raises(Conflict):
        await env.lifecycle.pause(env.team, sandbox_id)
    with pytest.raises(NotFound):
        await env.lifecycle.pause(uuid.uuid4(), sandbox_id)  # another team sees nothing
    with pytest.raises(NotFound):
        await env.lifecycle.pause(env.team, "nosuchsandbox0000000")
    resumed = await env.lifecycle.resume(env.team, sandbox_id, timeout_s=60)
    assert resumed is not None
    assert (resumed.state, resumed.end_at) == (SandboxState.RUNNING, NOW + timedelta(seconds=60))
    assert env.resumed == [sandbox_id]
    assert await env.lifecycle.resume(env.team, sandbox_id, timeout_s=60) is None, "running: nothing to resume"


async def test_a_failed_pause_leaves_the_sandbox_running(env: Env) -> None:
    sandbox_id = await env.sandbox()
    env.agent.fail = Unavailable("host down")
    with pytest.raises(Unavailable):
        await env.lifecycle.pause(env.team, sandbox_id)
    assert (await env.state(sandbox_id))[0] is SandboxState.RUNNING
    assert env.resumed == [sandbox_id], "the proxy learns the route again"


async def test_a_failed_resume_is_settled_from_the_agent(env: Env) -> None:
    sandbox_id = await env.sandbox(SandboxState.PAUSED)
    env.agent.state = AgentState.PAUSED
    env.agent.fail = Unavailable("restore failed")
    with pytest.raises(Unavailable):
        await env.lifecycle.resume(env.team, sandbox_id, timeout_s=60)
    assert (await env.state(sandbox_id))[0] is SandboxState.PAUSED, "still resumable"
    env.agent.state = AgentState.FAILED
    with pytest.raises(Unavailable):
        await env.lifecycle.resume(env.team, sandbox_id, timeout_s=60)
    assert (await env.state(sandbox_id))[0] is SandboxState.FAILED, "the agent's verdict is recorded, not lost"


@pytest.mark.parametrize(
    ("stuck", "agent_state", "resumes"),
    [(SandboxState.PAUSING, AgentState.PAUSED, True), (SandboxState.RESUMING, AgentState.RUNNING, False)],
)
async def test_a_row_left_mid_transition_by_a_dead_control_plane_is_settled_by_connect(
    env: Env, stuck: SandboxState, agent_state: AgentState, resumes: bool
) -> None:
    sandbox_id = await env.sandbox(stuck)
    env.agent.state = agent_state
    env.lifecycle.transition_wait_s = 0.2
    rec = await env.lifecycle.resume(env.team, sandbox_id, timeout_s=60)
    assert (rec is not None) is resumes
    assert (await env.state(sandbox_id))[0] is SandboxState.RUNNING
    assert "get" in env.agent.calls, "settled from what the agent reports"


@pytest.mark.parametrize("state", [SandboxState.PAUSING, SandboxState.PAUSED, SandboxState.RESUMING])
async def test_kill_reaches_paused_and_mid_transition_sandboxes(env: Env, state: SandboxState) -> None:
    from wrenn.api.sandboxes import _records as records

    sandbox_id = await env.sandbox(state)
    stopped = await records.stop_running(env.store, sandbox_id, env.team, reason="killed", at=NOW)
    assert stopped is not None, "a kill must never miss a sandbox because it is (being) paused"
    assert (await env.state(sandbox_id))[0] is SandboxState.STOPPED
    if state is SandboxState.PAUSING:  # the pause in flight then finds the row gone
        env.agent.state = AgentState.RUNNING
        assert await env.lifecycle.resume(env.team, sandbox_id, timeout_s=1) is None
