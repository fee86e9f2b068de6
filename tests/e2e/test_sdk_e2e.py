"""The official e2b SDK against a real `wrenn up` with real microVMs (TCG here)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox, SandboxQuery
from e2b.exceptions import NotFoundException

from tests.e2e.conftest import Up, free_port, running_up, skip_reason, wait_until

pytestmark = [pytest.mark.vm, pytest.mark.sdk, pytest.mark.slow, pytest.mark.root]


def _second_team_key(up: Up) -> str:
    session = up.admin_session()
    headers = {"Authorization": f"Bearer {session}"}
    with httpx.Client(base_url=up.url, headers=headers) as c:
        team = c.post("/v1/teams", json={"name": "second"})
        assert team.status_code == 201, team.text
        key = c.post(f"/v1/teams/{team.json()['id']}/api-keys", json={"name": "e2e"})
        assert key.status_code == 201, key.text
        return str(key.json()["key"])


def test_sandbox_lifecycle_through_the_sdk(e2b_env: Up) -> None:
    sbx = Sandbox.create("base", timeout=300, metadata={"e2e": "lifecycle"})
    try:
        result = sbx.commands.run("echo hello from $(hostname) && id -un")
        assert result.exit_code == 0
        assert result.stdout.startswith("hello from")

        sbx.files.write("/home/user/e2e.txt", "written by the sdk")
        assert sbx.files.read("/home/user/e2e.txt") == "written by the sdk"
        assert sbx.commands.run("cat /home/user/e2e.txt").stdout == "written by the sdk"

        listed = Sandbox.list(query=SandboxQuery(metadata={"e2e": "lifecycle"})).next_items()
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
        assert Sandbox.list(query=SandboxQuery(metadata={"e2e": "nothing"})).next_items() == []

        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.metadata == {"e2e": "lifecycle"}
        before = info.end_at
        sbx.set_timeout(120)
        assert sbx.get_info().end_at < before

        again = Sandbox.connect(sbx.sandbox_id)
        assert again.commands.run("echo again").stdout.strip() == "again"

        # a second team sees nothing: not through the API, not through the proxy
        other_key = _second_team_key(e2b_env)
        with pytest.raises(NotFoundException):
            Sandbox.connect(sbx.sandbox_id, api_key=other_key)
        assert sbx.sandbox_id not in [s.sandbox_id for s in Sandbox.list(api_key=other_key).next_items()]
        with httpx.Client(base_url=e2b_env.url) as raw:
            foreign = raw.get("/health", headers={"E2b-Sandbox-Id": sbx.sandbox_id, "X-API-KEY": other_key})
            assert foreign.status_code == 502
            mine = raw.get("/health", headers={"E2b-Sandbox-Id": sbx.sandbox_id})
            assert mine.status_code == 204
    finally:
        assert sbx.kill()
    assert not sbx.is_running()
    with pytest.raises(NotFoundException):
        Sandbox.connect(sbx.sandbox_id)


def test_timeout_expiry_kills_the_sandbox(e2b_env: Up) -> None:
    sbx = Sandbox.create("base", timeout=3)
    assert sbx.commands.run("true").exit_code == 0

    def gone() -> bool:
        return not sbx.is_running()

    wait_until(gone, 60, "the sandbox to expire")
    with httpx.Client(base_url=e2b_env.url) as raw:
        assert raw.get("/health", headers={"E2b-Sandbox-Id": sbx.sandbox_id}).status_code == 502
    with pytest.raises(NotFoundException):
        Sandbox.connect(sbx.sandbox_id)
    with pytest.raises(NotFoundException):
        sbx.get_info()


def test_wrenn_up_restarts_on_its_data_dir() -> None:
    """A second start reuses the private cluster, keeps the key and the host (no second registration), and serves
    sandboxes again: its agent is still reachable where the control plane has it on record."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    data_dir = Path(tempfile.mkdtemp(prefix="wrenn-e2e-restart-"))
    port = free_port()
    try:
        with running_up(data_dir, port, "wrenn-e2e-restart-1.log") as first:
            sbx = Sandbox.create("base", api_key=first.api_key, api_url=first.url, sandbox_url=first.url)
            assert sbx.commands.run("echo first").stdout.strip() == "first"
            sbx.kill()
        with running_up(data_dir, port, "wrenn-e2e-restart-2.log") as second:
            assert second.api_key == first.api_key
            assert not any("host registered" in line for line in second.output)
            sbx = Sandbox.create("base", api_key=second.api_key, api_url=second.url, sandbox_url=second.url)
            assert sbx.commands.run("echo second").stdout.strip() == "second"
            sbx.kill()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
