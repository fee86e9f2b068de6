"""Stack settings of a Wrenn fleet, read from Pulumi config (namespace ``wrenn``) and validated with pydantic.

``pulumi config set wrenn:hostCount 3`` etc.; every key has a default except the DNS zone and domain. KVM is the
point of the fleet: an instance type must either be bare metal (``*.metal``) or run with nested virtualisation
enabled (``nestedVirtualization: true``, on the instance families that offer it).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["FleetSettings", "settings_from_config"]


class _Config(Protocol):
    def get(self, key: str) -> str | None: ...
    def get_object(self, key: str) -> Any: ...


class FleetSettings(BaseModel):
    """Everything a stack may set; names are the config keys in snake_case (config uses camelCase)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="wrenn", pattern=r"^[a-z][a-z0-9-]{1,30}$")
    host_count: int = Field(default=2, ge=1, le=64)
    instance_type: str = "c5.metal"
    nested_virtualization: bool = False
    ami_id: str | None = None
    root_volume_gb: int = Field(default=100, ge=20, le=16384)
    ssh_key_name: str | None = None
    ssh_user: str = "admin"
    vpc_cidr: str = "10.42.0.0/16"
    subnet_cidr: str = "10.42.1.0/24"
    admin_cidrs: tuple[str, ...] = ()
    api_cidrs: tuple[str, ...] = ("0.0.0.0/0",)
    api_port: int = 443
    agent_port: int = 5007
    snapshot_bucket_prefix: str = "wrenn-snapshots"
    snapshot_expire_days: int = Field(default=30, ge=1)
    dns_zone_id: str
    sandbox_domain: str

    @field_validator("vpc_cidr", "subnet_cidr")
    @classmethod
    def _network(cls, value: str) -> str:
        return str(ipaddress.ip_network(value))

    @field_validator("admin_cidrs", "api_cidrs")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(ipaddress.ip_network(v)) for v in value)

    @model_validator(mode="after")
    def _kvm_capable(self) -> FleetSettings:
        if not self.instance_type.endswith(".metal") and not self.nested_virtualization:
            raise ValueError(
                f"instance type {self.instance_type!r} is not bare metal; set nestedVirtualization: true "
                "for an instance family that exposes VMX/SVM to guests, or pick a *.metal type"
            )
        subnet = ipaddress.ip_network(self.subnet_cidr)
        if not subnet.subnet_of(ipaddress.ip_network(self.vpc_cidr)):  # type: ignore[arg-type]
            raise ValueError(f"subnet {self.subnet_cidr} is not inside the VPC {self.vpc_cidr}")
        return self

    @property
    def is_metal(self) -> bool:
        return self.instance_type.endswith(".metal")


_KEYS = {
    "name": "name",
    "host_count": "hostCount",
    "instance_type": "instanceType",
    "nested_virtualization": "nestedVirtualization",
    "ami_id": "amiId",
    "root_volume_gb": "rootVolumeGb",
    "ssh_key_name": "sshKeyName",
    "ssh_user": "sshUser",
    "vpc_cidr": "vpcCidr",
    "subnet_cidr": "subnetCidr",
    "admin_cidrs": "adminCidrs",
    "api_cidrs": "apiCidrs",
    "api_port": "apiPort",
    "agent_port": "agentPort",
    "snapshot_bucket_prefix": "snapshotBucketPrefix",
    "snapshot_expire_days": "snapshotExpireDays",
    "dns_zone_id": "dnsZoneId",
    "sandbox_domain": "sandboxDomain",
}
_OBJECTS = {
    "admin_cidrs",
    "api_cidrs",
    "host_count",
    "nested_virtualization",
    "root_volume_gb",
    "api_port",
    "agent_port",
    "snapshot_expire_days",
}


def settings_from_config(config: _Config) -> FleetSettings:
    """Read every known key from a `pulumi.Config` (JSON values for lists, numbers and booleans)."""
    values: dict[str, Any] = {}
    for field, key in _KEYS.items():
        value = config.get_object(key) if field in _OBJECTS else config.get(key)
        if value is not None:
            values[field] = value
    return FleetSettings.model_validate(values)
