"""KVM-capable hosts: EC2 bare-metal instances, or nested-virtualisation instances, running Debian 12."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from wrenn.provision.fleet._settings import FleetSettings

__all__ = ["DEBIAN_OWNER", "KvmHosts"]

# Debian's official AWS account; its "debian-12-amd64-*" images are what the roles are tested against.
DEBIAN_OWNER = "136693071363"


class KvmHosts(pulumi.ComponentResource):
    """``settings.host_count`` instances in the fleet's subnet; the first one also carries the API's group."""

    def __init__(
        self,
        name: str,
        settings: FleetSettings,
        *,
        subnet_id: pulumi.Input[str],
        hosts_group_id: pulumi.Input[str],
        api_group_id: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("wrenn:fleet:KvmHosts", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ami: pulumi.Input[str]
        if settings.ami_id is not None:
            ami = settings.ami_id
        else:
            ami = aws.ec2.get_ami_output(
                most_recent=True,
                owners=[DEBIAN_OWNER],
                filters=[aws.ec2.GetAmiFilterArgs(name="name", values=["debian-12-amd64-*"])],
                opts=pulumi.InvokeOptions(parent=self),
            ).id
        cpu_options = None if settings.is_metal else aws.ec2.InstanceCpuOptionsArgs(nested_virtualization="enabled")
        self.instances: list[aws.ec2.Instance] = []
        for i in range(settings.host_count):
            groups = [hosts_group_id, api_group_id] if i == 0 else [hosts_group_id]
            role = "control-plane+agent" if i == 0 else "agent"
            self.instances.append(
                aws.ec2.Instance(
                    f"{name}-{i}",
                    ami=ami,
                    instance_type=settings.instance_type,
                    subnet_id=subnet_id,
                    vpc_security_group_ids=groups,
                    associate_public_ip_address=True,
                    key_name=settings.ssh_key_name,
                    cpu_options=cpu_options,
                    root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                        volume_size=settings.root_volume_gb, volume_type="gp3", encrypted=True
                    ),
                    metadata_options=aws.ec2.InstanceMetadataOptionsArgs(http_tokens="required"),
                    tags={"Name": f"{settings.name}-{i}", "wrenn:fleet": settings.name, "wrenn:role": role},
                    opts=child,
                )
            )
        self.register_outputs({"ids": [h.id for h in self.instances]})
