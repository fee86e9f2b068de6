"""Wire models of the host agent's HTTPS + JSON API (control plane -> agent).

Routes (all bodies JSON, errors ``{"code": int, "message": str}`` with the status of `wrenn.protocol.errors`):

    GET    /v1/health                 -> 200 HostInfo
    GET    /v1/sandboxes              -> 200 SandboxList
    POST   /v1/sandboxes              CreateSandbox -> 201 SandboxInfo (only once envd answers /health)
    GET    /v1/sandboxes/{id}         -> 200 SandboxInfo
    DELETE /v1/sandboxes/{id}         -> 204 (idempotent: 404 only if the agent never knew the id)
    POST   /v1/sandboxes/{id}/pause   PauseSandbox -> 200 SandboxInfo (409 when already paused or not running)
    POST   /v1/sandboxes/{id}/resume  -> 201 SandboxInfo when it resumed, 200 when it was running (409 otherwise)
    POST   /v1/sandboxes/{id}/snapshots  CreateSnapshot -> 201 SnapshotInfo (the sandbox keeps running)
    GET    /v1/snapshots              -> 200 SnapshotList
    DELETE /v1/snapshots/{id}         -> 204 (409 while live sandboxes were created from it)
    A CreateSandbox whose `template` is a snapshot id restores from that snapshot.

Later issues extend this (pause, resume, snapshot); add fields with defaults so old peers keep working.
"""

from __future__ import annotations

import enum
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

SANDBOX_ID_PATTERN = r"^[a-z0-9]{20}$"
"""E2B sandbox ids: 20 lowercase alphanumerics, never a dash (routing by host name relies on it)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SandboxState(enum.StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class Accelerator(enum.StrEnum):
    KVM = "kvm"
    TCG = "tcg"


class CreateSandbox(_Model):
    sandbox_id: str = Field(pattern=SANDBOX_ID_PATTERN)
    template: str = Field(min_length=1, max_length=128)
    vcpus: int = Field(default=1, ge=1, le=64)
    memory_mb: int = Field(default=256, ge=128, le=262144)
    disk_mb: int = Field(default=2048, ge=256, le=1048576)
    env_vars: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)
    timeout_s: int = Field(default=300, ge=0, le=86400 * 30)
    envd_access_token: str | None = None
    allow_internet: bool = False


class PauseSandbox(_Model):
    memory: bool = Field(default=True, description="keep guest memory (processes run on); false keeps only the disk")


class CreateSnapshot(_Model):
    snapshot_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")


class SnapshotInfo(_Model):
    snapshot_id: str
    template: str
    source_sandbox: str
    vcpus: int
    memory_mb: int
    disk_mb: int
    created_at: datetime


class SnapshotList(_Model):
    snapshots: list[SnapshotInfo]


class SandboxInfo(_Model):
    sandbox_id: str
    template: str
    state: SandboxState
    vcpus: int
    memory_mb: int
    disk_mb: int
    metadata: dict[str, str] = Field(default_factory=dict)
    created_at: datetime
    envd_address: str = Field(description="host:port where envd answers, reachable from the agent's host")
    allow_internet: bool = False
    accelerator: Accelerator


class SandboxList(_Model):
    sandboxes: list[SandboxInfo]


class HostInfo(_Model):
    host_id: str
    version: str
    accelerator: Accelerator
    cgroup_version: int
    cow_backend: str
    vcpus_total: int
    vcpus_used: int
    memory_mb_total: int
    memory_mb_used: int
    disk_mb_free: int
    sandboxes_running: int
