"""`WrennFleet`: network, KVM hosts, snapshot bucket and DNS, plus the Ansible inventory handed to the playbooks."""

from __future__ import annotations

from typing import Any

import pulumi

from wrenn.provision.fleet._dns import SandboxDns
from wrenn.provision.fleet._hosts import KvmHosts
from wrenn.provision.fleet._inventory import HostAddresses, render_inventory
from wrenn.provision.fleet._network import FleetNetwork
from wrenn.provision.fleet._settings import FleetSettings
from wrenn.provision.fleet._storage import SnapshotBucket

__all__ = ["WrennFleet"]


class WrennFleet(pulumi.ComponentResource):
    """A whole fleet. ``ansible_inventory`` is the YAML to run ``playbooks/onboard-host.yml``/``site.yml`` with."""

    def __init__(self, name: str, settings: FleetSettings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("wrenn:fleet:WrennFleet", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.settings = settings
        self.network = FleetNetwork(f"{name}-net", settings, opts=child)
        self.hosts = KvmHosts(
            f"{name}-host",
            settings,
            subnet_id=self.network.subnet.id,
            hosts_group_id=self.network.hosts_group.id,
            api_group_id=self.network.api_group.id,
            opts=child,
        )
        self.snapshots = SnapshotBucket(f"{name}-snapshots", settings, opts=child)
        control_plane = self.hosts.instances[0]
        self.dns = SandboxDns(f"{name}-dns", settings, proxy_ip=control_plane.public_ip, opts=child)

        self.api_url = pulumi.Output.concat("https://api.", settings.sandbox_domain)
        self.host_addresses = pulumi.Output.all(
            *[pulumi.Output.all(h.public_ip, h.private_ip) for h in self.hosts.instances]
        ).apply(
            lambda pairs: [
                HostAddresses(name=f"{settings.name}-{i}", public_ip=str(pub), private_ip=str(priv))
                for i, (pub, priv) in enumerate(pairs)
            ]
        )
        self.ansible_inventory = pulumi.Output.all(self.host_addresses, self.snapshots.bucket.bucket).apply(
            lambda args: self._inventory(args[0], args[1])
        )
        self.register_outputs(self.outputs())

    def _inventory(self, hosts: list[HostAddresses], bucket: str) -> str:
        s = self.settings
        return render_inventory(
            hosts,
            ssh_user=s.ssh_user,
            api_url=f"https://api.{s.sandbox_domain}",
            agent_port=s.agent_port,
            bucket=bucket,
            sandbox_domain=s.sandbox_domain,
        )

    def resource_ids(self) -> pulumi.Output[list[str]]:
        """Resolves once every resource of the fleet is registered (tests wait on it before reading the graph)."""
        resources: list[pulumi.CustomResource] = [
            self.network.vpc,
            self.network.subnet,
            self.network.hosts_group,
            self.network.api_group,
            *self.network.rules,
            *self.hosts.instances,
            self.snapshots.bucket,
            self.snapshots.public_access_block,
            self.snapshots.encryption,
            self.snapshots.lifecycle,
            self.dns.wildcard,
            self.dns.apex,
        ]
        return pulumi.Output.all(*[r.id for r in resources])

    def outputs(self) -> dict[str, Any]:
        """What the program exports (``pulumi stack output``)."""
        return {
            "host_public_ips": [h.public_ip for h in self.hosts.instances],
            "host_private_ips": [h.private_ip for h in self.hosts.instances],
            "control_plane_ip": self.hosts.instances[0].public_ip,
            "api_url": self.api_url,
            "snapshot_bucket": self.snapshots.bucket.bucket,
            "sandbox_wildcard": self.dns.wildcard.name,
            "ansible_inventory": self.ansible_inventory,
        }
