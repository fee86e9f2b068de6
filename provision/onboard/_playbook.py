"""Running ``ansible-playbook`` from the controller and reading its recap (ok/changed/failed per host)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from pydantic import BaseModel

from wrenn.provision._errors import PlaybookError

__all__ = ["PlaybookResult", "parse_recap", "repo_root", "run_playbook"]

_RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$")


class PlaybookResult(BaseModel):
    playbook: str
    returncode: int
    recap: dict[str, dict[str, int]]
    output: str

    @property
    def changed(self) -> int:
        return sum(host.get("changed", 0) for host in self.recap.values())

    @property
    def failed(self) -> int:
        return sum(host.get("failed", 0) + host.get("unreachable", 0) for host in self.recap.values())


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP block: ``{host: {"ok": 28, "changed": 0, ...}}`` (the last recap wins for a host)."""
    recap: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        match = _RECAP_LINE.match(line.strip()) if in_recap else None
        if match is not None:
            counts = dict(pair.split("=") for pair in match.group("counts").split())
            recap[match.group("host")] = {k: int(v) for k, v in counts.items()}
    return recap


def repo_root() -> Path:
    """The checkout holding playbooks/, roles/ and inventories/ (this package lives in <root>/provision/onboard)."""
    return Path(__file__).resolve().parents[2]


def _ansible_playbook() -> str:
    beside = Path(sys.executable).with_name("ansible-playbook")
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise PlaybookError("ansible-playbook", 127, "ansible-playbook is not installed (pip install wrenn[provision])")
    return found


def run_playbook(
    playbook: str,
    *,
    inventory: Path | Mapping[str, object],
    extra_vars: Mapping[str, object] | None = None,
    workdir: Path,
    args: Sequence[str] = (),
    timeout_s: float = 3600,
) -> PlaybookResult:
    """Run ``playbooks/<playbook>``; an inventory mapping is written as YAML into ``workdir`` first."""
    root = repo_root()
    if not isinstance(inventory, Path):
        path = workdir / "inventory.yml"
        path.write_text(yaml.safe_dump(dict(inventory), sort_keys=False))
        inventory = path
    command = [_ansible_playbook(), "-i", str(inventory), str(root / "playbooks" / playbook), *args]
    if extra_vars:
        vars_file = workdir / "extra-vars.yml"
        vars_file.write_text(yaml.safe_dump(dict(extra_vars), sort_keys=False))
        vars_file.chmod(0o600)
        command += ["-e", f"@{vars_file}"]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    try:
        proc = subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise PlaybookError(playbook, -1, f"timed out after {timeout_s}s\n{partial}") from exc
    output = proc.stdout + proc.stderr
    result = PlaybookResult(
        playbook=playbook, returncode=proc.returncode, recap=parse_recap(proc.stdout), output=output
    )
    if proc.returncode != 0:
        raise PlaybookError(playbook, proc.returncode, output)
    return result
