"""Wire models of host registration and heartbeats (host agent -> control plane).

Routes (bodies JSON; errors ``{"code": int, "message": str}`` with the status of `wrenn.protocol.errors`):

    POST /v1/hosts/tokens                 (admin)  CreateHostToken -> 201 HostToken
    POST /v1/hosts/register               RegisterHost -> 201 RegisteredHost
                                          401 when the token is unknown, already used or expired
    POST /v1/hosts/{host_id}/heartbeat    header ``Authorization: Bearer <host_secret>``, body HostInfo -> 204
                                          401 when the secret does not match the host

Registration tokens are one-time: a successful registration consumes the token. The agent persists
``host_id``/``host_secret`` in its data dir and does not register again on restart; it sends a heartbeat every
``heartbeat_interval_s`` seconds. ``certificate_pem``/``ca_pem`` are set when the control plane runs an internal CA
(mutual TLS between the API and the agents); both are ``None`` for plain-HTTP development setups.

Add fields with defaults only, so old peers keep working.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from wrenn.protocol.agent import HostInfo

__all__ = ["CreateHostToken", "HostInfo", "HostToken", "RegisterHost", "RegisteredHost"]


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
