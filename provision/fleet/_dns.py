"""The wildcard DNS record for sandbox hosts: ``*.<sandbox_domain>`` points at the control plane's proxy."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from wrenn.provision.fleet._settings import FleetSettings

__all__ = ["SandboxDns"]


class SandboxDns(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        settings: FleetSettings,
        *,
        proxy_ip: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("wrenn:fleet:SandboxDns", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.wildcard = aws.route53.Record(
            f"{name}-wildcard",
            zone_id=settings.dns_zone_id,
            name=f"*.{settings.sandbox_domain}",
            type="A",
            ttl=60,
            records=[proxy_ip],
            opts=child,
        )
        self.apex = aws.route53.Record(
            f"{name}-api",
            zone_id=settings.dns_zone_id,
            name=f"api.{settings.sandbox_domain}",
            type="A",
            ttl=60,
            records=[proxy_ip],
            opts=child,
        )
        self.register_outputs({"wildcard": self.wildcard.fqdn})
