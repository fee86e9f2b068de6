"""`AgentRuntime`: the host agent's composition root — builds the parts from `AgentSettings`, opens them in order
(envd client, host resources + sandbox manager with recovery, registration, the host certificate keeper), closes
them in reverse. After `start`, `server_tls` is what the listener serves with (`wrenn.agent.tls.server_tls`)."""

from __future__ import annotations

import contextlib
import ssl
from datetime import UTC, datetime

import structlog

from wrenn.agent._envd import EnvdClient
from wrenn.agent._slots import SlotAllocator
from wrenn.agent.registration import Registration, load_identity
from wrenn.agent.sandboxes import Limits, SandboxManager
from wrenn.agent.settings import AgentSettings
from wrenn.agent.state import StateStore
from wrenn.agent.templates import WarmTemplates
from wrenn.agent.tls import HostCertificateKeeper, HostTlsFiles, server_tls, uses_issued_certificate
from wrenn.protocol.errors import Conflict
from wrenn.provision.ca import ReloadingServerContext

_log = structlog.get_logger(__name__)


class AgentRuntime:
    """Everything one agent process runs. ``async with AgentRuntime(settings) as runtime: runtime.manager…``"""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self._stack: contextlib.AsyncExitStack | None = None
        self._manager: SandboxManager | None = None
        self.registration: Registration | None = None
        self.certificates: HostCertificateKeeper | None = None
        self.server_tls: ReloadingServerContext | ssl.SSLContext | None = None

    @property
    def manager(self) -> SandboxManager:
        if self._manager is None:
            raise Conflict("host agent is not started")
        return self._manager

    async def __aenter__(self) -> AgentRuntime:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        settings = self.settings
        settings.sandboxes_dir.mkdir(parents=True, exist_ok=True)
        settings.templates_dir.mkdir(parents=True, exist_ok=True)
        async with contextlib.AsyncExitStack() as stack:
            envd = await stack.enter_async_context(EnvdClient())
            resources = settings.make_resources()
            stack.push_async_callback(resources.aclose)
            driver = settings.make_driver()
            slots = SlotAllocator(settings.max_slots)
            templates = WarmTemplates(
                settings.templates_dir,
                driver=driver,
                resources=resources,
                slots=slots,
                envd=envd,
                boot_limit=settings.envd_ready_limit,
                enabled=settings.warm_templates,
            )
            manager = SandboxManager(
                store=StateStore(settings.sandboxes_dir),
                driver=driver,
                resources=resources,
                images=settings.make_images(),
                templates=templates,
                envd=envd,
                slots=slots,
                limits=Limits(
                    ready_cold=settings.envd_ready_limit,
                    ready_restore=settings.restore_ready_limit,
                    stop_grace=settings.stop_grace,
                    rollback=settings.rollback_limit,
                ),
                network_pool=settings.network_pool,
            )
            await manager.open(prewarm=settings.prewarm_shapes())
            stack.push_async_callback(manager.aclose)
            identity = load_identity(settings.data_dir)
            manager.host_id = identity.host_id if identity else (settings.name or "local")
            tls_files = HostTlsFiles(settings.tls_dir)
            if settings.api_url:
                registration = Registration(
                    data_dir=settings.data_dir,
                    api_url=settings.api_url,
                    token=settings.registration_token,
                    address=settings.base_url(),
                    name=settings.name,
                    host_info=manager.host_info,
                    verify=str(settings.api_ca) if settings.api_ca else True,
                    # no certificate files of our own: ask the control plane's CA for one (ignored without a CA)
                    tls=tls_files if settings.tls_cert is None else None,
                )
                stack.push_async_callback(registration.aclose)
                identity = await registration.start()
                manager.host_id = identity.host_id
                self.registration = registration
                if uses_issued_certificate(settings, identity):
                    keeper = HostCertificateKeeper(
                        files=tls_files,
                        registration=registration,
                        name=registration.name,
                        clock=lambda: datetime.now(UTC),
                        crl_refresh_s=settings.crl_refresh_s,
                    )
                    self.certificates = await stack.enter_async_context(keeper)
            elif uses_issued_certificate(settings, identity):
                _log.warning("no control plane URL: the issued certificate is served but never renewed")
            self.server_tls = server_tls(settings, identity)
            self._manager = manager
            self._stack = stack.pop_all()
        _log.info("host agent started", host_id=self._manager.host_id, sandboxes=len(self._manager.list()))

    async def aclose(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()
        self._manager = None
        self.certificates = None
        self.server_tls = None

    def refresh_tls(self) -> None:
        """Renew the host certificate and fetch the CRL now (``SIGHUP``); nothing without an issued certificate."""
        if self.certificates is not None:
            self.certificates.refresh_now()
