"""`onboard_host`: what ``wrenn provision host user@addr --api-url … --token …`` does, in order.

    facts      SSH in, run the fact script, refuse a host with problems (`HostFactsError`)
    playbook   run playbooks/onboard-host.yml against that one host over SSH, handing it the API URL and the
               one-time registration token (extra vars in a 0600 file, never on a command line)
    report-in  wait until the agent has registered: its identity file (``<data>/agent/host.json``) appears on the
               host; with an admin session token, also until ``GET /v1/hosts`` lists that host id

Every step is idempotent (the playbook is; a host that registered keeps its identity and ignores the token), so a
failed onboarding is repaired by running the command again.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from wrenn.provision._errors import HostFactsError, RegistrationTimeout
from wrenn.provision.onboard._facts import FACTS_SCRIPT, RemoteFacts
from wrenn.provision.onboard._playbook import PlaybookResult, run_playbook
from wrenn.provision.onboard._ssh import RemoteShell, open_ssh
from wrenn.provision.onboard._target import SSHTarget

__all__ = ["OnboardOptions", "OnboardResult", "check_host", "onboard_host", "onboard_inventory"]

Progress = Callable[[str], None]
ShellFactory = Callable[["OnboardOptions"], AbstractContextManager[RemoteShell]]
PlaybookRunner = Callable[..., PlaybookResult]


class OnboardOptions(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    target: str
    api_url: str = Field(pattern=r"^https?://")
    token: str = Field(min_length=1)
    identity: Path | None = None
    known_hosts: Path | None = None
    name: str | None = None
    agent_listen: str = "0.0.0.0:5007"
    advertise_url: str | None = None
    admin_token: str | None = None
    data_dir: str = "/var/lib/wrenn"
    extra_vars: dict[str, Any] = Field(default_factory=dict)
    check_only: bool = False
    timeout_s: float = 600.0
    poll_s: float = 1.0

    @property
    def ssh_target(self) -> SSHTarget:
        return SSHTarget.parse(self.target)

    def agent_data_dir(self) -> str:
        return f"{self.extra_vars.get('wrenn_data_dir', self.data_dir)}/agent"


class OnboardResult(BaseModel):
    target: str
    facts: RemoteFacts
    accelerator_hint: str
    playbook_changed: int | None = None
    host_id: str | None = None
    listed_by_api: bool | None = None


def _default_shell(options: OnboardOptions) -> AbstractContextManager[RemoteShell]:
    return open_ssh(options.ssh_target, identity=options.identity, known_hosts=options.known_hosts)


def check_host(shell: RemoteShell, target: SSHTarget) -> RemoteFacts:
    """Gather the host's facts; `HostFactsError` lists every problem at once."""
    result = shell.run(f"sh -c {shlex.quote(FACTS_SCRIPT)}")
    if result.exit_code != 0:
        raise HostFactsError(str(target), [f"fact script failed ({result.exit_code}): {result.stderr.strip()}"])
    facts = RemoteFacts.parse(result.stdout)
    problems = facts.problems()
    if problems:
        raise HostFactsError(str(target), problems)
    return facts


def onboard_inventory(options: OnboardOptions, facts: RemoteFacts) -> dict[str, object]:
    """The one-host inventory (group ``agents``) the onboarding playbook runs with; reusable for upgrade-agents.yml."""
    target = options.ssh_target
    name = options.name or facts.hostname or target.host
    ssh_args = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
    if options.known_hosts is not None:
        ssh_args += ["-o", f"UserKnownHostsFile={options.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    else:
        ssh_args += ["-o", "StrictHostKeyChecking=accept-new"]
    host: dict[str, object] = {
        "ansible_host": target.host,
        "ansible_port": target.port,
        "ansible_user": target.user,
        "ansible_python_interpreter": facts.python3 or "/usr/bin/python3",
        "ansible_ssh_common_args": " ".join(shlex.quote(a) for a in ssh_args),
    }
    if options.identity is not None:
        host["ansible_ssh_private_key_file"] = str(options.identity)
    return {"all": {"children": {"agents": {"hosts": {name: host}}}}}


def _read_host_id(shell: RemoteShell, data_dir: str) -> str | None:
    # Only the id is printed: host.json also holds the host's secret, which has no business on the controller.
    script = (
        "import json,sys\n"
        "try:\n    print(json.load(open(sys.argv[1]))['host_id'])\n"
        "except (OSError, ValueError, KeyError):\n    sys.exit(1)\n"
    )
    result = shell.run(f"python3 -c {shlex.quote(script)} {shlex.quote(data_dir + '/host.json')}")
    if result.exit_code != 0:
        return None
    return result.stdout.strip() or None


def _api_lists(options: OnboardOptions, host_id: str) -> bool:
    assert options.admin_token is not None
    try:
        response = httpx.get(
            f"{options.api_url.rstrip('/')}/v1/hosts",
            headers={"Authorization": f"Bearer {options.admin_token}"},
            timeout=10,
        )
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    return any(h.get("id") == host_id for h in json.loads(response.text))


def _poll(deadline: float, interval: float) -> Iterator[None]:
    while True:
        yield
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)  # a remote file over SSH has no change notification to wait on


def onboard_host(
    options: OnboardOptions,
    *,
    progress: Progress = lambda _msg: None,
    shell_factory: ShellFactory = _default_shell,
    playbook_runner: PlaybookRunner = run_playbook,
) -> OnboardResult:
    target = options.ssh_target
    progress(f"connecting to {target}")
    with shell_factory(options) as shell:
        facts = check_host(shell, target)
        progress(
            f"facts: {facts.os_id} {facts.os_version} {facts.arch}, cgroups {facts.cgroup_version}, "
            f"accelerator hint {facts.accelerator_hint}, {facts.cpus} CPUs"
        )
        result = OnboardResult(target=str(target), facts=facts, accelerator_hint=facts.accelerator_hint)
        if options.check_only:
            return result

        extra_vars: dict[str, object] = {
            "wrenn_api_url": options.api_url,
            "wrenn_registration_token": options.token,
            "wrenn_agent_listen": options.agent_listen,
        }
        if options.advertise_url:
            extra_vars["wrenn_agent_advertise_url"] = options.advertise_url
        extra_vars |= options.extra_vars
        progress("running playbooks/onboard-host.yml")
        with tempfile.TemporaryDirectory(prefix="wrenn-onboard-") as workdir:
            played = playbook_runner(
                "onboard-host.yml",
                inventory=onboard_inventory(options, facts),
                extra_vars=extra_vars,
                workdir=Path(workdir),
            )
        result = result.model_copy(update={"playbook_changed": played.changed})

        progress("waiting for the agent to register")
        deadline = time.monotonic() + options.timeout_s
        host_id: str | None = None
        for _ in _poll(deadline, options.poll_s):
            host_id = host_id or _read_host_id(shell, options.agent_data_dir())
            if host_id is not None and (options.admin_token is None or _api_lists(options, host_id)):
                break
        else:
            raise RegistrationTimeout(
                f"the agent on {target} did not report in within {options.timeout_s:.0f}s "
                f"(registered: {host_id is not None})"
            )
    progress(f"registered as {host_id}")
    return result.model_copy(update={"host_id": host_id, "listed_by_api": options.admin_token is not None or None})
