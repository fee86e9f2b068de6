"""`HostService`: one-time registration tokens, registration and heartbeats (protocol/hosts.py)."""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

import structlog

from wrenn.api.clock import Clock, Ids
from wrenn.api.hosts import _records as records
from wrenn.api.hosts._records import HostRecord
from wrenn.api.store import Store
from wrenn.protocol.errors import Invalid, Unauthenticated
from wrenn.protocol.hosts import HostInfo, HostToken, RegisteredHost, RegisterHost
from wrenn.provision import CertificateRequestError
from wrenn.provision.ca import CertificateAuthority, certificates_for_registration

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

    async def register(self, body: RegisterHost) -> RegisteredHost:
        try:
            # signed before the token is consumed: a bad CSR must not burn a one-time token
            certs = certificates_for_registration(self._ca, address=body.address, csr_pem=body.csr_pem)
        except CertificateRequestError as exc:
            raise Invalid(f"certificate request refused: {exc}") from exc
        now = self._clock()
        host_id = "host-" + self._ids.short(12)
        secret = secrets.token_hex(32)
        async with self._store.transaction() as conn:
            if not await records.consume_token(conn, body.token, host_id=host_id, now=now):
                raise Unauthenticated("unknown, used or expired registration token")
            await records.insert_host(
                conn, host_id=host_id, name=body.name, address=body.address, secret=secret, info=body.info, now=now
            )
        _log.info("host registered", host_id=host_id, address=body.address, name=body.name)
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

    async def update_address(self, host_id: str, address: str) -> None:
        """Record where a registered host's agent now listens (``wrenn up`` after its agent moved ports)."""
        async with self._store.connection() as conn:
            await conn.execute("UPDATE hosts SET address = %s WHERE id = %s", (address, host_id))

    async def list_hosts(self) -> list[HostRecord]:
        return await records.list_hosts(self._store)
