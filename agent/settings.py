"""The host agent's configuration: `AgentSettings` (pydantic-settings, ``WRENN_AGENT_*`` variables).

Built by the entry point (`wrenn agent`, `wrenn up`), never at import time. Whatever a test must replace — the VMM
driver, the host resources (network, disk, cgroup), the image lookup, the envd client — is made by a factory method
here, so a test subclasses the settings and overrides one method instead of patching internals.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wrenn.protocol.agent import Accelerator

if TYPE_CHECKING:
    from wrenn.agent._images import ImageSource
    from wrenn.agent._resources import HostResources
    from wrenn.agent.vmm import VMDriver


_PREWARM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*:[1-9][0-9]*:[1-9][0-9]*")


class AgentSettings(BaseSettings):
    """Settings of one host agent. Every field is also a ``WRENN_AGENT_<NAME>`` environment variable."""

    model_config = SettingsConfigDict(env_prefix="WRENN_AGENT_", extra="ignore")

    data_dir: Path = Path("/var/lib/wrenn/agent")
    listen: str = Field(default="127.0.0.1:5007", description="host:port the agent API listens on")
    advertise_url: str | None = Field(default=None, description="base URL the control plane calls; from listen")
    name: str | None = Field(default=None, description="host name shown in the control plane; default: hostname")

    api_url: str | None = Field(default=None, description="control plane base URL; no registration when unset")
    registration_token: str | None = None
    api_ca: Path | None = Field(default=None, description="CA bundle to verify the control plane's certificate")

    tls_cert: Path | None = Field(
        default=None,
        description="server certificate (PEM) instead of the one the control plane issues at registration; "
        "without either, plain HTTP",
    )
    tls_key: Path | None = None
    tls_client_ca: Path | None = Field(default=None, description="CA that client certificates must chain to (mTLS)")
    crl_refresh_s: float = Field(
        default=300.0, gt=0, description="how often the internal CA's revocation list is fetched (issued certificate)"
    )

    images_file: Path | None = Field(
        default=None, description="JSON table of development images (template -> kernel, rootfs, ...) to use"
    )
    driver: str = Field(default="qemu", pattern="^(qemu|fake)$")
    qemu_binary: str = "qemu-system-x86_64"
    accelerator: Accelerator | None = Field(default=None, description="force an accelerator instead of probing")

    warm_templates: bool = Field(default=True, description="restore creates from a warm snapshot per template")
    prewarm: list[str] = Field(
        default_factory=list,
        description="warm snapshots to make in the background at start, as TEMPLATE:VCPUS:MEMORY_MB (the first "
        "create of such a shape then restores instead of waiting for the template's boot)",
    )
    envd_ready_limit: float = Field(default=180.0, gt=0, description="seconds a cold boot may take to envd /health")
    restore_ready_limit: float = Field(default=60.0, gt=0, description="seconds a restore may take to envd /health")
    stop_grace: float = Field(default=5.0, ge=0)
    rollback_limit: float = Field(default=60.0, gt=0, description="bound on undoing a half-done create")
    max_slots: int = Field(default=1000, ge=1, le=16000)
    network_pool: int = Field(
        default=3,
        ge=0,
        le=64,
        description="sandbox networks kept set up ahead of creates (egress denied), refilled in the background; 0: off",
    )
    resource_prefix: str = Field(
        default="wrenn", pattern=r"^[a-z][a-z0-9]{0,7}$", description="prefix of namespaces, links and cgroups"
    )
    transit_cidr: str | None = Field(
        default=None, description="host <-> sandbox namespace /30s come from here (default: the implementation's)"
    )

    @field_validator("prewarm")
    @classmethod
    def _prewarm_shapes(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _PREWARM.fullmatch(item):
                raise ValueError(f"prewarm entry {item!r} is not TEMPLATE:VCPUS:MEMORY_MB (e.g. base:1:512)")
        return value

    def prewarm_shapes(self) -> list[tuple[str, int, int]]:
        """`prewarm` as (template, vcpus, memory_mb)."""
        shapes = []
        for item in self.prewarm:
            template, vcpus, memory_mb = item.rsplit(":", 2)
            shapes.append((template, int(vcpus), int(memory_mb)))
        return shapes

    @property
    def sandboxes_dir(self) -> Path:
        return self.data_dir / "sandboxes"

    @property
    def templates_dir(self) -> Path:
        return self.data_dir / "templates"

    @property
    def tls_dir(self) -> Path:
        """Key, certificate, CA and CRL from the control plane's internal CA (`wrenn.agent.tls`)."""
        return self.data_dir / "tls"

    def listen_address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    def base_url(self) -> str:
        """The URL the control plane reaches this agent at."""
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        host, port = self.listen_address()
        scheme = "https" if self.tls_cert is not None else "http"
        return f"{scheme}://{host}:{port}"

    # ---- factories: tests override these -------------------------------------------------------------------

    def make_driver(self) -> VMDriver:
        if self.driver == "fake":
            from wrenn.agent.vmm.fake import FakeDriver

            return FakeDriver()
        from wrenn.agent.vmm.qemu import QemuDriver

        return QemuDriver(data_dir=self.data_dir, binary=self.qemu_binary, accelerator=self.accelerator)

    def make_resources(self) -> HostResources:
        from wrenn.agent._hostres import HostresResources

        return HostresResources(prefix=self.resource_prefix, transit=self.transit_cidr)

    def make_images(self) -> ImageSource:
        from wrenn.agent._images import BuiltImages, StaticImages

        if self.images_file is not None:
            return StaticImages.from_file(self.images_file)
        return BuiltImages()
