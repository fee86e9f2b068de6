"""SSH onboarding without SSH: target parsing, the fact check, recap parsing, and the flow with a fake shell."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from wrenn.provision import HostFactsError, RegistrationTimeout
from wrenn.provision.onboard import (
    CommandResult,
    OnboardOptions,
    PlaybookResult,
    RemoteFacts,
    RemoteShell,
    SSHTarget,
    onboard_host,
    parse_recap,
)

_DEBIAN = """kernel=Linux
arch=x86_64
release=6.1.0-28-amd64
hostname=kvm-7
os_id=debian
os_version=12
dev_kvm=1
dev_kvm_rw=1
cgroup2_controllers=cpuset cpu io memory hugetlb pids rdma misc
cgroup1_controllers=
systemd=1
python3=/usr/bin/python3
mem_kb=65843212
cpus=32
uid=0
"""


@pytest.mark.parametrize(
    ("text", "user", "host", "port"),
    [
        ("root@10.0.0.5", "root", "10.0.0.5", 22),
        ("admin@host.example.net:2222", "admin", "host.example.net", 2222),
        ("root@[fd00::5]:2200", "root", "fd00::5", 2200),
        ("10.0.0.9", "root", "10.0.0.9", 22),
    ],
)
def test_target_parse(text: str, user: str, host: str, port: int) -> None:
    target = SSHTarget.parse(text)
    assert (target.user, target.host, target.port) == (user, host, port)


def test_facts_of_a_good_host() -> None:
    facts = RemoteFacts.parse(_DEBIAN)
    assert facts.problems() == []
    assert facts.cgroup_version == "v2"
    assert facts.accelerator_hint == "kvm"
    assert facts.cpus == 32


def test_hybrid_cgroup_v1_host_without_kvm_is_fine_and_tcg() -> None:
    facts = RemoteFacts.parse(
        _DEBIAN.replace("cgroup2_controllers=cpuset cpu io memory hugetlb pids rdma misc", "cgroup2_controllers=")
        .replace("cgroup1_controllers=", "cgroup1_controllers=cpu cpuacct memory pids cpuset freezer")
        .replace("dev_kvm=1", "dev_kvm=0")
        .replace("dev_kvm_rw=1", "dev_kvm_rw=0")
    )
    assert facts.problems() == []
    assert facts.cgroup_version == "v1"
    assert facts.accelerator_hint == "tcg"


@pytest.mark.parametrize(
    ("replace", "problem"),
    [
        (("arch=x86_64", "arch=aarch64"), "architecture"),
        (("os_id=debian", "os_id=alpine"), "Debian 12"),
        (("os_version=12", "os_version=11"), "Debian 12"),
        (("python3=/usr/bin/python3\n", ""), "python3"),
        (("uid=0", "uid=1000"), "not root"),
        (("cgroup2_controllers=cpuset cpu io memory hugetlb pids rdma misc", "cgroup2_controllers=cpu"), "cgroup"),
    ],
)
def test_fact_problems(replace: tuple[str, str], problem: str) -> None:
    facts = RemoteFacts.parse(_DEBIAN.replace(*replace))
    assert any(problem in p for p in facts.problems())


def test_parse_recap() -> None:
    output = """
PLAY [x] ***
TASK [y] ***
ok: [kvm-1]

PLAY RECAP *********************************************************************
kvm-1                      : ok=28   changed=0    unreachable=0    failed=0    skipped=7    rescued=0    ignored=0
localhost                  : ok=3    changed=2    unreachable=0    failed=0    skipped=0    rescued=0    ignored=0
"""
    recap = parse_recap(output)
    assert recap["kvm-1"]["ok"] == 28
    assert recap["kvm-1"]["changed"] == 0
    assert recap["localhost"]["changed"] == 2


class _FakeHost:
    """A shell that answers the fact script and, once the playbook ran, shows the agent's identity file."""

    def __init__(self, facts: str, *, registers: bool = True) -> None:
        self.facts = facts
        self.registers = registers
        self.played = False
        self.commands: list[str] = []

    def run(self, command: str) -> CommandResult:
        self.commands.append(command)
        if "uname -s" in command:
            return CommandResult(0, self.facts, "")
        if "host.json" in command and self.played and self.registers:
            return CommandResult(0, "host-42\n", "")
        return CommandResult(1, "", "no such file")


def _options(**kw: Any) -> OnboardOptions:
    return OnboardOptions(
        target="root@192.0.2.10", api_url="http://127.0.0.1:3000", token="tok-1", timeout_s=2, poll_s=0.01, **kw
    )


def _flow(host: _FakeHost, options: OnboardOptions) -> tuple[Any, list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []

    @contextmanager
    def shell_factory(_: OnboardOptions) -> Iterator[RemoteShell]:
        yield host

    def runner(playbook: str, **kwargs: Any) -> PlaybookResult:
        calls.append({"playbook": playbook, **kwargs, "workdir_exists": Path(kwargs["workdir"]).is_dir()})
        host.played = True
        return PlaybookResult(playbook=playbook, returncode=0, recap={"kvm-7": {"changed": 5}}, output="")

    result = onboard_host(options, shell_factory=shell_factory, playbook_runner=runner)
    return result, calls


def test_onboard_runs_the_playbook_with_the_token_and_waits_for_registration() -> None:
    result, calls = _flow(_FakeHost(_DEBIAN), _options(extra_vars={"wrenn_agent_driver": "fake"}))
    assert result.host_id == "host-42"
    assert result.playbook_changed == 5
    (call,) = calls
    assert call["playbook"] == "onboard-host.yml"
    assert call["extra_vars"]["wrenn_registration_token"] == "tok-1"
    assert call["extra_vars"]["wrenn_api_url"] == "http://127.0.0.1:3000"
    assert call["extra_vars"]["wrenn_agent_driver"] == "fake"
    hosts = call["inventory"]["all"]["children"]["agents"]["hosts"]
    assert hosts["kvm-7"]["ansible_host"] == "192.0.2.10"
    assert "StrictHostKeyChecking=accept-new" in hosts["kvm-7"]["ansible_ssh_common_args"]
    json.dumps(call["inventory"])  # the inventory is plain data (it is written as YAML)


def test_check_only_does_not_run_the_playbook() -> None:
    result, calls = _flow(_FakeHost(_DEBIAN), _options(check_only=True))
    assert calls == []
    assert result.host_id is None


def test_a_host_with_problems_is_refused_before_anything_is_installed() -> None:
    with pytest.raises(HostFactsError) as info:
        _flow(_FakeHost(_DEBIAN.replace("arch=x86_64", "arch=riscv64")), _options())
    assert "architecture" in str(info.value)


def test_an_agent_that_never_registers_times_out() -> None:
    with pytest.raises(RegistrationTimeout):
        _flow(_FakeHost(_DEBIAN, registers=False), _options())
