"""/health, /init, /envs, /metrics and the access token over a real envd subprocess."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.envd.conftest import EnvdProcess


@pytest.fixture
def http(envd_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=envd_server) as client:
        yield client


def test_health_is_204_without_token(envd_factory: Callable[..., EnvdProcess]) -> None:
    envd = envd_factory("--access-token", "tok")
    with httpx.Client(base_url=envd.url) as client:
        response = client.get("/health")
        assert response.status_code == 204
        assert response.content == b""


def test_init_sets_env_vars_served_by_envs(http: httpx.Client) -> None:
    assert http.get("/envs").json() == {}
    assert http.post("/init", json={"envVars": {"A": "1", "B": "2"}}).status_code == 204
    assert http.get("/envs").json() == {"A": "1", "B": "2"}


def test_init_token_then_enforced_with_exemptions(http: httpx.Client) -> None:
    assert http.post("/init", json={"accessToken": "s3cret"}).status_code == 204
    denied = http.get("/envs")
    assert denied.status_code == 401
    assert denied.json()["code"] == 401
    assert "message" in denied.json()
    assert http.get("/envs", headers={"X-Access-Token": "wrong"}).status_code == 401
    assert http.get("/envs", headers={"X-Access-Token": "s3cret"}).status_code == 200
    assert http.get("/metrics").status_code == 401
    assert http.get("/health").status_code == 204


def test_sync_flushes_and_needs_the_token_once_set(http: httpx.Client) -> None:
    """``POST /sync`` (Wrenn's: the agent calls it before a disk-only pause) answers 204 once the flush returned;
    like /envs it needs the token once one is set. That the data reaches the disk is shown with a real VM in
    tests/agent/test_pause_vm.py."""
    assert http.post("/sync").status_code == 204
    assert http.get("/sync").status_code in {404, 405}, "POST only"
    assert http.post("/init", json={"accessToken": "t0ken"}).status_code == 204
    assert http.post("/sync").status_code == 401
    assert http.post("/sync", headers={"X-Access-Token": "t0ken"}).status_code == 204


def test_init_cannot_replace_token_without_the_current_one(http: httpx.Client) -> None:
    assert http.post("/init", json={"accessToken": "first"}).status_code == 204
    stolen = http.post("/init", json={"accessToken": "second", "envVars": {"X": "1"}})
    assert stolen.status_code == 401
    # nothing was applied
    assert http.get("/envs", headers={"X-Access-Token": "first"}).json() == {}
    # the orchestrator re-sending the same token (snapshot restore) is fine
    assert http.post("/init", json={"accessToken": "first", "envVars": {"X": "1"}}).status_code == 204
    rotated = http.post("/init", json={"accessToken": "second"}, headers={"X-Access-Token": "first"})
    assert rotated.status_code == 204
    assert http.get("/envs", headers={"X-Access-Token": "second"}).json() == {"X": "1"}


def test_init_with_timestamp_succeeds_without_touching_the_clock(http: httpx.Client) -> None:
    before = time.time()
    far_past = "2001-01-01T00:00:00Z"
    assert http.post("/init", json={"timestamp": far_past}).status_code == 204
    assert http.post("/init", json={"timestamp": "garbage"}).status_code == 204
    assert http.post("/init", json={"timestamp": 978307200.5}).status_code == 204, "a number, as Wrenn's agent sends"
    assert time.time() >= before  # envd runs without --set-clock in tests: the host clock is untouched


def test_init_takes_a_padded_or_blank_body(http: httpx.Client) -> None:
    assert http.post("/init", content=b' \n {"envVars": {"P": "1"}} \r\n').status_code == 204
    assert http.get("/envs").json() == {"P": "1"}
    assert http.post("/init", content=b"  ").status_code == 204, "blank: no settings"
    assert http.get("/envs").json() == {"P": "1"}
    assert http.post("/init", json={"envVars": {}}).status_code == 204
    assert http.get("/envs").json() == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1]", "body must be a JSON object"),
        (b"{bad", "invalid JSON"),
        (b"{} {}", "invalid JSON: extra data"),
        (b"\xff{}", "invalid JSON"),
        (b'{"envVars": {"A": 1}}', "envVars must map strings to strings"),
        (b'{"defaultUser": "no-such-user-here"}', "defaultUser 'no-such-user-here' does not exist"),
        (b'{"accessToken": 5}', "accessToken must be a string"),
        (b'{"defaultWorkdir": 5}', "defaultWorkdir must be a string"),
    ],
)
def test_init_rejects_bad_bodies(http: httpx.Client, body: bytes, message: str) -> None:
    response = http.post("/init", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["code"] == 400
    assert message in response.json()["message"]


def test_metrics_report_cpu_memory_disk(http: httpx.Client) -> None:
    metrics = http.get("/metrics").json()
    assert metrics["cpu_count"] >= 1
    assert 0.0 <= metrics["cpu_used_pct"] <= 100.0
    assert 0 < metrics["mem_used"] < metrics["mem_total"]
    assert 0 < metrics["disk_used"] < metrics["disk_total"]
    assert metrics["mem_total_mib"] == metrics["mem_total"] // (1024 * 1024)
    assert abs(metrics["ts"] - time.time()) < 60


def test_unknown_route_is_json_404(http: httpx.Client) -> None:
    response = http.get("/nowhere")
    assert response.status_code == 404
    assert response.json() == {"code": 404, "message": "no route for /nowhere"}


def test_wrenn_envd_cli_serves(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    wrenn = Path(sys.executable).parent / "wrenn"
    cmd = [str(wrenn), "envd", "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file)]
    with subprocess.Popen(cmd) as proc:
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists():
                assert proc.poll() is None, "wrenn envd exited"
                assert time.monotonic() < deadline
                time.sleep(0.02)
            with httpx.Client() as client:
                assert client.get(f"http://127.0.0.1:{port_file.read_text()}/health").status_code == 204
        finally:
            proc.terminate()
    assert proc.returncode == 0  # SIGTERM is a clean shutdown


@pytest.mark.root
def test_clock_that_cannot_be_set_is_logged_not_an_error(os_user: str) -> None:
    """envd with --set-clock but without the privilege (runs as `user`): /init still answers 204."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop privileges")
    entry = pwd.getpwnam(os_user)
    with tempfile.TemporaryDirectory(prefix="envd-clock-") as tmp:  # pytest's tmp_path is not reachable by `user`
        os.chmod(tmp, 0o777)
        _clock_as_user(Path(tmp), setpriv, entry)


def _clock_as_user(tmp_path: Path, setpriv: str, entry: pwd.struct_passwd) -> None:
    port_file = tmp_path / "port"
    log = tmp_path / "envd.log"
    drop = [setpriv, f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]
    cmd = [*drop, sys.executable, "-m", "wrenn.envd", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--port-file", str(port_file), "--set-clock", "--log-level", "INFO"]
    with open(log, "wb") as out, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT) as proc:
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.02)
            url = f"http://127.0.0.1:{port_file.read_text()}"
            before = time.time()
            with httpx.Client() as client:
                assert client.post(url + "/init", json={"timestamp": "2001-01-01T00:00:00Z"}).status_code == 204
            assert time.time() >= before
        finally:
            proc.terminate()
    assert "cannot set the clock" in log.read_text()
