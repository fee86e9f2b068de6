"""Pause and resume through the official e2b SDK against a real `wrenn up` (private PostgreSQL, real agent, real VMs
under TCG): `pause`/`beta_pause`, `Sandbox.connect` resuming, state shown as paused, processes, a listener, tmpfs and
disk files surviving, id and access token unchanged, `onTimeout: pause` pausing instead of killing, a guest HTTP
server answering through the proxy before a pause and after the resume, and proxy traffic auto-resuming a sandbox
created with ``auto_resume``."""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox, SandboxNotFoundException, SandboxQuery, SandboxState

from tests.e2e.conftest import Up, free_port, running_up, skip_reason, wait_until

pytestmark = [pytest.mark.vm, pytest.mark.sdk, pytest.mark.slow, pytest.mark.root]


@pytest.fixture(scope="module")
def own_up() -> Iterator[Up]:
    """`wrenn up` like the shared fixture, but with host resource names and a transit network of its own, so it
    never collides with another `wrenn up` on this machine (benchmarks, other suites) using the defaults."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    data_dir = Path(tempfile.mkdtemp(prefix="wrenn-pause-"))
    own_resources = {
        "WRENN_AGENT_RESOURCE_PREFIX": f"wp{secrets.token_hex(2)}",
        "WRENN_AGENT_TRANSIT_CIDR": f"10.{150 + secrets.randbelow(40)}.0.0/16",
    }
    try:
        with running_up(data_dir, free_port(), "wrenn-pause-e2e-last.log", own_resources) as up:
            yield up
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def e2b_env(own_up: Up, monkeypatch: pytest.MonkeyPatch) -> Up:
    for key, value in own_up.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    return own_up


COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /dev/shm/counter; sleep 0.1; done"
SERVER = "python3 -m http.server 8080 --bind 127.0.0.1 --directory /home/user"
FETCH = "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8080/disk.txt').read().decode())\""


def counter(sbx: Sandbox) -> int:
    """The guest counter's value; 0 before its first write."""
    if not sbx.files.exists("/dev/shm/counter"):
        return 0
    return int(sbx.files.read("/dev/shm/counter").strip() or "0")


def counter_moves(sbx: Sandbox, above: int) -> int:
    deadline = time.monotonic() + 60
    while (value := counter(sbx)) <= above:
        assert time.monotonic() < deadline, f"counter stuck at {value}"
        time.sleep(0.2)
    return value


def serves(sbx: Sandbox) -> bool:
    """Whether the guest's HTTP listener answers yet (the fetch exits 1 while it is still starting)."""
    result = sbx.commands.run(FETCH + " || true")
    return bool(result.stdout.strip() == "on the disk")


def detail(up: Up, sandbox_id: str) -> dict[str, object]:
    with httpx.Client(base_url=up.url, headers={"X-API-KEY": up.api_key}, timeout=30) as client:
        response = client.get(f"/sandboxes/{sandbox_id}")
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body


def test_pause_and_connect_resume_keep_processes_files_id_and_token(e2b_env: Up) -> None:
    sbx = Sandbox.create("base", timeout=300, metadata={"e2e": "pause"})
    try:
        sbx.commands.run(COUNTER, background=True)
        sbx.commands.run(SERVER, background=True)
        sbx.files.write("/home/user/disk.txt", "on the disk")
        sbx.files.write("/dev/shm/tmpfs.txt", "in tmpfs")
        before = counter_moves(sbx, 0)
        token = detail(e2b_env, sbx.sandbox_id)["envdAccessToken"]
        wait_until(lambda: serves(sbx), 60, "the listener")

        assert sbx.pause() is True
        assert sbx.beta_pause() is False, "pausing a paused sandbox answers 409 -> False"
        with pytest.raises(SandboxNotFoundException):
            Sandbox.pause("unknown0000000000000")  # 404
        with httpx.Client(base_url=e2b_env.url, headers={"X-API-KEY": e2b_env.api_key}) as raw:
            legacy = raw.post(f"/sandboxes/{sbx.sandbox_id}/resume", json={"timeout": 300})
            assert legacy.status_code == 201, legacy.text  # the legacy resume of e2b 2.0-2.5 and 1.x
            assert raw.post(f"/sandboxes/{sbx.sandbox_id}/resume", json={}).status_code == 409  # already running
            assert raw.post(f"/sandboxes/{sbx.sandbox_id}/pause").status_code == 204  # no body (older SDKs)
        assert detail(e2b_env, sbx.sandbox_id)["state"] == "paused"
        paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED], metadata={"e2e": "pause"})).next_items()
        assert [s.sandbox_id for s in paused] == [sbx.sandbox_id]
        with httpx.Client(base_url=e2b_env.url) as raw:
            assert raw.get("/health", headers={"E2b-Sandbox-Id": sbx.sandbox_id}).status_code == 502

        resumed = Sandbox.connect(sbx.sandbox_id, timeout=300)
        assert resumed.sandbox_id == sbx.sandbox_id
        info = detail(e2b_env, sbx.sandbox_id)
        assert (info["state"], info["envdAccessToken"]) == ("running", token)
        after = counter(resumed)
        assert before <= after < before + 100, f"the counter restarted or jumped: {before} -> {after}"
        counter_moves(resumed, after)
        assert resumed.files.read("/home/user/disk.txt") == "on the disk"
        assert resumed.files.read("/dev/shm/tmpfs.txt") == "in tmpfs"
        assert resumed.commands.run(FETCH).stdout.strip() == "on the disk", "the listener serves after resume"

        again = Sandbox.connect(sbx.sandbox_id)  # running: 200, nothing resumed
        assert again.commands.run("echo again").stdout.strip() == "again"
        for _cycle in range(3):
            assert again.pause() is True
            again = Sandbox.connect(sbx.sandbox_id)
        counter_moves(again, after)
    finally:
        assert sbx.kill()
    assert not sbx.is_running()


def test_on_timeout_pause_pauses_instead_of_killing(e2b_env: Up) -> None:
    sbx = Sandbox.create("base", timeout=4, lifecycle={"on_timeout": "pause"})
    try:
        sbx.files.write("/dev/shm/kept.txt", "kept")
        wait_until(lambda: detail(e2b_env, sbx.sandbox_id)["state"] == "paused", 120, "the timeout to pause it")
        lifecycle = detail(e2b_env, sbx.sandbox_id)["lifecycle"]
        assert isinstance(lifecycle, dict)
        assert lifecycle["onTimeout"] == "pause"
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=300)
        assert resumed.files.read("/dev/shm/kept.txt") == "kept"
        assert detail(e2b_env, sbx.sandbox_id)["state"] == "running"
    finally:
        sbx.kill()


def test_snapshot_create_list_start_from_and_delete(e2b_env: Up) -> None:
    sbx = Sandbox.create("base", timeout=300)
    clone: Sandbox | None = None
    try:
        sbx.commands.run(COUNTER, background=True)
        sbx.files.write("/home/user/snap.txt", "from the snapshot")
        counter_moves(sbx, 0)
        snap = sbx.create_snapshot("e2e-snap")
        assert snap.names == ["e2e-snap"]
        assert sbx.commands.run("echo alive").stdout.strip() == "alive", "the source keeps running"
        listed = Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id).next_items()
        assert [s.snapshot_id for s in listed] == [snap.snapshot_id]
        assert [s.snapshot_id for s in Sandbox.list_snapshots(name="e2e-snap").next_items()] == [snap.snapshot_id]

        clone = Sandbox.create(snap.snapshot_id, timeout=300)
        assert clone.sandbox_id != sbx.sandbox_id
        assert clone.files.read("/home/user/snap.txt") == "from the snapshot"
        counter_moves(clone, counter(clone))  # the snapshot's process runs on in the new sandbox
        clone.files.write("/home/user/only-in-clone.txt", "clone")
        assert not sbx.files.exists("/home/user/only-in-clone.txt"), "a clone is independent of its source"

        with pytest.raises(Exception, match="409"):
            Sandbox.delete_snapshot(snap.snapshot_id)  # a live sandbox still restores from it
        assert clone.kill()
        clone = None
        assert Sandbox.delete_snapshot(snap.snapshot_id) is True
        assert Sandbox.delete_snapshot(snap.snapshot_id) is False
        assert Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id).next_items() == []
    finally:
        if clone is not None:
            clone.kill()
        sbx.kill()


def test_fork_gives_independent_sandboxes(e2b_env: Up) -> None:
    sbx = Sandbox.create("base", timeout=300)
    forks: list[Sandbox] = []
    try:
        sbx.files.write("/home/user/before-fork.txt", "shared past")
        results = sbx.fork(count=2, timeout=120)
        forks = [r for r in results if isinstance(r, Sandbox)]
        assert len(forks) == 2, results
        assert len({sbx.sandbox_id, *(f.sandbox_id for f in forks)}) == 3
        for n, fork in enumerate(forks):
            assert fork.files.read("/home/user/before-fork.txt") == "shared past"
            fork.files.write("/home/user/mine.txt", f"fork {n}")
        assert [f.files.read("/home/user/mine.txt") for f in forks] == ["fork 0", "fork 1"]
        assert not sbx.files.exists("/home/user/mine.txt"), "forks are independent of their source"
        assert sbx.commands.run("echo alive").stdout.strip() == "alive"
    finally:
        for fork in forks:
            fork.kill()
        sbx.kill()


GUEST_PORT = 8080
LOOPBACK_PORT = 8081  # a server bound to the guest's 127.0.0.1 only: envd relays it (--forward-localhost)


def through_proxy(up: Up, sandbox_id: str, path: str, port: int = GUEST_PORT) -> httpx.Response:
    """A request to a guest port through `wrenn up`'s proxy, routed by header like E2B's SDKs do."""
    headers = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(port)}
    return httpx.get(f"{up.url}{path}", headers=headers, timeout=120)


def start_guest_server(up: Up, sbx: Sandbox, *, loopback_too: bool = False) -> None:
    sbx.files.write("/home/user/page.txt", "served by the guest")
    sbx.commands.run(f"python3 -m http.server {GUEST_PORT} --directory /home/user", background=True)
    wait_until(lambda: through_proxy(up, sbx.sandbox_id, "/page.txt").status_code == 200, 60, "the guest server")
    if loopback_too:
        server = f"python3 -m http.server {LOOPBACK_PORT} --bind 127.0.0.1 --directory /home/user"
        sbx.commands.run(server, background=True)
        wait_until(
            lambda: through_proxy(up, sbx.sandbox_id, "/page.txt", LOOPBACK_PORT).status_code == 200,
            60,
            "the loopback-only guest server, relayed by envd",
        )


def test_a_guest_server_answers_through_the_proxy_before_pause_and_after_resume(e2b_env: Up) -> None:
    sbx = Sandbox.create("base", timeout=300)
    try:
        start_guest_server(e2b_env, sbx, loopback_too=True)
        assert through_proxy(e2b_env, sbx.sandbox_id, "/page.txt").text == "served by the guest"
        assert through_proxy(e2b_env, sbx.sandbox_id, "/page.txt", LOOPBACK_PORT).text == "served by the guest"
        token = detail(e2b_env, sbx.sandbox_id)["envdAccessToken"]
        assert sbx.pause() is True
        paused = through_proxy(e2b_env, sbx.sandbox_id, "/page.txt")
        assert paused.status_code == 502, "no auto-resume: a paused sandbox answers 502"
        assert paused.json()["sandboxId"] == sbx.sandbox_id
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=300)
        assert resumed.sandbox_id == sbx.sandbox_id
        assert detail(e2b_env, sbx.sandbox_id)["envdAccessToken"] == token
        after = through_proxy(e2b_env, sbx.sandbox_id, "/page.txt")
        assert (after.status_code, after.text) == (200, "served by the guest"), "the same server, resumed"
        relayed = through_proxy(e2b_env, sbx.sandbox_id, "/page.txt", LOOPBACK_PORT)
        assert (relayed.status_code, relayed.text) == (200, "served by the guest"), "the relay survives the pause"
    finally:
        sbx.kill()


def test_proxy_traffic_auto_resumes_a_paused_sandbox(e2b_env: Up) -> None:
    sbx = Sandbox.create("base", timeout=300, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        start_guest_server(e2b_env, sbx)
        lifecycle = detail(e2b_env, sbx.sandbox_id)["lifecycle"]
        assert lifecycle == {"autoResume": True, "onTimeout": "pause"}
        assert sbx.pause() is True
        assert detail(e2b_env, sbx.sandbox_id)["state"] == "paused"
        woken = through_proxy(e2b_env, sbx.sandbox_id, "/page.txt")
        assert (woken.status_code, woken.text) == (200, "served by the guest"), "resumed by the request, then served"
        assert detail(e2b_env, sbx.sandbox_id)["state"] == "running"
        assert sbx.commands.run("echo awake").stdout.strip() == "awake", "envd works with the same token"
    finally:
        sbx.kill()
