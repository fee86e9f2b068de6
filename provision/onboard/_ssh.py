"""SSH to the host being onboarded, with fabric/paramiko; errors come out as `SSHConnectError`.

Host keys: with a known_hosts file the key must already be in it (paramiko's RejectPolicy); without one the key is
accepted on first use and written to ``~/.ssh/known_hosts`` (trust on first use, said in the report).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paramiko
from fabric import Connection
from invoke.exceptions import UnexpectedExit

from wrenn.provision._errors import SSHConnectError
from wrenn.provision.onboard._target import SSHTarget

__all__ = ["CommandResult", "RemoteShell", "open_ssh"]


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str


class RemoteShell(Protocol):
    """What onboarding needs from a connection: run a shell command and get its result (non-zero is not an error)."""

    def run(self, command: str) -> CommandResult: ...


class _FabricShell:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def run(self, command: str) -> CommandResult:
        try:
            result = self._connection.run(command, hide=True, warn=True, in_stream=False)
        except UnexpectedExit as exc:  # not raised with warn=True; kept for older fabric releases
            result = exc.result
        except (paramiko.SSHException, OSError) as exc:
            raise SSHConnectError(f"{command!r} over SSH failed: {exc}") from exc
        return CommandResult(exit_code=int(result.exited), stdout=str(result.stdout), stderr=str(result.stderr))


@contextmanager
def open_ssh(
    target: SSHTarget, *, identity: Path | None = None, known_hosts: Path | None = None, timeout_s: float = 15.0
) -> Iterator[RemoteShell]:
    connect_kwargs: dict[str, object] = {"timeout": timeout_s, "banner_timeout": timeout_s, "auth_timeout": timeout_s}
    if identity is not None:
        connect_kwargs |= {"key_filename": str(identity), "look_for_keys": False, "allow_agent": False}
    connection = Connection(host=target.host, user=target.user, port=target.port, connect_kwargs=connect_kwargs)
    client = connection.client
    if known_hosts is not None:
        client.load_host_keys(str(known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        connection.open()
    except (paramiko.SSHException, OSError) as exc:
        connection.close()
        raise SSHConnectError(f"cannot connect to {target}: {exc}") from exc
    try:
        yield _FabricShell(connection)
    finally:
        connection.close()
