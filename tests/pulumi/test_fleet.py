"""The fleet program's resource graph under Pulumi's mocks: hosts, firewall rules, bucket, DNS, outputs."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
import yaml
from pydantic import ValidationError

from tests.pulumi.conftest import FleetMocks, pulumi_test
from wrenn.provision.fleet import FleetSettings, WrennFleet, settings_from_config

_BASE = {"dns_zone_id": "Z123", "sandbox_domain": "sbx.example.com", "admin_cidrs": ("198.51.100.0/24",)}


def _settings(**overrides: Any) -> FleetSettings:
    return FleetSettings.model_validate(_BASE | overrides)


@pulumi_test
def test_host_count_type_and_image(mocks: FleetMocks) -> pulumi.Output[Any]:
    fleet = WrennFleet("t", _settings(host_count=3, instance_type="m5zn.metal"))

    def check(_: Any) -> None:
        instances = mocks.of_type("aws:ec2/instance:Instance")
        assert len(instances) == 3
        assert {i.inputs["instanceType"] for i in instances} == {"m5zn.metal"}
        assert {i.inputs["ami"] for i in instances} == {"ami-0debian12"}
        assert "aws:ec2/getAmi:getAmi" in mocks.calls
        assert all("cpuOptions" not in i.inputs for i in instances)  # bare metal: KVM without nesting
        assert all(i.inputs["rootBlockDevice"]["encrypted"] for i in instances)

    return pulumi.Output.all(fleet.resource_ids(), fleet.ansible_inventory).apply(check)


@pulumi_test
def test_nested_virtualisation_instances_enable_it(mocks: FleetMocks) -> pulumi.Output[Any]:
    fleet = WrennFleet("t", _settings(host_count=1, instance_type="c8i.2xlarge", nested_virtualization=True))

    def check(_: Any) -> None:
        (instance,) = mocks.of_type("aws:ec2/instance:Instance")
        assert instance.inputs["cpuOptions"] == {"nestedVirtualization": "enabled"}

    return pulumi.Output.all(fleet.resource_ids(), fleet.ansible_inventory).apply(check)


def test_non_metal_without_nested_virtualisation_is_refused() -> None:
    with pytest.raises(ValidationError, match="not bare metal"):
        _settings(instance_type="t3.large")


def test_subnet_must_be_inside_the_vpc() -> None:
    with pytest.raises(ValidationError, match="not inside"):
        _settings(subnet_cidr="192.168.0.0/24")


@pulumi_test
def test_firewall_rules(mocks: FleetMocks) -> pulumi.Output[Any]:
    fleet = WrennFleet("t", _settings(host_count=2, admin_cidrs=("198.51.100.0/24", "192.0.2.7/32")))

    def check(_: Any) -> None:
        ingress = mocks.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        rules = {
            (r.inputs["fromPort"], r.inputs.get("cidrIpv4"), r.inputs.get("referencedSecurityGroupId")) for r in ingress
        }
        assert rules == {
            (22, "198.51.100.0/24", None),
            (22, "192.0.2.7/32", None),
            (5007, None, "t-net-api-id"),  # the agent port only from the control plane's group
            (443, "0.0.0.0/0", None),
            (80, "0.0.0.0/0", None),
        }
        ssh = [r for r in ingress if r.inputs["fromPort"] == 22]
        assert {r.inputs["securityGroupId"] for r in ssh} == {"t-net-hosts-id"}
        web = [r for r in ingress if r.inputs["fromPort"] in (80, 443)]
        assert {r.inputs["securityGroupId"] for r in web} == {"t-net-api-id"}
        instances = {i.name: i for i in mocks.of_type("aws:ec2/instance:Instance")}
        assert instances["t-host-0"].inputs["vpcSecurityGroupIds"] == ["t-net-hosts-id", "t-net-api-id"]
        assert instances["t-host-1"].inputs["vpcSecurityGroupIds"] == ["t-net-hosts-id"]
        (egress,) = mocks.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
        assert egress.inputs["ipProtocol"] == "-1"

    return pulumi.Output.all(fleet.resource_ids(), fleet.ansible_inventory).apply(check)


@pulumi_test
def test_snapshot_bucket_is_private_encrypted_and_expires(mocks: FleetMocks) -> pulumi.Output[Any]:
    fleet = WrennFleet("t", _settings(snapshot_expire_days=14))

    def check(_: Any) -> None:
        (bucket,) = mocks.of_type("aws:s3/bucket:Bucket")
        assert bucket.inputs["bucketPrefix"] == "wrenn-snapshots-"
        (block,) = mocks.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
        assert all(block.inputs[k] for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls"))
        (lifecycle,) = mocks.of_type("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
        (rule,) = lifecycle.inputs["rules"]
        assert rule["expiration"]["days"] == 14
        assert rule["status"] == "Enabled"
        assert (
            len(mocks.of_type("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"))
            == 1
        )

    return fleet.resource_ids().apply(check)


@pulumi_test
def test_wildcard_dns_points_at_the_control_plane(mocks: FleetMocks) -> pulumi.Output[Any]:
    fleet = WrennFleet("t", _settings(host_count=2))

    def check(_: Any) -> None:
        records = {r.inputs["name"]: r.inputs for r in mocks.of_type("aws:route53/record:Record")}
        assert set(records) == {"*.sbx.example.com", "api.sbx.example.com"}
        wildcard = records["*.sbx.example.com"]
        assert wildcard["zoneId"] == "Z123"
        assert wildcard["type"] == "A"
        assert wildcard["records"] == ["203.0.113.1"]  # the first host, which runs the API and its proxy

    return fleet.resource_ids().apply(check)


@pulumi_test
def test_outputs_hand_the_hosts_to_ansible(mocks: FleetMocks) -> pulumi.Output[Any]:
    fleet = WrennFleet("t", _settings(host_count=2, ssh_user="admin"))
    outputs = fleet.outputs()

    def check(values: list[Any]) -> None:
        inventory_yaml, public_ips, bucket, api_url = values
        assert public_ips == ["203.0.113.1", "203.0.113.2"]
        assert bucket == "wrenn-snapshots-0001"
        assert api_url == "https://api.sbx.example.com"
        inventory = yaml.safe_load(inventory_yaml)["all"]
        assert inventory["vars"]["wrenn_snapshot_bucket"] == "wrenn-snapshots-0001"
        assert inventory["vars"]["wrenn_api_url"] == "https://api.sbx.example.com"
        agents = inventory["children"]["agents"]["hosts"]
        assert list(agents) == ["wrenn-0", "wrenn-1"]
        assert agents["wrenn-1"] == {
            "ansible_host": "203.0.113.2",
            "ansible_user": "admin",
            "wrenn_agent_address": "https://10.42.1.12:5007",
        }
        assert list(inventory["children"]["control_plane"]["hosts"]) == ["wrenn-0"]

    return pulumi.Output.all(
        outputs["ansible_inventory"], outputs["host_public_ips"], outputs["snapshot_bucket"], outputs["api_url"]
    ).apply(check)


class _Config:
    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def get(self, key: str) -> str | None:
        value = self.values.get(key)
        return None if value is None else str(value)

    def get_object(self, key: str) -> Any:
        return self.values.get(key)


def test_settings_from_stack_config() -> None:
    settings = settings_from_config(
        _Config(
            {
                "hostCount": 5,
                "instanceType": "c6i.metal",
                "adminCidrs": ["192.0.2.0/24"],
                "dnsZoneId": "Z9",
                "sandboxDomain": "s.example.org",
            }
        )
    )
    assert settings.host_count == 5
    assert settings.instance_type == "c6i.metal"
    assert settings.admin_cidrs == ("192.0.2.0/24",)
    assert settings.agent_port == 5007


def test_settings_require_a_dns_zone() -> None:
    with pytest.raises(ValidationError, match="dns_zone_id"):
        settings_from_config(_Config({"sandboxDomain": "s.example.org"}))
