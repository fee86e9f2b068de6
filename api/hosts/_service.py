"""`HostService`: one-time registration tokens, registration and heartbeats (protocol/hosts.py)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import structlog

from wrenn.api.clock import Clock, Ids
from wrenn.api.hosts import _records as records
from wrenn.api.hosts._records import HostRecord
from wrenn.api.store import Store
from wrenn.protocol.errors import Conflict, Invalid, Unauthenticated
from wrenn.protocol.hosts import (
    HostCertificate,
    HostCrl,
    HostInfo,
    HostToken,
    RegisteredHost,
    RegisterHost,
    RenewHostCertificate,
)
from wrenn.provision import CertificateRequestError
from wrenn.provision.ca import CertificateAuthority, RegistrationCertificates, certificates_for_registration

_log = structlog.get_logger("wrenn.api.hosts")


class HostService:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        ids: Ids,
        *,
        heartbeat_interval_s: int,
        ca: CertificateAuthority | None = None,
    ) -> None:
        self._ca = ca
        # CA files are rewritten in place (CRL re-signing); one operation at a time, off the event loop
        self._ca_lock = asyncio.Lock()
        self._store = store
        self._clock = clock
        self._ids = ids
        self._interval = heartbeat_interval_s

    def use_ca(self, ca: CertificateAuthority) -> None:
        """Sign agents' certificate requests at registration with this CA (set by the app's start-up)."""
        self._ca = ca

    async def create_token(self, *, created_by: uuid.UUID | None, ttl_s: int) -> HostToken:
        now = self._clock()
        token = "wrenn_host_" + secrets.token_hex(24)
        expires_at = now + timedelta(seconds=ttl_s)
        await records.insert_token(self._store, token, created_by=created_by, now=now, expires_at=expires_at)
        return HostToken(token=token, expires_at=expires_at)

    async def _sign(self, address: str, csr_pem: str | None) -> RegistrationCertificates:
        try:
            async with self._ca_lock:
                return await asyncio.to_thread(
                    certificates_for_registration, self._ca, address=address, csr_pem=csr_pem
                )
        except CertificateRequestError as exc:
            raise Invalid(f"certificate request refused: {exc}") from exc

    async def register(self, body: RegisterHost) -> RegisteredHost:
        # signed before the token is consumed: a bad CSR must not burn a one-time token
        certs = await self._sign(body.address, body.csr_pem)
        # a host that got a certificate serves HTTPS with it on the port it registered (protocol/hosts.py)
        address = _https(body.address) if certs.certificate_pem is not None else body.address
        now = self._clock()
        host_id = "host-" + self._ids.short(12)
        secret = secrets.token_hex(32)
        async with self._store.transaction() as conn:
            if not await records.consume_token(conn, body.token, host_id=host_id, now=now):
                raise Unauthenticated("unknown, used or expired registration token")
            await records.insert_host(
                conn, host_id=host_id, name=body.name, address=address, secret=secret, info=body.info, now=now
            )
        _log.info("host registered", host_id=host_id, address=address, name=body.name)
        return RegisteredHost(
            host_id=host_id,
            host_secret=secret,
            heartbeat_interval_s=self._interval,
            certificate_pem=certs.certificate_pem,
            ca_pem=certs.ca_pem,
        )

    async def heartbeat(self, host_id: str, secret: str, info: HostInfo) -> None:
        if not await records.heartbeat(self._store, host_id, secret, info, self._clock()):
            raise Unauthenticated("unknown host or wrong host secret")

    async def _authenticated_ca(self, host_id: str, secret: str) -> tuple[HostRecord, CertificateAuthority]:
        host = await records.authenticate(self._store, host_id, secret)
        if host is None:
            raise Unauthenticated("unknown host or wrong host secret")
        if self._ca is None:
            raise Conflict("this control plane runs no internal CA (plain HTTP to the agents)")
        return host, self._ca

    async def refresh_crl(self, ca: CertificateAuthority) -> None:
        """Re-sign the CRL when half its lifetime is gone (one CA file operation at a time)."""
        async with self._ca_lock:
            if await asyncio.to_thread(ca.refresh_crl_if_due):
                _log.info("certificate revocation list re-signed")

    async def _crl_pem(self, ca: CertificateAuthority) -> str:
        await self.refresh_crl(ca)
        async with self._ca_lock:
            return await asyncio.to_thread(lambda: ca.crl_pem)

    async def renew_certificate(self, host_id: str, secret: str, body: RenewHostCertificate) -> HostCertificate:
        """A new host certificate from the host's CSR, with the names of the address it is registered at."""
        host, ca = await self._authenticated_ca(host_id, secret)
        certs = await self._sign(host.address, body.csr_pem)
        assert certs.certificate_pem is not None
        assert certs.ca_pem is not None
        _log.info("host certificate renewed", host_id=host_id)
        return HostCertificate(
            certificate_pem=certs.certificate_pem, ca_pem=certs.ca_pem, crl_pem=await self._crl_pem(ca)
        )

    async def crl(self, host_id: str, secret: str) -> HostCrl:
        _host, ca = await self._authenticated_ca(host_id, secret)
        return HostCrl(crl_pem=await self._crl_pem(ca))

    async def update_address(self, host_id: str, address: str) -> None:
        """Record where a registered host's agent now listens (``wrenn up`` after its agent moved ports)."""
        async with self._store.connection() as conn:
            await conn.execute("UPDATE hosts SET address = %s WHERE id = %s", (address, host_id))

    async def list_hosts(self) -> list[HostRecord]:
        return await records.list_hosts(self._store)


def _https(address: str) -> str:
    parts = urlsplit(address)
    return urlunsplit(parts._replace(scheme="https"))
