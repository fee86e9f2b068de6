"""Hosts: registration tokens, registration and heartbeats, and the clients that call each host's agent.

`register(app, deps)` adds the routes and puts the `HostService` and `HostDirectory` in ``deps.extras``
(keys ``"hosts"`` and ``"host_directory"``) for the sandbox domain and the reconciler.
"""

from __future__ import annotations

from typing import Any

import falcon.asgi

from wrenn.api.deps import Deps
from wrenn.api.hosts._client import AgentClient, AgentTls
from wrenn.api.hosts._directory import HostDirectory
from wrenn.api.hosts._records import HostRecord, HostState, set_state
from wrenn.api.hosts._routes import operations
from wrenn.api.hosts._service import HostService

__all__ = [
    "AgentClient",
    "AgentTls",
    "HostDirectory",
    "HostRecord",
    "HostService",
    "HostState",
    "directory_of",
    "register",
    "set_state",
]


def directory_of(deps: Deps) -> HostDirectory:
    """The app's one `HostDirectory` (made on first use, closed at shutdown)."""
    directory = deps.extras.get("host_directory")
    if isinstance(directory, HostDirectory):
        return directory
    s = deps.settings
    tls = AgentTls(s.agent_ca_file, s.agent_cert_file, s.agent_key_file) if s.agent_ca_file else None
    directory = HostDirectory(deps.store, tls=tls)
    deps.extras["host_directory"] = directory
    deps.on_shutdown(directory.aclose)
    return directory


def register(app: falcon.asgi.App[Any, Any], deps: Deps) -> None:
    service = HostService(
        deps.store, deps.clock, deps.ids, heartbeat_interval_s=deps.settings.host_heartbeat_interval_s
    )
    deps.extras["hosts"] = service
    directory_of(deps)
    deps.routes.add(*operations(service))
