"""Mutual TLS end to end: the real control plane (with an internal CA) and a real `wrenn agent` process.

The agent registers with a one-time token and no TLS flags, gets its certificate from the CA, and serves HTTPS
requiring client certificates; the control plane's own agent client talks to it; clients with no, an expired, a
foreign-CA or a revoked certificate are refused by the running agent; SIGHUP rotates the agent's certificate and
the control plane keeps talking to it while a fresh handshake sees the new certificate — nothing restarts.
Certificates pass ``openssl verify`` against the CA.
"""

from __future__ import annotations

import asyncio
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
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
import uvicorn
from cryptography import x509

from tests.api.sandboxes.conftest import Stack
from wrenn.agent._processes import kill_processes_mentioning
from wrenn.agent.registration import load_identity
from wrenn.api.app import deps_of
from wrenn.api.deps import Deps
from wrenn.api.hosts import HostService, directory_of
from wrenn.api.hosts._records import get_host
from wrenn.api.sandboxes import create_public_app
from wrenn.api.settings import Settings
from wrenn.protocol.errors import Unavailable
from wrenn.provision.ca import CertificateAuthority, IssuedCertificate

pytestmark = [pytest.mark.root, pytest.mark.postgres, pytest.mark.slow]

DEADLINE_S = 60.0


@dataclass
class ControlPlane:
    url: str
    deps: Deps
    ca: CertificateAuthority
    server: uvicorn.Server
    task: asyncio.Task[None]


@pytest.fixture
async def control_plane(stack: Stack, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """`wrenn api`'s app with ``ca_dir`` set, served by uvicorn on a loopback port in this test's event loop."""
    ca_dir = tmp_path / "ca"
    ca = CertificateAuthority.create(ca_dir)
    settings = Settings(
        database_url=stack.database_url,
        ca_dir=ca_dir,
        data_dir=tmp_path / "api",
        job_workers=0,
        reconcile_interval_s=3600,
        host_heartbeat_ttl_s=3600,
    )
    public = create_public_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(public, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await _until(lambda: server.started or task.done(), "the control plane to start")
    assert not task.done(), task.exception()
    try:
        yield ControlPlane(f"http://127.0.0.1:{sock.getsockname()[1]}", deps_of(public.api), ca, server, task)
    finally:
        server.should_exit = True
        await task
        sock.close()
        with psycopg.connect(stack.database_url) as conn:
            conn.execute("UPDATE hosts SET state = 'removed' WHERE name = 'mtls-agent'")


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
async def agent(control_plane: ControlPlane) -> AsyncIterator[Agent]:
    """A real `wrenn agent` (fake VMM driver, private resource prefix and data dir) with only a token and the API
    URL: no TLS flags."""
    hosts = control_plane.deps.extras["hosts"]
    assert isinstance(hosts, HostService)
    token = (await hosts.create_token(created_by=None, ttl_s=600)).token
    data = Path(tempfile.mkdtemp(prefix="wam-", dir="/tmp"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {
        "WRENN_AGENT_RESOURCE_PREFIX": f"wb{secrets.token_hex(2)}",
        "WRENN_AGENT_DRIVER": "fake",
        "WRENN_AGENT_NETWORK_POOL": "0",  # a fake-driver agent needs no prepared network slots
        "WRENN_AGENT_CRL_REFRESH_S": "0.5",
        "WRENN_AGENT_NAME": "mtls-agent",
    }
    argv = [sys.executable, "-m", "wrenn.cli", "agent", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"]
    argv += ["--api-url", control_plane.url, "--registration-token", token]
    log = data / "agent.log"
    proc = await asyncio.to_thread(_spawn, argv, env, log)
    agent = Agent(proc, data, port, log)
    try:
        await _until(lambda: _listening(port) or proc.poll() is not None, "the agent to listen", agent.logs)
        assert proc.poll() is None, agent.logs()
        yield agent
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        kill_processes_mentioning(str(data) + "/")
        shutil.rmtree(data, ignore_errors=True)


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=out)


async def _until(condition: Callable[[], bool], what: str, logs: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{logs()}"
        await asyncio.sleep(0.05)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _client_context(ca_file: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _write(issued: IssuedCertificate, directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    issued.write(cert, key)
    return cert, key


def _health(url: str, context: ssl.SSLContext) -> int:
    """Status of GET /v1/health on a fresh connection; raises httpx.TransportError when the handshake is refused."""
    with httpx.Client(verify=context, timeout=10) as http:
        return http.get(f"{url}/v1/health").status_code


def _refused(url: str, context: ssl.SSLContext) -> bool:
    try:
        _health(url, context)
    except httpx.TransportError:
        return True
    return False


def _served_serial(port: int, context: ssl.SSLContext) -> int:
    """Serial of the certificate a fresh handshake with the agent sees."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _openssl_verify(ca_file: Path, cert: Path, crl: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["openssl", "verify", "-CAfile", str(ca_file)]
    if crl is not None:
        argv += ["-crl_check", "-CRLfile", str(crl)]
    return subprocess.run([*argv, str(cert)], capture_output=True, text=True, check=False)


def _serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wam-certs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_mutual_tls_between_the_control_plane_and_a_real_agent(
    control_plane: ControlPlane, agent: Agent, scratch: Path
) -> None:
    ca, deps = control_plane.ca, control_plane.deps
    tls_dir = agent.data_dir / "tls"
    host_pem, host_key, ca_pem, crl_pem = (tls_dir / n for n in ("host.pem", "host.key", "ca.pem", "crl.pem"))

    # Registration wrote the agent's key (0600, never sent), the certificate signed from its CSR, the CA and the CRL.
    assert oct(host_key.stat().st_mode & 0o777) == "0o600"
    assert oct(tls_dir.stat().st_mode & 0o777) == "0o700"
    assert ca_pem.read_text() == ca.ca_pem
    assert crl_pem.read_text() == ca.crl_pem
    issued = x509.load_pem_x509_certificate(host_pem.read_bytes())
    assert issued.not_valid_after_utc - datetime.now(UTC) > timedelta(days=6, hours=23)
    sans = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]

    # openssl agrees: the host certificate and the API's client certificate chain to the CA, and are not revoked.
    api_cert = deps.settings.data_dir / "api-client.pem"
    for cert in (host_pem, api_cert):
        result = _openssl_verify(ca.ca_file, cert, ca.crl_file)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip().endswith(": OK")

    # The control plane recorded the host at https:// and calls it with its own (reloading) mTLS client.
    identity = load_identity(agent.data_dir)
    assert identity is not None
    assert identity.certificate_pem == host_pem.read_text()
    host_id = identity.host_id
    record = await get_host(deps.store, host_id)
    assert record is not None
    assert record.address == agent.url
    client = await directory_of(deps).client(host_id)
    assert (await client.health()).host_id == host_id
    assert await client.list_sandboxes() == []

    # A client of the agent with a certificate the CA issued gets in (fresh connection, the real handshake) ...
    good_cert, good_key = _write(ca.issue_client("operator"), scratch, "good")
    assert await asyncio.to_thread(_health, agent.url, _client_context(ca.ca_file, good_cert, good_key)) == 200
    # ... and none without one, with an expired one or with one from another CA.
    assert await asyncio.to_thread(_refused, agent.url, _client_context(ca.ca_file, None, None))
    past = CertificateAuthority.load(ca.directory, clock=lambda: datetime.now(UTC) - timedelta(days=3))
    expired_cert, expired_key = _write(past.issue_client("expired"), scratch, "expired")
    assert _openssl_verify(ca.ca_file, expired_cert).returncode != 0
    assert await asyncio.to_thread(_refused, agent.url, _client_context(ca.ca_file, expired_cert, expired_key))
    foreign = CertificateAuthority.create(scratch / "foreign-ca")
    foreign_cert, foreign_key = _write(foreign.issue_client("wrenn-api"), scratch, "foreign")
    assert await asyncio.to_thread(_refused, agent.url, _client_context(ca.ca_file, foreign_cert, foreign_key))

    # Revocation: the operator revokes a working certificate in the control plane's CA; the running agent picks
    # the new CRL up from the control plane and refuses it from then on. The control plane is not affected.
    doomed_cert, doomed_key = _write(ca.issue_client("doomed"), scratch, "doomed")
    doomed = _client_context(ca.ca_file, doomed_cert, doomed_key)
    assert await asyncio.to_thread(_health, agent.url, doomed) == 200
    ca.revoke(_serial_of(doomed_cert))
    assert _openssl_verify(ca.ca_file, doomed_cert, ca.crl_file).returncode != 0
    await _until(lambda: crl_pem.read_text() == ca.crl_pem, "the agent to fetch the new CRL", agent.logs)
    assert await asyncio.to_thread(_refused, agent.url, doomed)
    assert await asyncio.to_thread(_health, agent.url, _client_context(ca.ca_file, good_cert, good_key)) == 200
    assert (await client.health()).host_id == host_id

    # Rotation without restart: SIGHUP makes the agent renew through the control plane (new key, new CSR); the
    # next handshake is served the new certificate and the control plane's same client keeps working.
    api_files = (api_cert, deps.settings.data_dir / "api-client.key")
    api_context = _client_context(ca.ca_file, *api_files)
    before = await asyncio.to_thread(_served_serial, agent.port, api_context)
    assert before == issued.serial_number
    old_key = host_key.read_bytes()
    agent.proc.send_signal(signal.SIGHUP)
    await _until(lambda: _serial_of(host_pem) != before, "the agent to renew its certificate", agent.logs)
    after = await asyncio.to_thread(_served_serial, agent.port, api_context)
    assert after == _serial_of(host_pem) != before
    assert host_key.read_bytes() != old_key
    assert oct(host_key.stat().st_mode & 0o777) == "0o600"
    result = _openssl_verify(ca.ca_file, host_pem, ca.crl_file)
    assert result.returncode == 0, result.stdout + result.stderr
    for _ in range(3):
        assert (await client.health()).host_id == host_id
    fresh = await asyncio.to_thread(_health, agent.url, api_context)
    assert fresh == 200
    assert agent.proc.poll() is None, "the agent restarted"
    assert not control_plane.task.done(), "the control plane stopped"
    assert "certificate renewed" in agent.logs()

    # The other direction: the control plane checks the agent's certificate against the same CRL. Once the
    # operator revokes the host certificate the agent serves, the control plane's next client refuses the agent
    # (no restart: its TLS context follows the CRL file) and an existing client's connections are not reused.
    ca.revoke(_serial_of(host_pem))
    refusing = await directory_of(deps).client(host_id)
    assert refusing is not client, "a new CRL gives new clients"
    with pytest.raises(Unavailable, match="revoked"):
        await refusing.health()
    assert agent.proc.poll() is None
