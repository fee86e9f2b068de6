"""The hand-over from Pulumi to Ansible: an inventory (YAML) rendered from the hosts' addresses.

Groups match the playbooks: ``control_plane`` (the first host, which also runs the API) and ``agents`` (every host).
``wrenn_agent_address`` is the private address the control plane reaches the agent on; SSH goes to the public one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import yaml

__all__ = ["HostAddresses", "render_inventory"]


@dataclass(frozen=True)
class HostAddresses:
    name: str
    public_ip: str
    private_ip: str


def render_inventory(
    hosts: Sequence[HostAddresses], *, ssh_user: str, api_url: str, agent_port: int, bucket: str, sandbox_domain: str
) -> str:
    if not hosts:
        raise ValueError("a fleet has at least one host")
    hostvars = {
        h.name: {
            "ansible_host": h.public_ip,
            "ansible_user": ssh_user,
            "wrenn_agent_address": f"https://{h.private_ip}:{agent_port}",
        }
        for h in hosts
    }
    inventory = {
        "all": {
            "vars": {
                "wrenn_api_url": api_url,
                "wrenn_snapshot_bucket": bucket,
                "wrenn_sandbox_domain": sandbox_domain,
                "ansible_become": True,
            },
            "children": {
                "control_plane": {"hosts": {hosts[0].name: hostvars[hosts[0].name]}},
                "agents": {"hosts": hostvars},
            },
        }
    }
    return str(yaml.safe_dump(inventory, sort_keys=False))
