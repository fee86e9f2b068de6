"""Wire models of host registration and heartbeats (host agent -> control plane).

Routes (bodies JSON; errors ``{"code": int, "message": str}`` with the status of `wrenn.protocol.errors`):

    POST /v1/hosts/tokens                 (admin)  CreateHostToken -> 201 HostToken
    POST /v1/hosts/register               RegisterHost -> 201 RegisteredHost
                                          401 when the token is unknown, already used or expired
    POST /v1/hosts/{host_id}/heartbeat    header ``Authorization: Bearer <host_secret>``, body HostInfo -> 204
                                          401 when the secret does not match the host
    POST /v1/hosts/{host_id}/certificate  (host secret) RenewHostCertificate -> 201 HostCertificate
                                          400 bad CSR, 409 when the control plane runs no CA
    GET  /v1/hosts/{host_id}/crl          (host secret) -> 200 HostCrl (409 without a CA)

Registration tokens are one-time: a successful registration consumes the token. The agent persists
``host_id``/``host_secret`` in its data dir and does not register again on restart; it sends a heartbeat every
``heartbeat_interval_s`` seconds. ``certificate_pem``/``ca_pem`` are set when the control plane runs an internal CA
(mutual TLS between the API and the agents); both are ``None`` for plain-HTTP development setups.

Mutual TLS (control plane with an internal CA): the agent sends ``csr_pem`` (a fresh ECDSA P-256 key's CSR) at
registration unless it was given certificate files of its own. A host that receives ``certificate_pem`` is called
over HTTPS at the host:port it registered — the control plane records ``https://`` whatever scheme the agent
sent — and serves with that certificate, requiring client certificates from ``ca_pem``. The certificate names come
from the registered address, never from the CSR. The agent renews it through ``/certificate`` (same names) before
it expires, and fetches the CA's revocation list from ``/crl`` (re-signed by the control plane when it gets old).

Add fields with defaults only, so old peers keep working.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from wrenn.protocol.agent import HostInfo

__all__ = [
    "CreateHostToken",
    "HostCertificate",
    "HostCrl",
    "HostInfo",
    "HostToken",
    "RegisterHost",
    "RegisteredHost",
    "RenewHostCertificate",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CreateHostToken(_Model):
    ttl_s: int = Field(default=3600, ge=60, le=86400 * 30, description="seconds until the unused token expires")


class HostToken(_Model):
    token: str
    expires_at: datetime


class RegisterHost(_Model):
    token: str = Field(min_length=1, max_length=256)
    address: str = Field(
        min_length=1,
        max_length=512,
        pattern=r"^https?://",
        description='agent base URL, e.g. "http://127.0.0.1:5007" or "https://10.0.0.5:5007"',
    )
    name: str = Field(min_length=1, max_length=128)
    info: HostInfo
    csr_pem: str | None = Field(
        default=None, description="PEM certificate signing request for the agent's server/client certificate"
    )


class RegisteredHost(_Model):
    host_id: str
    host_secret: str
    heartbeat_interval_s: int
    certificate_pem: str | None = None
    ca_pem: str | None = None


_CSR = Field(min_length=1, max_length=16384, description="PEM certificate signing request (ECDSA P-256 key)")


class RenewHostCertificate(_Model):
    csr_pem: str = _CSR


class HostCertificate(_Model):
    certificate_pem: str
    ca_pem: str
    crl_pem: str


class HostCrl(_Model):
    crl_pem: str = Field(description="the internal CA's certificate revocation list (PEM)")
