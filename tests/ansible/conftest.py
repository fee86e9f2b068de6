"""A throwaway Wrenn node for playbook tests: every path, name, port and database is unique to the test run.

Host-global steps of the roles still run for real (apt, sysctl, nftables, PostgreSQL), scoped so they leave the
machine as it was: the sysctl values are the ones in force, the nftables table and the database carry the run's
name, and teardown stops the services the playbook started (by their pidfiles), drops the table and the database.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from wrenn.provision.onboard import repo_root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    name: str
    root: Path
    vars: dict[str, Any]

    @property
    def run_dir(self) -> Path:
        return Path(self.vars["wrenn_run_dir"])

    def stop_services(self) -> None:
        for pidfile in sorted(self.run_dir.glob("*.pid")):
            subprocess.run(
                [
                    "start-stop-daemon",
                    "--stop",
                    "--pidfile",
                    str(pidfile),
                    "--remove-pidfile",
                    "--retry",
                    "TERM/30/KILL/5",
                ],
                check=False,
                capture_output=True,
            )


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", sql], check=False, capture_output=True
    )


def make_node(root: Path, **overrides: Any) -> Node:
    name = "wt" + secrets.token_hex(3)
    # The data dir holds the agent's QMP/serial Unix sockets: keep it short (sun_path is 108 bytes), not under
    # pytest's long tmp_path.
    data = Path(tempfile.mkdtemp(prefix=f"{name}-", dir="/tmp"))
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    variables: dict[str, Any] = {
        "wrenn_instance": name,
        "wrenn_config_dir": str(root / "etc"),
        "wrenn_data_dir": str(data),
        "wrenn_run_dir": str(root / "run"),
        "wrenn_log_dir": str(root / "log"),
        "wrenn_ip_forward": int(forward),
        "kvm_host_sysctl_file": str(root / "etc" / "sysctl.conf"),
        "kvm_host_fact_dir": str(root / "facts"),
        "wrenn_db_name": name,
        "wrenn_db_user": name,
        "wrenn_up_listen": f"127.0.0.1:{free_port()}",
        "wrenn_api_listen": f"127.0.0.1:{free_port()}",
        "wrenn_bin": str(repo_root() / ".venv" / "bin" / "wrenn"),
    }
    variables.update(overrides)
    return Node(name=name, root=root, vars=variables)


def cleanup_node(node: Node) -> None:
    node.stop_services()
    subprocess.run(["nft", "delete", "table", "inet", f"{node.name}_host"], check=False, capture_output=True)
    _psql(f'DROP DATABASE IF EXISTS "{node.vars["wrenn_db_name"]}" WITH (FORCE)')
    _psql(f'DROP ROLE IF EXISTS "{node.vars["wrenn_db_user"]}"')
    shutil.rmtree(node.vars["wrenn_data_dir"], ignore_errors=True)


def _missing_tools() -> list[str]:
    return [t for t in ("ansible-playbook", "start-stop-daemon", "nft", "psql") if not _has(t)]


def _has(tool: str) -> bool:
    return (repo_root() / ".venv" / "bin" / tool).exists() or shutil.which(tool) is not None


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    missing = _missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    if os.geteuid() != 0:
        pytest.skip("needs root (apt, nftables, service supervision)")
    made = make_node(tmp_path)
    try:
        yield made
    finally:
        cleanup_node(made)
