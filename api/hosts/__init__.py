"""Hosts: registration tokens, registration and heartbeats, and the clients that call each host's agent.

`register(app, deps)` adds the routes and puts the `HostService` and `HostDirectory` in ``deps.extras``
(keys ``"hosts"`` and ``"host_directory"``) for the sandbox domain and the reconciler.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import falcon.asgi

from wrenn.api.deps import Deps
from wrenn.api.hosts._client import AgentClient, AgentTls
from wrenn.api.hosts._directory import HostDirectory
from wrenn.api.hosts._records import HostRecord, HostState, set_state
from wrenn.api.hosts._routes import operations
from wrenn.api.hosts._service import HostService
from wrenn.provision.ca import (
    CAError,
    CertificateAuthority,
    CertificateRenewer,
    IssuedCertificate,
    ReloadingClientContext,
    TLSFiles,
)

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
    directory = directory_of(deps)
    deps.routes.add(*operations(service))
    ca_dir = deps.settings.ca_dir
    if ca_dir is None:
        return

    async def start_mutual_tls() -> None:
        """With an internal CA: sign agents' CSRs at registration, and call agents with a client certificate the
        CA issues (renewed in the background, reloaded in place)."""
        ca = await asyncio.to_thread(CertificateAuthority.load, ca_dir)
        service.use_ca(ca)
        files = TLSFiles(
            ca.ca_file, deps.settings.data_dir / "api-client.pem", deps.settings.data_dir / "api-client.key"
        )
        files.cert_file.parent.mkdir(parents=True, exist_ok=True)
        if not await asyncio.to_thread(_issued_by, ca, files.cert_file):
            # left by a control plane with another CA (a re-created CA, a shared data dir): agents would refuse it
            # while it is still valid, so it is replaced now rather than at its renewal time
            files.cert_file.unlink(missing_ok=True)

        async def issue() -> IssuedCertificate:
            return await asyncio.to_thread(ca.issue_client, "wrenn-api")

        renewer = CertificateRenewer(issue=issue, cert_file=files.cert_file, key_file=files.key_file, clock=deps.clock)
        await renewer.__aenter__()
        deps.on_shutdown(renewer.aclose)
        context = ReloadingClientContext(files)
        renewer.on_renewed = lambda _cert: context.reload()
        directory.use_ssl_context(context.context)

    deps.on_startup(start_mutual_tls)


def _issued_by(ca: CertificateAuthority, cert_file: Path) -> bool:
    """True when ``cert_file`` holds a certificate ``ca`` signed (False: missing, unreadable or foreign)."""
    try:
        ca.verify(cert_file.read_text())
    except (OSError, ValueError, CAError):
        return False
    return True
