"""`wrenn agent` serves HTTPS and, with a client CA, requires a client certificate from it (mutual TLS)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from wrenn.agent._processes import kill_processes_mentioning
from wrenn.provision.ca.testing import EphemeralCA, ephemeral_ca

__all__ = ["ephemeral_ca"]

pytestmark = [pytest.mark.root]


@pytest.fixture
def agent_url(ephemeral_ca: EphemeralCA) -> Iterator[str]:
    server = ephemeral_ca.host_files("agent")
    data = Path(tempfile.mkdtemp(prefix="wat-", dir="/tmp"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # no prepared network slots: a fake-driver agent needs none, and they would outlive it on the default transit
    env = os.environ | {
        "WRENN_AGENT_RESOURCE_PREFIX": f"wt{secrets.token_hex(2)}",
        "WRENN_AGENT_DRIVER": "fake",
        "WRENN_AGENT_NETWORK_POOL": "0",
    }
    argv = [sys.executable, "-m", "wrenn.cli", "agent", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"]
    argv += ["--tls-cert", str(server.cert_file), "--tls-key", str(server.key_file)]
    argv += ["--tls-client-ca", str(ephemeral_ca.ca.ca_file)]
    log = data / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while True:  # wait for the listening socket (state), bounded
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"https://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        kill_processes_mentioning(str(data) + "/")
        shutil.rmtree(data, ignore_errors=True)


def test_https_with_client_certificate(agent_url: str, ephemeral_ca: EphemeralCA) -> None:
    client = ephemeral_ca.client_files("wrenn-api")
    context = ssl.create_default_context(cafile=str(ephemeral_ca.ca.ca_file))
    context.load_cert_chain(str(client.cert_file), str(client.key_file))
    with httpx.Client(verify=context, timeout=30) as http:
        response = http.get(f"{agent_url}/v1/health")
    assert response.status_code == 200
    assert response.json()["accelerator"] in {"tcg", "kvm"}


def test_client_without_certificate_is_refused(agent_url: str, ephemeral_ca: EphemeralCA) -> None:
    context = ssl.create_default_context(cafile=str(ephemeral_ca.ca.ca_file))
    with httpx.Client(verify=context, timeout=30) as http, pytest.raises(httpx.TransportError):
        http.get(f"{agent_url}/v1/health").raise_for_status()
