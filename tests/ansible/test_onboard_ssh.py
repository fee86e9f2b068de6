"""``wrenn provision host`` over real SSH into a network namespace running openssh-server.

The control plane comes from ``playbooks/control-plane.yml`` (PostgreSQL, the CA, `wrenn api` under the role's
supervisor) listening on the namespace's gateway address; the test logs in as the bootstrapped admin, creates a
one-time host token and onboards the namespace host with it. The agent started by ``onboard-host.yml`` inside the
namespace must register: its identity file appears and ``GET /v1/hosts`` lists it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.ansible.conftest import Node, free_port
from tests.ansible.sshhost import SSHHost, ssh_host
from wrenn.provision.onboard import (
    OnboardOptions,
    RemoteFacts,
    check_host,
    onboard_inventory,
    open_ssh,
    repo_root,
    run_playbook,
)

pytestmark = [pytest.mark.ansible, pytest.mark.root, pytest.mark.slow, pytest.mark.postgres]

_ADMIN = "admin@provision.test"


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[SSHHost]:
    try:
        with ssh_host(tmp_path / "ssh") as host:
            yield host
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def _admin_session(node: Node, api: str) -> tuple[str, str]:
    """A session token of the bootstrapped admin, and the team API key printed next to it."""
    log = (Path(node.vars["wrenn_log_dir"]) / f"{node.name}-api.log").read_text()
    match = re.search(r"created admin \S+ \(password: (\S+)\)", log)
    key = re.search(r"E2B_API_KEY=(\S+)", log)
    assert match, log[-2000:]
    assert key, log[-2000:]
    r = httpx.post(f"{api}/v1/auth/login", json={"email": _ADMIN, "password": match.group(1)}, timeout=10)
    r.raise_for_status()
    return str(r.json()["token"]), key.group(1)


def test_fact_check_over_real_ssh(remote: SSHHost) -> None:
    options = OnboardOptions(
        target=f"root@{remote.address}",
        api_url="http://127.0.0.1:1",
        token="unused",
        identity=remote.identity,
        known_hosts=remote.known_hosts,
    )
    with open_ssh(options.ssh_target, identity=remote.identity, known_hosts=remote.known_hosts) as shell:
        facts = check_host(shell, options.ssh_target)
        ns = shell.run("ip netns identify $$ 2>/dev/null; ip -4 -o addr show scope global")
    assert facts.os_id == "debian"
    assert facts.arch == "x86_64"
    assert facts.cgroup_version in ("v1", "v2")
    assert remote.address in ns.stdout  # the command really ran inside the namespace


def test_unknown_host_key_is_refused(remote: SSHHost, tmp_path: Path) -> None:
    from wrenn.provision import SSHConnectError
    from wrenn.provision.onboard import SSHTarget

    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with (
        pytest.raises(SSHConnectError),
        open_ssh(SSHTarget(user="root", host=remote.address), identity=remote.identity, known_hosts=empty),
    ):
        pass


@pytest.mark.vm
@pytest.mark.sdk
def test_onboard_host_registers_runs_a_sandbox_and_survives_an_upgrade(
    node: Node, remote: SSHHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_listen = f"{remote.gateway}:{free_port()}"
    api = f"http://{api_listen}"
    node.vars |= {
        "wrenn_api_listen": api_listen,
        "wrenn_api_bootstrap_admin": _ADMIN,
        "wrenn_apt_cache_valid_time": 10 * 365 * 86400,  # the namespace has no mirror in reach
    }
    workdir = node.root / "cp"
    workdir.mkdir()
    run_playbook(
        "control-plane.yml", inventory=repo_root() / "inventories" / "local", extra_vars=node.vars, workdir=workdir
    )
    session, api_key = _admin_session(node, api)
    token = httpx.post(
        f"{api}/v1/hosts/tokens", json={"ttl_s": 600}, headers={"Authorization": f"Bearer {session}"}, timeout=10
    )
    assert token.status_code == 201, token.text

    # The namespace has no route to a Debian mirror: the guest image is built (or found cached) out here first;
    # the rootfs role inside then finds it in the shared cache.
    subprocess.run([node.vars["wrenn_bin"], "image", "build", "base"], check=True, capture_output=True, timeout=1800)

    agent_port = free_port()
    agent_vars = {k: v for k, v in node.vars.items() if k.startswith(("wrenn_", "kvm_host_")) and "listen" not in k}
    # The namespace shares this machine's filesystem: the agent runs from this checkout's venv, and boots real VMs
    # (TCG) with its own resource prefix so nothing it creates collides with another agent on this machine.
    agent_vars |= {"wrenn_agent_driver": "qemu", "wrenn_install_method": "existing"}
    prefix = "wp" + node.name[-4:]
    command = [
        sys.executable,
        "-m",
        "wrenn.cli",
        "provision",
        "host",
        f"root@{remote.address}",
        "--api-url",
        api,
        "--token",
        token.json()["token"],
        "--identity",
        str(remote.identity),
        "--known-hosts",
        str(remote.known_hosts),
        "--name",
        "ns-host",
        "--agent-listen",
        f"0.0.0.0:{agent_port}",
        "--advertise-url",
        f"http://{remote.address}:{agent_port}",
        "--admin-token",
        session,
        "--timeout",
        "120",
    ]
    for key, value in agent_vars.items():
        command += ["-e", f"{key}={value}"]
    command += ["-e", json.dumps({"wrenn_agent_extra_env": {"WRENN_AGENT_RESOURCE_PREFIX": prefix}})]
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert result["facts"]["os_id"] == "debian"
    assert result["host_id"]
    assert result["listed_by_api"] is True
    assert time.monotonic() - started < 900

    hosts = httpx.get(f"{api}/v1/hosts", headers={"Authorization": f"Bearer {session}"}, timeout=10).json()
    (ours,) = [h for h in hosts if h["id"] == result["host_id"]]
    assert ours["name"] == "ns-host"
    # control-plane.yml runs the internal CA: the agent (told nothing about TLS) got its certificate at registration
    # and serves mutual TLS with it, so the control plane records it at https:// and every call below uses mTLS.
    assert ours["address"] == f"https://{remote.address}:{agent_port}"
    issued = Path(node.vars["wrenn_data_dir"]) / "agent" / "tls"
    assert oct((issued / "host.key").stat().st_mode & 0o777) == "0o600"
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(issued / "ca.pem"), "-crl_check", "-CRLfile", str(issued / "crl.pem"),
         str(issued / "host.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # The onboarded host runs a sandbox for the official SDK (the control plane schedules on its only host).
    from e2b import Sandbox

    monkeypatch.setenv("E2B_API_URL", api)
    monkeypatch.setenv("E2B_API_KEY", api_key)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    sandbox = Sandbox.create("base", timeout=600)  # 201 only once the VM's envd answered /health on the host
    try:
        # `wrenn api` serves no sandbox proxy (that is `wrenn up`'s), so only API calls here: `is_running()` would
        # ask envd through the proxy.
        assert sandbox.get_info().sandbox_id == sandbox.sandbox_id

        # Rolling upgrade: the agent restarts, the sandbox keeps running and the agent keeps its identity.
        options = OnboardOptions(
            target=f"root@{remote.address}",
            api_url=api,
            token="used",
            identity=remote.identity,
            known_hosts=remote.known_hosts,
            name="ns-host",
        )
        facts = RemoteFacts(python3="/usr/bin/python3", hostname="ns-host")
        upgrade_vars = dict(agent_vars) | {
            "wrenn_api_url": api,
            "wrenn_agent_listen": f"0.0.0.0:{agent_port}",
            "wrenn_agent_advertise_url": f"http://{remote.address}:{agent_port}",
            "wrenn_agent_extra_env": {"WRENN_AGENT_RESOURCE_PREFIX": prefix},
        }
        upgrade_dir = node.root / "upgrade"
        upgrade_dir.mkdir()
        upgraded = run_playbook(
            "upgrade-agents.yml",
            inventory=onboard_inventory(options, facts),
            extra_vars=upgrade_vars,
            workdir=upgrade_dir,
        )
        assert upgraded.recap["ns-host"]["failed"] == 0
        assert upgraded.changed > 0  # the agent was restarted
        assert [s.sandbox_id for s in Sandbox.list().next_items()] == [sandbox.sandbox_id]
        hosts_after = httpx.get(f"{api}/v1/hosts", headers={"Authorization": f"Bearer {session}"}, timeout=10).json()
        assert [h["id"] for h in hosts_after] == [result["host_id"]]  # no second registration
    finally:
        assert sandbox.kill()
