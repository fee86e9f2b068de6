"""Fixtures for envd tests: envd as a real subprocess (free port, or 49983 for the e2b SDK's debug mode), the
`user` account the guest image has, and a small Connect client speaking the wire format by hand."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import json
import os
import pwd
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

DEBUG_PORT = 49983
DEBUG_LOCK = Path(tempfile.gettempdir()) / "wrenn-envd-49983.lock"


@pytest.fixture(scope="session")
def os_user() -> str:
    """The `user` account (home /home/user) that guest images have; created when missing (needs root)."""
    if _user_exists("user"):
        return "user"
    if os.geteuid() != 0:
        pytest.skip("needs root to create the `user` account")
    result = subprocess.run(["useradd", "-m", "-s", "/bin/bash", "user"], capture_output=True, check=False)
    if result.returncode not in (0, 9):  # 9: created meanwhile by a parallel session
        raise RuntimeError(f"useradd failed: {result.stderr.decode()}")
    return "user"


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class EnvdProcess:
    """A running `python -m wrenn.envd` and its base URL."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log
        self.port = int(url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


REPO = Path(__file__).resolve().parents[2]
GUEST_PYTHON = "/usr/bin/python3"  # Debian's python3 + python3-protobuf: what the guest image runs envd with


@functools.cache
def guest_python_available() -> bool:
    if not os.path.exists(GUEST_PYTHON):
        return False
    probe = subprocess.run([GUEST_PYTHON, "-c", "import google.protobuf"], capture_output=True, check=False)
    return probe.returncode == 0


def start_envd(tmp: Path, *args: str, port: int = 0, host: str = "127.0.0.1", flavour: str = "host") -> EnvdProcess:
    """`host`: the venv's python runs `wrenn.envd`; `guest`: Debian's python3 runs the folder as package `envd`."""
    port_file = tmp / f"envd-port-{time.monotonic_ns()}"
    log = tmp / f"envd-{time.monotonic_ns()}.log"
    if flavour == "guest":
        cmd, cwd = [GUEST_PYTHON, "-m", "envd"], str(REPO)
    else:
        cmd, cwd = [sys.executable, "-m", "wrenn.envd"], None
    cmd += ["--host", host, "--port", str(port), "--port-file", str(port_file)]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen([*cmd, *args], stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"envd exited with {proc.returncode}: {log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"envd did not start: {log.read_text()}")
        time.sleep(0.02)
    url = f"http://{host}:{port_file.read_text()}"
    with httpx.Client() as client:
        assert client.get(url + "/health").status_code == 204
    return EnvdProcess(proc, url, log)


@pytest.fixture(params=["host", "guest"])
def envd_flavour(request: pytest.FixtureRequest) -> str:
    """Every wire test runs twice: on the venv's python/protobuf and on Debian's (the guest's) python3-protobuf."""
    flavour: str = request.param
    if flavour == "guest" and not guest_python_available():
        pytest.skip(f"{GUEST_PYTHON} with python3-protobuf is not installed (apt-get install python3-protobuf)")
    return flavour


@pytest.fixture
def envd_factory(tmp_path: Path, envd_flavour: str) -> Iterator[Callable[..., EnvdProcess]]:
    """Start envd subprocesses with extra flags; all are stopped at teardown."""
    started: list[EnvdProcess] = []

    def factory(*args: str) -> EnvdProcess:
        envd = start_envd(tmp_path, *args, flavour=envd_flavour)
        started.append(envd)
        return envd

    yield factory
    for envd in started:
        envd.stop()


@pytest.fixture
def envd_server(envd_factory: Callable[..., EnvdProcess]) -> str:
    """Base URL of a fresh envd on a free loopback port."""
    return envd_factory().url


@pytest.fixture(scope="module", params=["host", "guest"])
def envd_debug_port(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, os_user: str
) -> Iterator[str]:
    """envd on 127.0.0.1:49983, where the e2b SDK's debug mode looks; one holder at a time (lock file).

    Module-scoped: a test module of SDK tests shares one envd (and holds the lock meanwhile). Runs on both
    interpreters, like `envd_flavour`.
    """
    flavour: str = request.param
    if flavour == "guest" and not guest_python_available():
        pytest.skip(f"{GUEST_PYTHON} with python3-protobuf is not installed (apt-get install python3-protobuf)")
    tmp_path = tmp_path_factory.mktemp("envd-debug")
    with open(DEBUG_LOCK, "a+b") as lock:
        deadline = time.monotonic() + 300
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail("port 49983 lock held for more than 300 s")
                time.sleep(0.1)
        try:
            _wait_port_free(DEBUG_PORT)
            envd = start_envd(tmp_path, port=DEBUG_PORT, flavour=flavour)
            try:
                yield "http://localhost:49983"
            finally:
                envd.stop()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def e2b_sandbox(envd_debug_port: str) -> Iterator[Any]:
    """An e2b `Sandbox` in the SDK's debug mode (no REST API): every call goes to the envd on 49983."""
    from e2b import Sandbox

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("E2B_DEBUG", "true")
        patch.delenv("E2B_SANDBOX_URL", raising=False)
        yield Sandbox.create()


def _wait_port_free(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"127.0.0.1:{port} is busy (something outside the lock holds it)")
        time.sleep(0.1)


# -- a hand-written Connect client: the tests check the wire format itself --------------------------------------


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


def envelope(obj: Any, flags: int = 0) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">BI", flags, len(data)) + data


def parse_envelopes(data: bytes) -> list[tuple[int, Any]]:
    out = []
    while data:
        flags, length = struct.unpack(">BI", data[:5])
        out.append((flags, json.loads(data[5 : 5 + length])))
        data = data[5 + length :]
    return out


class Connect:
    """Unary and server-streaming Connect calls with the JSON codec over one httpx client."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def close(self) -> None:
        self.http.close()

    def unary(self, method: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.http.post(
            "/" + method,
            content=json.dumps(body),
            headers={"Content-Type": "application/json", "Connect-Protocol-Version": "1", **(headers or {})},
        )

    def stream(self, method: str, body: Any, headers: dict[str, str] | None = None) -> list[Any]:
        """The whole stream: every message (dicts) and, last, the end-of-stream message as ("end", dict)."""
        response = self.http.post(
            "/" + method,
            content=envelope(body),
            headers={"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1", **(headers or {})},
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/connect+json"
        frames = parse_envelopes(response.content)
        assert frames[-1][0] == 2, "stream must finish with an end-of-stream envelope"
        return [msg for _, msg in frames[:-1]] + [("end", frames[-1][1])]

    @contextlib.contextmanager
    def open_stream(self, method: str, body: Any, headers: dict[str, str] | None = None) -> Iterator[StreamReader]:
        with self.http.stream(
            "POST",
            "/" + method,
            content=envelope(body),
            headers={"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1", **(headers or {})},
        ) as response:
            assert response.status_code == 200
            yield StreamReader(response)


class StreamReader:
    """Reads envelopes one at a time from a live streamed response."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.iter_raw()
        self._buffer = b""

    def next(self) -> tuple[int, Any]:
        while True:
            if len(self._buffer) >= 5:
                flags, length = struct.unpack(">BI", self._buffer[:5])
                if len(self._buffer) >= 5 + length:
                    msg = json.loads(self._buffer[5 : 5 + length])
                    self._buffer = self._buffer[5 + length :]
                    return flags, msg
            self._buffer += next(self._chunks)

    def until_end(self) -> list[Any]:
        out = []
        while True:
            flags, msg = self.next()
            if flags & 2:
                out.append(("end", msg))
                return out
            out.append(msg)


@pytest.fixture
def rpc(envd_server: str) -> Iterator[Connect]:
    client = Connect(envd_server)
    yield client
    client.close()


def output(messages: list[Any], kind: str = "stdout") -> bytes:
    return b"".join(
        base64.b64decode(m["event"]["data"][kind])
        for m in messages
        if isinstance(m, dict) and kind in m.get("event", {}).get("data", {})
    )


def end_event(messages: list[Any]) -> dict[str, Any]:
    ends = [m["event"]["end"] for m in messages if isinstance(m, dict) and "end" in m.get("event", {})]
    assert len(ends) == 1, messages
    return ends[0]  # type: ignore[no-any-return]
