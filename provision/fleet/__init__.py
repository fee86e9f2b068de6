"""Pulumi components of a Wrenn fleet (the program itself is ``pulumi/__main__.py``).

- `WrennFleet` — the whole fleet: `FleetNetwork` (VPC, subnet, security groups), `KvmHosts` (bare-metal or
  nested-virtualisation EC2 instances, Debian 12), `SnapshotBucket` (private S3 bucket for cold snapshots with an
  expiry rule), `SandboxDns` (``*.<domain>`` and ``api.<domain>`` records to the proxy).
- `FleetSettings`/`settings_from_config`: the stack's ``wrenn:*`` config, validated.
- `render_inventory`: the Ansible inventory (YAML) exported as ``ansible_inventory``.

Importing this package imports ``pulumi`` and ``pulumi_aws`` (the ``provision`` extra); nothing else in Wrenn does.
"""

from __future__ import annotations

from wrenn.provision.fleet._dns import SandboxDns
from wrenn.provision.fleet._fleet import WrennFleet
from wrenn.provision.fleet._hosts import DEBIAN_OWNER, KvmHosts
from wrenn.provision.fleet._inventory import HostAddresses, render_inventory
from wrenn.provision.fleet._network import FleetNetwork
from wrenn.provision.fleet._settings import FleetSettings, settings_from_config
from wrenn.provision.fleet._storage import SnapshotBucket

__all__ = [
    "DEBIAN_OWNER",
    "FleetNetwork",
    "FleetSettings",
    "HostAddresses",
    "KvmHosts",
    "SandboxDns",
    "SnapshotBucket",
    "WrennFleet",
    "render_inventory",
    "settings_from_config",
]
