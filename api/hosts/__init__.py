"""Hosts: registration tokens, registration and heartbeats, and the clients that call each host's agent.

`register(app, deps)` adds the routes and puts the `HostService` and `HostDirectory` in ``deps.extras``
(keys ``"hosts"`` and ``"host_directory"``) for the sandbox domain and the reconciler.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import falcon.asgi
import structlog

from wrenn.api._tasks import cancel_and_wait
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

_log = structlog.get_logger(__name__)

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
        # The agents' certificates are checked against the CA's CRL too: a revoked host is refused by the next
        # connection (the context follows the CRL file, see ReloadingClientContext.current).
        await service.refresh_crl(ca)
        files = TLSFiles(
            ca.ca_file,
            deps.settings.data_dir / "api-client.pem",
            deps.settings.data_dir / "api-client.key",
            ca.crl_file,
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
        directory.use_ssl_context(context.current)
        refresher = asyncio.create_task(_keep_crl_fresh(service, ca), name="crl-refresh")

        async def stop_refresher() -> None:
            await cancel_and_wait(refresher)

        deps.on_shutdown(stop_refresher)

    deps.on_startup(start_mutual_tls)


async def _keep_crl_fresh(service: HostService, ca: CertificateAuthority) -> None:
    """Re-sign the CRL before it lapses even when no agent asks for it: the API checks agents against it, and an
    expired CRL would make every agent call fail verification."""
    while True:
        await asyncio.sleep(CRL_CHECK_INTERVAL_S)
        try:
            await service.refresh_crl(ca)
        except Exception:  # noqa: BLE001 - logged, tried again next interval
            _log.warning("refreshing the CRL failed", exc_info=True)


CRL_CHECK_INTERVAL_S = 3600.0


def _issued_by(ca: CertificateAuthority, cert_file: Path) -> bool:
    """True when ``cert_file`` holds a certificate ``ca`` signed (False: missing, unreadable or foreign)."""
    try:
        ca.verify(cert_file.read_text())
    except (OSError, ValueError, CAError):
        return False
    return True
