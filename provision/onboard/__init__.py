"""SSH onboarding (``wrenn provision host``): check the remote host, run onboard-host.yml on it, wait for its agent.

- `onboard_host(OnboardOptions)` → `OnboardResult`: the whole flow (see `wrenn.provision.onboard._onboard`).
- `check_host`/`RemoteFacts`: the fact check alone (OS, arch, /dev/kvm → accelerator hint, cgroups, python3).
- `run_playbook`/`parse_recap`: ``ansible-playbook`` from the controller, recap parsed (also used by the tests).
- `open_ssh`/`RemoteShell`: the fabric/paramiko connection behind a small protocol (tests may pass a fake).
"""

from __future__ import annotations

from wrenn.provision.onboard._facts import FACTS_SCRIPT, RemoteFacts
from wrenn.provision.onboard._onboard import (
    OnboardOptions,
    OnboardResult,
    check_host,
    onboard_host,
    onboard_inventory,
)
from wrenn.provision.onboard._playbook import PlaybookResult, parse_recap, repo_root, run_playbook
from wrenn.provision.onboard._ssh import CommandResult, RemoteShell, open_ssh
from wrenn.provision.onboard._target import SSHTarget

__all__ = [
    "FACTS_SCRIPT",
    "CommandResult",
    "OnboardOptions",
    "OnboardResult",
    "PlaybookResult",
    "RemoteFacts",
    "RemoteShell",
    "SSHTarget",
    "check_host",
    "onboard_host",
    "onboard_inventory",
    "open_ssh",
    "parse_recap",
    "repo_root",
    "run_playbook",
]
