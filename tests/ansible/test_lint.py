"""ansible-lint (production profile) is clean on roles/ and playbooks/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wrenn.provision.onboard import repo_root

pytestmark = [pytest.mark.ansible, pytest.mark.slow]


def test_ansible_lint_is_clean() -> None:
    root = repo_root()
    lint = Path(sys.executable).with_name("ansible-lint")
    if not lint.exists() and shutil.which("ansible-lint") is None:
        pytest.skip("ansible-lint is not installed")
    proc = subprocess.run(
        [
            str(lint) if lint.exists() else "ansible-lint",
            "-c",
            "playbooks/.ansible-lint",
            "--offline",
            "playbooks",
            "roles",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failure(s), 0 warning(s)" in proc.stdout + proc.stderr
