"""Control-plane configuration: one pydantic-settings object read from ``WRENN_*`` variables.

Built by the entry point (`wrenn api`, `wrenn up`) or by a test, never at import time, and handed to
`wrenn.api.create_app`. Other control-plane modules add their own fields here with defaults.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the control plane reads from its environment (prefix ``WRENN_``)."""

    model_config = SettingsConfigDict(env_prefix="WRENN_", extra="ignore")

    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/wrenn",
        description="PostgreSQL URL (postgresql:// or postgresql+psycopg://)",
    )
    listen: str = Field(default="127.0.0.1:3000", description="host:port the API listens on")
    public_url: str | None = Field(default=None, description="URL clients use to reach the API (E2B_API_URL)")
    domain: str = Field(default="localhost", description="sandbox domain (E2B_DOMAIN); hosts {port}-{id}.{domain}")
    jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 secret for session tokens; generated per process when absent"
    )
    data_dir: Path = Field(default=Path("/var/lib/wrenn"), description="where Wrenn keeps its state on this host")

    session_ttl_seconds: int = Field(default=3600, gt=0, description="lifetime of a session JWT")
    max_body_bytes: int = Field(default=1 << 20, gt=0, description="largest JSON request body accepted (413 above)")

    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=10, gt=0)
    apply_migrations: bool = Field(default=True, description="apply pending migrations at start-up")

    job_workers: int = Field(default=2, ge=0, description="job-queue worker tasks in this process (0: none)")
    job_poll_seconds: float = Field(default=1.0, gt=0, description="how often idle workers look for due jobs")
    job_lease_seconds: float = Field(default=60.0, gt=0, description="a claimed job is re-offered after this")

    # Sandboxes, hosts and the proxy (api-sandboxes).
    sandbox_templates: list[str] = Field(default=["base"], description="templates sandboxes can be created from")
    sandbox_vcpus: int = Field(default=1, ge=1, le=64, description="vCPUs of a new sandbox")
    sandbox_memory_mb: int = Field(default=512, ge=128, description="memory of a new sandbox, MiB")
    sandbox_disk_mb: int = Field(default=2048, ge=256, description="disk of a new sandbox, MiB")
    sandbox_internet: bool = Field(
        default=False, description="internet egress of sandboxes whose create request does not say (E2B: true)"
    )
    envd_version: str = Field(default="0.6.13", description="envd version reported to SDKs (gates SDK features)")
    scheduler_vcpu_overcommit: float = Field(
        default=16.0, gt=0, description="vCPUs placed per host vCPU (idle microVMs; memory is never overcommitted)"
    )
    host_heartbeat_interval_s: int = Field(default=10, ge=1, description="how often agents send heartbeats")
    host_heartbeat_ttl_s: float = Field(default=60.0, gt=0, description="a host silent this long gets no sandboxes")
    reconcile_interval_s: float = Field(default=30.0, gt=0, description="how often the DB is checked against agents")
    sandbox_activity_interval_s: float = Field(
        default=5.0, gt=0, description="proxy traffic bumps a sandbox's end time at most once per this many seconds"
    )
    proxy_drain_grace_s: float = Field(
        default=10.0, ge=0, description="a pause lets in-flight proxy requests finish for up to this long, then cuts"
    )
    proxy_resume_wait_s: float = Field(
        default=60.0, gt=0, description="a request that auto-resumes a paused sandbox waits at most this long"
    )
    transition_settle_s: float = Field(
        default=120.0, gt=0, description="the reconciler settles rows stuck pausing/resuming for longer than this"
    )
    ca_dir: Path | None = Field(
        default=None,
        description="internal CA (wrenn.provision.ca): agents get certificates at registration, calls use mutual TLS",
    )
    agent_ca_file: Path | None = Field(default=None, description="internal CA: call agents over mutual TLS")
    agent_cert_file: Path | None = Field(default=None, description="the API's client certificate for agents")
    agent_key_file: Path | None = Field(default=None, description="the API's client key for agents")
