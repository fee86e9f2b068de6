"""Mutual TLS between a real asyncio TLS server (the agent side) and a client (the API side), with rotation.

The server accepts plain TCP and upgrades with ``start_tls`` so the test can see why a handshake failed (OpenSSL's
verify message); the client reads the serial of the certificate the server saw, so a passing handshake proves
which certificate was used.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from wrenn.provision.ca import (
    CertificateAuthority,
    CertificateRenewer,
    IssuedCertificate,
    ReloadingClientContext,
    ReloadingServerContext,
    TLSFiles,
    client_context,
)
from wrenn.provision.ca.testing import EphemeralCA

_TIMEOUT = 10


@dataclass
class _Server:
    port: int
    outcomes: asyncio.Queue[int | ssl.SSLError] = field(default_factory=asyncio.Queue)


@asynccontextmanager
async def _mtls_server(tls: ReloadingServerContext) -> AsyncIterator[_Server]:
    state = _Server(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(tls.context)
            peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            serial = x509.load_der_x509_certificate(peer).serial_number
            await state.outcomes.put(serial)
            writer.write(f"{serial:x}\n".encode())
            await writer.drain()
        except ssl.SSLError as exc:
            await state.outcomes.put(exc)
        except ConnectionError:
            pass
        finally:
            writer.close()
            with suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class _Reply:
    client_serial_seen_by_server: int | None
    server_serial: int | None
    error: BaseException | None


async def _connect(port: int, ctx: ssl.SSLContext) -> _Reply:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"), _TIMEOUT
        )
    except (ssl.SSLError, ConnectionError) as exc:
        return _Reply(None, None, exc)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        server_serial = x509.load_der_x509_certificate(der).serial_number
        line = await asyncio.wait_for(reader.readline(), _TIMEOUT)
        seen = int(line, 16) if line else None
        return _Reply(seen, server_serial, None)
    except (ssl.SSLError, ConnectionError) as exc:
        return _Reply(None, None, exc)
    finally:
        writer.close()
        with suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


async def test_valid_certificates_handshake(ephemeral_ca: EphemeralCA) -> None:
    server_tls = ReloadingServerContext(ephemeral_ca.host_files("agent"))
    client = ephemeral_ca.client_files("api")
    async with _mtls_server(server_tls) as server:
        reply = await _connect(server.port, client_context(client))
        assert reply.error is None
        assert reply.client_serial_seen_by_server == _serial(client.cert_file)
        assert reply.server_serial == _serial(server_tls.files.cert_file)
        assert await asyncio.wait_for(server.outcomes.get(), _TIMEOUT) == _serial(client.cert_file)


async def _assert_rejected(server: _Server, client: ssl.SSLContext, reason: str) -> None:
    reply = await _connect(server.port, client)
    assert reply.client_serial_seen_by_server is None
    outcome = await asyncio.wait_for(server.outcomes.get(), _TIMEOUT)
    assert isinstance(outcome, ssl.SSLCertVerificationError), outcome
    assert reason in outcome.verify_message


async def test_expired_client_certificate_is_rejected(ephemeral_ca: EphemeralCA, tmp_path: Path) -> None:
    past = datetime.now(UTC) - timedelta(days=2)
    CertificateAuthority.load(ephemeral_ca.ca.directory, clock=lambda: past).issue_client().write(
        tmp_path / "old.pem", tmp_path / "old.key"
    )
    expired = TLSFiles(ephemeral_ca.ca.ca_file, tmp_path / "old.pem", tmp_path / "old.key")
    async with _mtls_server(ReloadingServerContext(ephemeral_ca.host_files())) as server:
        await _assert_rejected(server, client_context(expired), "expired")


async def test_foreign_client_certificate_is_rejected(ephemeral_ca: EphemeralCA, tmp_path: Path) -> None:
    foreign = CertificateAuthority.create(tmp_path / "foreign")
    foreign.issue_client().write(tmp_path / "f.pem", tmp_path / "f.key")
    # The client trusts our CA (so it accepts the server) but presents a certificate the other CA signed.
    files = TLSFiles(ephemeral_ca.ca.ca_file, tmp_path / "f.pem", tmp_path / "f.key")
    async with _mtls_server(ReloadingServerContext(ephemeral_ca.host_files())) as server:
        await _assert_rejected(server, client_context(files), "unable to get local issuer certificate")


async def test_revoked_client_certificate_is_rejected_without_restart(ephemeral_ca: EphemeralCA) -> None:
    client = ephemeral_ca.client_files("api")
    server_tls = ReloadingServerContext(ephemeral_ca.host_files())
    async with _mtls_server(server_tls) as server:
        assert (await _connect(server.port, client_context(client))).error is None
        assert await server.outcomes.get() == _serial(client.cert_file)
        ephemeral_ca.ca.revoke(_serial(client.cert_file))
        await _assert_rejected(server, client_context(client), "revoked")
        assert server_tls.reloads == 1


async def test_client_refuses_a_server_from_a_foreign_ca(ephemeral_ca: EphemeralCA, tmp_path: Path) -> None:
    foreign = CertificateAuthority.create(tmp_path / "foreign")
    foreign.issue_host("evil", ip_addresses=["127.0.0.1"]).write(tmp_path / "e.pem", tmp_path / "e.key")
    evil = TLSFiles(ephemeral_ca.ca.ca_file, tmp_path / "e.pem", tmp_path / "e.key", ephemeral_ca.ca.crl_file)
    async with _mtls_server(ReloadingServerContext(evil)) as server:
        reply = await _connect(server.port, client_context(ephemeral_ca.client_files()))
        assert isinstance(reply.error, ssl.SSLCertVerificationError)


async def test_client_refuses_a_revoked_server_without_restart(ephemeral_ca: EphemeralCA) -> None:
    """The API side checks the agent's certificate against the CRL too; its reloading context follows the CRL file,
    so a revocation reaches the next connection opened with `current()`."""
    host = ephemeral_ca.host_files("agent")
    client_files = ephemeral_ca.client_files("api")
    client_files = TLSFiles(
        client_files.ca_file, client_files.cert_file, client_files.key_file, ephemeral_ca.ca.crl_file
    )
    tls = ReloadingClientContext(client_files)
    async with _mtls_server(ReloadingServerContext(host)) as server:
        assert (await _connect(server.port, tls.current())).error is None
        first = tls.current()
        assert tls.current() is first, "unchanged files: the same context"
        ephemeral_ca.ca.revoke(_serial(host.cert_file))
        refused = await _connect(server.port, tls.current())
        assert tls.current() is not first
        assert tls.rebuilds == 1
        assert isinstance(refused.error, ssl.SSLCertVerificationError)
        assert "revoked" in refused.error.verify_message


async def test_server_certificate_rotates_without_restart(ephemeral_ca: EphemeralCA) -> None:
    files = ephemeral_ca.host_files("agent")
    server_tls = ReloadingServerContext(files)
    client = client_context(ephemeral_ca.client_files())
    async with _mtls_server(server_tls) as server:
        first = await _connect(server.port, client)
        assert first.server_serial == _serial(files.cert_file)
        renewed = ephemeral_ca.ca.issue_host("agent", ip_addresses=["127.0.0.1"])
        renewed.write(files.cert_file, files.key_file)
        second = await _connect(server.port, client)
        assert second.error is None
        assert second.server_serial == renewed.serial != first.server_serial


async def test_client_certificate_renewed_in_background_and_hot_swapped(ephemeral_ca: EphemeralCA) -> None:
    now = [datetime.now(UTC)]
    files = ephemeral_ca.client_files("api")
    tls = ReloadingClientContext(files)

    # Only the renewer's clock moves: the CA keeps real time so that the TLS stack (real time) accepts what it issues.

    async def issue() -> IssuedCertificate:
        return ephemeral_ca.ca.issue_client("api")

    renewer = CertificateRenewer(
        issue=issue,
        cert_file=files.cert_file,
        key_file=files.key_file,
        clock=lambda: now[0],
        on_renewed=lambda _: tls.reload(),
        retry_s=3600,
    )
    async with _mtls_server(ReloadingServerContext(ephemeral_ca.host_files())) as server, renewer:
        assert renewer.generation == 0  # the certificate on disk is fresh: nothing issued on entry
        before = await _connect(server.port, tls.context)
        assert before.client_serial_seen_by_server == _serial(files.cert_file)
        now[0] += timedelta(hours=20)  # past two thirds of the 24-hour lifetime
        renewer.wake()
        await asyncio.wait_for(renewer.wait_generation(1), _TIMEOUT)
        after = await _connect(server.port, tls.context)
        assert after.error is None
        assert after.client_serial_seen_by_server == renewer.serial != before.client_serial_seen_by_server


async def test_renewer_issues_on_entry_when_the_file_is_missing(ephemeral_ca: EphemeralCA, tmp_path: Path) -> None:
    async def issue() -> IssuedCertificate:
        return ephemeral_ca.ca.issue_client("api")

    renewer = CertificateRenewer(
        issue=issue, cert_file=tmp_path / "c.pem", key_file=tmp_path / "c.key", clock=lambda: datetime.now(UTC)
    )
    async with renewer:
        assert renewer.generation == 1
        assert _serial(tmp_path / "c.pem") == renewer.serial
        assert not renewer.is_due()
