"""End-to-end fixtures: a real `wrenn up` subprocess (private PostgreSQL cluster, real agent, real VMs under TCG)
on a free loopback port with a temporary data dir, and the connection settings it printed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.vm, pytest.mark.sdk, pytest.mark.slow, pytest.mark.root]

START_LIMIT_S = 300.0


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TAP devices, cgroups)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (wrenn up builds the base image on first start)"
    return None


@dataclass
class Up:
    url: str
    api_key: str
    data_dir: Path
    proc: subprocess.Popen[str]
    output: list[str]

    def env(self) -> dict[str, str]:
        return {
            "E2B_API_URL": self.url,
            "E2B_SANDBOX_URL": self.url,
            "E2B_DOMAIN": "localhost",
            "E2B_API_KEY": self.api_key,
        }

    def admin_session(self) -> str:
        admin = dict(
            line.split("=", 1) for line in (self.data_dir / "admin.env").read_text().splitlines() if "=" in line
        )
        with httpx.Client(base_url=self.url) as c:
            r = c.post(
                "/v1/auth/login",
                json={"email": admin["WRENN_ADMIN_EMAIL"], "password": admin["WRENN_ADMIN_PASSWORD"]},
            )
            r.raise_for_status()
            return str(r.json()["token"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill_all(url: str, key: str) -> None:
    """The agent keeps sandboxes running across its restarts (by design): kill ours before stopping wrenn up."""
    with httpx.Client(base_url=url, headers={"X-API-KEY": key}, timeout=60) as c:
        for sandbox in c.get("/v2/sandboxes").json():
            c.delete(f"/sandboxes/{sandbox['sandboxID']}")


@contextlib.contextmanager
def running_up(
    data_dir: Path, port: int, log_name: str = "wrenn-e2e-last.log", extra_env: dict[str, str] | None = None
) -> Iterator[Up]:
    """A `wrenn up` subprocess until the block ends: its sandboxes are killed, then it gets SIGTERM."""
    # The image cache may be chosen (WRENN_IMAGE_CACHE); everything else is wrenn up's own defaults plus `extra_env`.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WRENN_", "E2B_")) or k == "WRENN_IMAGE_CACHE"}
    env |= extra_env or {}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wrenn.cli", "up", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    output: list[str] = []
    settings: dict[str, str] = {}
    ready = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if line.startswith("E2B_") and "=" in line:
                key, value = line.strip().split("=", 1)
                settings[key] = value
                if key == "E2B_API_KEY":
                    ready.set()
        ready.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        if not ready.wait(START_LIMIT_S) or "E2B_API_KEY" not in settings:
            raise RuntimeError("wrenn up did not become ready:\n" + "".join(output[-60:]))
        yield Up(settings["E2B_API_URL"], settings["E2B_API_KEY"], data_dir, proc, output)
    finally:
        if proc.poll() is None and "E2B_API_KEY" in settings:
            _kill_all(settings["E2B_API_URL"], settings["E2B_API_KEY"])
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        thread.join(10)
        # wrenn up's log for post-mortems (the data dir is removed by the caller)
        Path(tempfile.gettempdir(), log_name).write_text("".join(output))
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="session")
def wrenn_up() -> Iterator[Up]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    data_dir = Path(tempfile.mkdtemp(prefix="wrenn-e2e-"))
    try:
        with running_up(data_dir, free_port()) as up:
            yield up
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def e2b_env(wrenn_up: Up, monkeypatch: pytest.MonkeyPatch) -> Up:
    for key, value in wrenn_up.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    return wrenn_up


def wait_until(predicate: object, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)
