"""envd's mutable configuration: what /init sets (access token, env vars, default user and workdir)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Settings:
    """Start-up options (command-line flags), fixed for the server's life."""

    host: str = "0.0.0.0"  # noqa: S104 - envd listens on the guest's interface; the host side firewalls it
    port: int = 49983
    set_clock: bool = False  # only the guest init asks for it; on a host envd must not touch the clock
    exited_retention: float = 30.0  # seconds an exited process's end event stays available to Connect
    output_buffer_bytes: int = 1024 * 1024  # recent output replayed to a re-attaching client, per process
    access_token: str | None = None
    version: str = "0.6.13"
    port_file: str | None = None  # where to write the bound port once listening (tests bind port 0)
    forward_localhost: bool = False  # relay loopback-only listeners on the guest's address (`_ports`; guest only)


@dataclass
class State:
    """What /init sets; read by every request."""

    access_token: str | None = None
    env_vars: dict[str, str] = field(default_factory=dict)
    default_user: str | None = None
    default_workdir: str | None = None

    def token(self) -> str | None:
        return self.access_token
