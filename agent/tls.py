"""The agent's side of mutual TLS with the control plane's internal CA: its files, its listener, its renewals.

Files, in ``<data>/tls/`` (directory 0700): ``host.key`` (0600; made here, never sent anywhere), ``host.pem`` (the
host certificate the control plane signed from our CSR), ``ca.pem`` (the internal CA) and ``crl.pem`` (its
revocation list).

- **Registration** (`wrenn.agent.registration.Registration` with ``tls`` set): a fresh P-256 key and a CSR go with
  the one-time token; when the control plane answers with a certificate, key, certificate and CA are written here
  before the identity is (the identity file is the commit point of a registration).
- **Listener** (`server_tls`): explicit ``--tls-cert/--tls-key[/--tls-client-ca]`` files win; otherwise a host
  that got a certificate at registration serves HTTPS from these files and requires client certificates from the
  CA, checked against the CRL; otherwise (the control plane runs no CA: development) plain HTTP. The context is a
  `ReloadingServerContext`: each new handshake gets a context built from the files as they are now, so a renewed
  certificate or a new CRL is served without a restart.
- **Renewal** (`HostCertificateKeeper`, opened by `AgentRuntime` for as long as the agent runs): a
  `CertificateRenewer` asks ``POST /v1/hosts/{id}/certificate`` for a new certificate (new key, new CSR) once a third
  of the current one's lifetime is left — at start-up too, so an agent that was down past its certificate's expiry
  renews before it listens; ``GET /v1/hosts/{id}/crl`` is fetched every ``crl_refresh_s`` (and before listening when
  there is no CRL yet). `refresh_now` (``SIGHUP`` to ``wrenn agent``) renews and fetches at once. Failures are
  logged and retried (the certificate on disk keeps being served); the tasks end when the runtime closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

import structlog
from cryptography import x509

from wrenn.agent._tasks import cancel_and_wait
from wrenn.provision.ca import (
    CertificateRenewer,
    IssuedCertificate,
    ReloadingServerContext,
    TLSFiles,
    generate_key_and_csr,
)
from wrenn.provision.ca._files import write_private, write_public

if TYPE_CHECKING:
    from wrenn.agent.registration import HostIdentity, Registration
    from wrenn.agent.settings import AgentSettings
    from wrenn.provision.ca import Clock

_log = structlog.get_logger(__name__)

RETRY_S = 5.0


@dataclass(frozen=True)
class HostTlsFiles:
    """Where the agent keeps the TLS material the control plane gave it."""

    directory: Path

    @property
    def key_file(self) -> Path:
        return self.directory / "host.key"

    @property
    def cert_file(self) -> Path:
        return self.directory / "host.pem"

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def crl_file(self) -> Path:
        return self.directory / "crl.pem"

    def server_files(self) -> TLSFiles:
        return TLSFiles(self.ca_file, self.cert_file, self.key_file, self.crl_file)

    def _ensure_dir(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)

    def write_registration(self, *, key_pem: str, certificate_pem: str, ca_pem: str) -> None:
        """Key (0600), certificate and CA from a registration, each replaced atomically, key first."""
        self._ensure_dir()
        write_private(self.key_file, key_pem.encode())
        write_public(self.ca_file, ca_pem.encode())
        write_public(self.cert_file, certificate_pem.encode())

    def write_ca(self, ca_pem: str) -> None:
        self._ensure_dir()
        if not self.ca_file.exists() or self.ca_file.read_text() != ca_pem:
            write_public(self.ca_file, ca_pem.encode())

    def write_crl(self, crl_pem: str) -> bool:
        """Replace the CRL when it changed; True when it did."""
        self._ensure_dir()
        if self.crl_file.exists() and self.crl_file.read_text() == crl_pem:
            return False
        write_public(self.crl_file, crl_pem.encode())
        return True


def uses_issued_certificate(settings: AgentSettings, identity: HostIdentity | None) -> bool:
    """True when the agent serves the certificate the control plane issued (no certificate files of its own)."""
    return settings.tls_cert is None and identity is not None and identity.certificate_pem is not None


def server_tls(
    settings: AgentSettings, identity: HostIdentity | None
) -> ReloadingServerContext | ssl.SSLContext | None:
    """What the agent's listener serves with (None: plain HTTP). Files are re-read per handshake when they change,
    except for a server certificate without client CA (TLS without client authentication, loaded once)."""
    if settings.tls_cert is not None:
        key = settings.tls_key or settings.tls_cert
        if settings.tls_client_ca is not None:
            return ReloadingServerContext(TLSFiles(settings.tls_client_ca, settings.tls_cert, key))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(settings.tls_cert, key)
        return context
    if uses_issued_certificate(settings, identity):
        return ReloadingServerContext(HostTlsFiles(settings.tls_dir).server_files())
    return None


def _issued(certificate_pem: str, key_pem: str) -> IssuedCertificate:
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    return IssuedCertificate(
        certificate_pem=certificate_pem, key_pem=key_pem, serial=cert.serial_number, not_after=cert.not_valid_after_utc
    )


class HostCertificateKeeper:
    """Keeps the host certificate and the CRL in ``files`` fresh through the control plane. An async context
    manager owning two tasks (the renewer's and the CRL poll); both end when it exits."""

    def __init__(
        self,
        *,
        files: HostTlsFiles,
        registration: Registration,
        name: str,
        clock: Clock,
        crl_refresh_s: float,
        retry_s: float = RETRY_S,
    ) -> None:
        self.files = files
        self._registration = registration
        self._name = name
        self._crl_refresh_s = crl_refresh_s
        self._retry_s = retry_s
        self._clock = clock
        self._now = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.renewer = CertificateRenewer(
            issue=self._issue, cert_file=files.cert_file, key_file=files.key_file, clock=clock, retry_s=retry_s
        )
        self.crl_fetches = 0

    async def _issue(self) -> IssuedCertificate:
        key_pem, csr_pem = await asyncio.to_thread(generate_key_and_csr, self._name)
        answer = await self._registration.renew_certificate(csr_pem)
        self.files.write_ca(answer.ca_pem)
        self.files.write_crl(answer.crl_pem)
        _log.info("host certificate renewed by the control plane")
        return _issued(answer.certificate_pem, key_pem)

    async def fetch_crl(self) -> bool:
        """Fetch the CRL now; True when it changed."""
        changed = self.files.write_crl(await self._registration.fetch_crl())
        self.crl_fetches += 1
        if changed:
            _log.info("certificate revocation list updated")
        return changed

    def refresh_now(self) -> None:
        """Renew the certificate and fetch the CRL now (``SIGHUP``), in the keeper's task."""
        self._now.set()

    def _still_valid(self) -> bool:
        try:
            cert = x509.load_pem_x509_certificate(self.files.cert_file.read_bytes())
        except (OSError, ValueError):
            return False
        return bool(cert.not_valid_before_utc <= self._clock() < cert.not_valid_after_utc)

    async def __aenter__(self) -> Self:
        # Renew first when due: an agent that was down past its certificate's expiry never listens with it. When
        # the control plane cannot be reached and the certificate is still valid, start anyway (the renewer's
        # task keeps trying); an expired or missing one is retried until a renewal succeeds.
        while True:
            try:
                await self.renewer.renew_if_due()
                break
            except Exception as exc:  # noqa: BLE001 - transport and control-plane errors alike
                if self._still_valid():
                    _log.warning("host certificate renewal failed; serving the current one", error=str(exc))
                    break
                _log.warning("no valid host certificate and renewal failed; retrying", error=str(exc))
                await asyncio.sleep(self._retry_s)
        self.renewer.start()
        try:
            while not self.files.crl_file.exists():
                try:
                    await self.fetch_crl()
                except Exception as exc:  # noqa: BLE001 - transport and control-plane errors alike: retried
                    _log.warning("fetching the CRL failed; retrying", error=str(exc), retry_s=self._retry_s)
                    await asyncio.sleep(self._retry_s)
        except BaseException:
            await self.renewer.aclose()
            raise
        self._task = asyncio.create_task(self._run(), name="wrenn-agent-tls")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self.renewer.aclose()

    async def _run(self) -> None:
        while True:
            forced = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), timeout=self._crl_refresh_s)
                forced = True
            self._now.clear()
            try:
                if forced:
                    await self.renewer.renew()
                await self.fetch_crl()
            except Exception as exc:  # noqa: BLE001 - the loop outlives a failing control plane; logged
                _log.warning("TLS refresh failed; keeping the current files", error=str(exc), forced=forced)
