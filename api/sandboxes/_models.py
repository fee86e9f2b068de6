"""The E2B sandbox REST API's bodies (camelCase on the wire, as the e2b SDK sends and parses them).

Limits here are the validation rules of the public API: a body that breaks one is a 400 before anything is created.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TIMEOUT_S = 86400
"""Longest TTL a sandbox can be given (24 h, E2B's own ceiling for paid teams)."""
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 1024
MAX_METADATA_BYTES = 16384
MAX_ENV_VARS = 256
MAX_ENV_BYTES = 65536
TEMPLATE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"


def _check_map(value: dict[str, str], *, what: str, entries: int, total: int, key_max: int, val_max: int) -> None:
    if len(value) > entries:
        raise ValueError(f"{what} has {len(value)} entries, at most {entries} are allowed")
    size = 0
    for k, v in value.items():
        if not k or len(k) > key_max:
            raise ValueError(f"{what} keys must be 1..{key_max} characters")
        if len(v) > val_max:
            raise ValueError(f"{what} value of {k!r} is longer than {val_max} characters")
        size += len(k.encode()) + len(v.encode())
    if size > total:
        raise ValueError(f"{what} is {size} bytes, at most {total} are allowed")


class _In(BaseModel):
    # Unknown fields are accepted and ignored: newer SDKs send options (network, mcp, iam...) older servers lack.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True, ser_json_timedelta="float")


class AutoResume(_In):
    enabled: bool = False


class NewSandbox(_In):
    template_id: str = Field(alias="templateID", pattern=TEMPLATE_PATTERN)
    timeout: int = Field(default=15, ge=0, le=MAX_TIMEOUT_S, description="seconds until the sandbox is killed")
    secure: bool = True
    allow_internet_access: bool | None = Field(
        default=None, description="internet egress; absent: the server's default (WRENN_SANDBOX_INTERNET)"
    )
    metadata: dict[str, str] = Field(default_factory=dict)
    env_vars: dict[str, str] = Field(default_factory=dict, alias="envVars")
    auto_pause: bool = Field(default=False, alias="autoPause")
    auto_pause_memory: bool | None = Field(default=None, alias="autoPauseMemory")
    auto_resume: AutoResume | None = Field(default=None, alias="autoResume")

    @field_validator("metadata", mode="before")
    @classmethod
    def _null_metadata(cls, value: object) -> object:
        return {} if value is None else value

    @field_validator("env_vars", mode="before")
    @classmethod
    def _null_env(cls, value: object) -> object:
        return {} if value is None else value

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, str]) -> dict[str, str]:
        _check_map(
            value,
            what="metadata",
            entries=MAX_METADATA_ENTRIES,
            total=MAX_METADATA_BYTES,
            key_max=MAX_METADATA_KEY,
            val_max=MAX_METADATA_VALUE,
        )
        return value

    @field_validator("env_vars")
    @classmethod
    def _env_size(cls, value: dict[str, str]) -> dict[str, str]:
        _check_map(value, what="envVars", entries=MAX_ENV_VARS, total=MAX_ENV_BYTES, key_max=256, val_max=MAX_ENV_BYTES)
        return value


class TimeoutRequest(_In):
    timeout: int = Field(ge=0, le=MAX_TIMEOUT_S)


class ConnectRequest(_In):
    timeout: int = Field(default=300, ge=0, le=MAX_TIMEOUT_S)


class RefreshRequest(_In):
    duration: int = Field(default=60, ge=0, le=3600)


class SandboxCreated(_Out):
    """``Sandbox`` in E2B's spec: what create and connect return."""

    template_id: str = Field(serialization_alias="templateID")
    sandbox_id: str = Field(serialization_alias="sandboxID")
    client_id: str = Field(serialization_alias="clientID")
    envd_version: str = Field(serialization_alias="envdVersion")
    alias: str | None = None
    envd_access_token: str | None = Field(default=None, serialization_alias="envdAccessToken")
    traffic_access_token: str | None = Field(default=None, serialization_alias="trafficAccessToken")
    domain: str | None = None


class Lifecycle(_Out):
    auto_resume: bool = Field(serialization_alias="autoResume")
    on_timeout: Literal["kill", "pause"] = Field(serialization_alias="onTimeout")


class ListedSandbox(_Out):
    template_id: str = Field(serialization_alias="templateID")
    sandbox_id: str = Field(serialization_alias="sandboxID")
    client_id: str = Field(serialization_alias="clientID")
    alias: str | None = None
    started_at: datetime = Field(serialization_alias="startedAt")
    end_at: datetime = Field(serialization_alias="endAt")
    cpu_count: int = Field(serialization_alias="cpuCount")
    memory_mb: int = Field(serialization_alias="memoryMB")
    disk_size_mb: int = Field(serialization_alias="diskSizeMB")
    state: Literal["running", "paused"]
    envd_version: str = Field(serialization_alias="envdVersion")
    metadata: dict[str, str] = Field(default_factory=dict)


class SandboxDetail(ListedSandbox):
    envd_access_token: str | None = Field(default=None, serialization_alias="envdAccessToken")
    allow_internet_access: bool | None = Field(default=None, serialization_alias="allowInternetAccess")
    domain: str | None = None
    lifecycle: Lifecycle


class SandboxMetric(_Out):
    timestamp: datetime
    timestamp_unix: int = Field(serialization_alias="timestampUnix")
    cpu_count: int = Field(serialization_alias="cpuCount")
    cpu_used_pct: float = Field(serialization_alias="cpuUsedPct")
    mem_used: int = Field(serialization_alias="memUsed")
    mem_total: int = Field(serialization_alias="memTotal")
    mem_cache: int = Field(serialization_alias="memCache")
    disk_used: int = Field(serialization_alias="diskUsed")
    disk_total: int = Field(serialization_alias="diskTotal")
