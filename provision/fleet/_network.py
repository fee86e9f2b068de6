"""The fleet's network: a VPC with one public subnet, and the security groups that are the firewall.

Rules (nothing else is open):

- ``hosts``  ingress tcp/22 from ``admin_cidrs`` (SSH for Ansible/onboarding);
             ingress tcp/agent_port from the control plane's group only (the agent API, mutual TLS);
             egress all (packages, the S3 endpoint for snapshots).
- ``api``    ingress tcp/api_port and tcp/80 from ``api_cidrs`` (REST API, sandbox traffic proxy, ACME redirects).
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from wrenn.provision.fleet._settings import FleetSettings

__all__ = ["FleetNetwork"]


class FleetNetwork(pulumi.ComponentResource):
    """VPC, subnet, internet route and the two security groups of a fleet."""

    def __init__(self, name: str, settings: FleetSettings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("wrenn:fleet:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {"wrenn:fleet": settings.name}
        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc", cidr_block=settings.vpc_cidr, enable_dns_hostnames=True, tags=tags, opts=child
        )
        self.subnet = aws.ec2.Subnet(
            f"{name}-subnet",
            vpc_id=self.vpc.id,
            cidr_block=settings.subnet_cidr,
            map_public_ip_on_launch=True,
            tags=tags,
            opts=child,
        )
        gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=self.vpc.id, tags=tags, opts=child)
        routes = aws.ec2.RouteTable(
            f"{name}-routes",
            vpc_id=self.vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)],
            tags=tags,
            opts=child,
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-routes-assoc", subnet_id=self.subnet.id, route_table_id=routes.id, opts=child
        )

        self.hosts_group = aws.ec2.SecurityGroup(
            f"{name}-hosts", vpc_id=self.vpc.id, description="Wrenn KVM hosts", tags=tags, opts=child
        )
        self.api_group = aws.ec2.SecurityGroup(
            f"{name}-api", vpc_id=self.vpc.id, description="Wrenn control plane", tags=tags, opts=child
        )
        self.rules: list[aws.vpc.SecurityGroupIngressRule | aws.vpc.SecurityGroupEgressRule] = []
        for i, cidr in enumerate(settings.admin_cidrs):
            self.rules.append(
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-ssh-{i}",
                    security_group_id=self.hosts_group.id,
                    ip_protocol="tcp",
                    from_port=22,
                    to_port=22,
                    cidr_ipv4=cidr,
                    description="SSH for Ansible and wrenn provision host",
                    opts=child,
                )
            )
        self.rules.append(
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-agent",
                security_group_id=self.hosts_group.id,
                ip_protocol="tcp",
                from_port=settings.agent_port,
                to_port=settings.agent_port,
                referenced_security_group_id=self.api_group.id,
                description="agent API (mutual TLS) from the control plane only",
                opts=child,
            )
        )
        self.rules.append(
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-egress",
                security_group_id=self.hosts_group.id,
                ip_protocol="-1",
                cidr_ipv4="0.0.0.0/0",
                description="packages and the snapshot bucket",
                opts=child,
            )
        )
        for i, cidr in enumerate(settings.api_cidrs):
            for port in (settings.api_port, 80):
                self.rules.append(
                    aws.vpc.SecurityGroupIngressRule(
                        f"{name}-api-{port}-{i}",
                        security_group_id=self.api_group.id,
                        ip_protocol="tcp",
                        from_port=port,
                        to_port=port,
                        cidr_ipv4=cidr,
                        description="REST API and sandbox traffic proxy",
                        opts=child,
                    )
                )
        self.register_outputs({"vpc_id": self.vpc.id, "subnet_id": self.subnet.id})
