"""`run_up`: the control plane and the host agent in one process on one machine (what `wrenn up` runs).

Order (undone in reverse on exit or failure): data dir -> database (``WRENN_DATABASE_URL`` or the private
cluster) -> guest image (found, or built once) -> API + proxy on ``--listen`` (migrations in its lifespan) -> the
first admin, team and API key (first start only) -> a one-time host token (first start only) -> the agent on a
loopback port, which registers itself through ``POST /v1/hosts/register`` like any other host -> the connection
settings, printed and written to ``<data-dir>/connection.env``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
import uvicorn

from wrenn.api.up._postgres import PrivateCluster

_log = structlog.get_logger("wrenn.api.up")

CONNECTION_FILE = "connection.env"


@dataclass(frozen=True)
class UpOptions:
    data_dir: Path
    listen: str = "127.0.0.1:8000"
    domain: str = "localhost"
    database_url: str | None = None
    agent_listen: str = "127.0.0.1:0"
    build_image: bool = True
    template: str = "base"


def _bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP, and
    # without it every streamed response (Connect server-streams) waits ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]") or "127.0.0.1", int(port)))
    sock.set_inheritable(True)
    return sock


def _bind_agent(listen: str, port_file: Path) -> socket.socket:
    """The agent's loopback socket: the port of the last start when it is free (the control plane has it on record),
    else the configured one (default: any free port), remembered for the next start."""
    if port_file.exists() and listen.endswith(":0"):
        try:
            return _bind(f"{listen.rpartition(':')[0]}:{int(port_file.read_text())}")
        except (OSError, ValueError):
            pass
    sock = _bind(listen)
    port_file.write_text(str(sock.getsockname()[1]))
    return sock


def _secret_file(path: Path) -> str:
    """A secret persisted across restarts (0600), made on first use."""
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def connection_lines(api_url: str, domain: str, api_key: str) -> list[str]:
    return [
        f"E2B_API_URL={api_url}",
        f"E2B_SANDBOX_URL={api_url}",
        f"E2B_DOMAIN={domain}",
        f"E2B_API_KEY={api_key}",
    ]


async def _ensure_image(template: str, build: bool, table: Path) -> Path:
    """Find (or build) the template's image and pin it in ``table`` for the agent: `wrenn up` serves the image it
    started with, even if the sources change while it runs (restart it after ``wrenn image build``)."""
    from wrenn.images import ImageNotFound, build_image, find_image

    try:
        image = await asyncio.to_thread(find_image, template)
    except ImageNotFound:
        if not build:
            raise
        _log.info("building the guest image (first start only; takes minutes)", template=template)
        image = await asyncio.to_thread(build_image, template)
    spec = {
        "kernel": str(image.kernel),
        "initrd": str(image.initrd) if image.initrd else None,
        "rootfs": str(image.rootfs),
        "kernel_cmdline": image.kernel_cmdline,
        "key": image.key,
        "rootfs_format": "raw",
    }
    await asyncio.to_thread(table.write_text, json.dumps({template: spec}, indent=2))
    return table


class _NoSignals(uvicorn.Server):
    """uvicorn without its own signal handling: `run_up`'s caller owns SIGINT/SIGTERM and stops both servers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Server:
    """One uvicorn server on an already bound socket, run as a task of the caller's loop."""

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        name: str,
        *,
        lifespan: Literal["on", "off"] = "on",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        # tls: a context of our own (the agent's reloading one), see wrenn.cli.agent for why not ssl_certfile
        config = uvicorn.Config(
            app,
            lifespan=lifespan,
            log_level="warning",
            ssl_context_factory=None if tls is None else (lambda _config, _default: tls),
        )
        self.server = _NoSignals(config)
        self.task: asyncio.Task[None] | None = None
        self.name = name

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]), name=self.name)
        while not self.server.started:
            if self.task.done():
                await self.task
                raise RuntimeError(f"{self.name} stopped during start-up")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task
        self.sock.close()


async def run_up(
    options: UpOptions,
    *,
    ready: Callable[[list[str]], Awaitable[None] | None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until `stop` is set (or a server exits, e.g. on SIGINT)."""
    from wrenn.agent import AgentRuntime
    from wrenn.agent.registration import load_identity
    from wrenn.agent.service import create_agent_app
    from wrenn.agent.settings import AgentSettings
    from wrenn.api.app import deps_of
    from wrenn.api.hosts import HostService
    from wrenn.api.sandboxes import create_public_app
    from wrenn.api.settings import Settings
    from wrenn.api.tenancy import bootstrap_admin
    from wrenn.provision.ca import ReloadingServerContext

    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stop = stop or asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        database_url = options.database_url or os.environ.get("WRENN_DATABASE_URL")
        if not database_url:
            cluster = await stack.enter_async_context(PrivateCluster(data_dir))
            database_url = cluster.url
        images_file = await _ensure_image(options.template, options.build_image, data_dir / "images.json")

        api_sock = _bind(options.listen)
        api_host = options.listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
        shown_host = "127.0.0.1" if api_host in ("0.0.0.0", "::") else api_host  # noqa: S104
        api_url = f"http://{shown_host}:{api_sock.getsockname()[1]}"
        settings = Settings(
            database_url=database_url,
            listen=options.listen,
            public_url=api_url,
            domain=options.domain,
            data_dir=data_dir,
            jwt_secret=_secret_file(data_dir / "jwt_secret"),
            sandbox_templates=[options.template],
        )
        public = create_public_app(settings)
        deps = deps_of(public.api)
        api = _Server(public, api_sock, "wrenn-api")
        await api.start()
        stack.push_async_callback(api.stop)

        boot = await bootstrap_admin(deps.store)
        conn_file = data_dir / CONNECTION_FILE
        if boot is not None:
            lines = connection_lines(api_url, options.domain, boot.api_key)
            (data_dir / "admin.env").write_text(
                f"WRENN_ADMIN_EMAIL={boot.email}\nWRENN_ADMIN_PASSWORD={boot.password}\n"
            )
            (data_dir / "admin.env").chmod(0o600)
        elif conn_file.exists():
            old = dict(line.split("=", 1) for line in conn_file.read_text().splitlines() if "=" in line)
            lines = connection_lines(api_url, options.domain, old.get("E2B_API_KEY", ""))
        else:
            lines = connection_lines(api_url, options.domain, "<the key printed on first start>")
        conn_file.write_text("\n".join(lines) + "\n")
        conn_file.chmod(0o600)

        agent_dir = data_dir / "agent"
        hosts = deps.extras["hosts"]
        assert isinstance(hosts, HostService)
        identity = load_identity(agent_dir)
        token: str | None = None
        if identity is None:
            token = (await hosts.create_token(created_by=None, ttl_s=600)).token
        agent_sock = _bind_agent(options.agent_listen, data_dir / "agent.port")
        if identity is not None:
            # registered before: the agent does not register again, so its address is kept current here (https when
            # the control plane's CA issued it a certificate: it serves mutual TLS then, also on loopback)
            scheme = "https" if identity.certificate_pem is not None else "http"
            await hosts.update_address(identity.host_id, f"{scheme}://127.0.0.1:{agent_sock.getsockname()[1]}")
        agent_settings = AgentSettings(
            data_dir=agent_dir,
            listen=f"127.0.0.1:{agent_sock.getsockname()[1]}",
            api_url=api_url,
            registration_token=token,
            name=socket.gethostname(),
            images_file=images_file,
            # the shape a create gets by default: the first sandbox restores instead of waiting for the boot
            prewarm=[f"{options.template}:{settings.sandbox_vcpus}:{settings.sandbox_memory_mb}"],
        )
        # The runtime opens first (it registers, and with a CA configured gets its certificate), then the listener
        # serves with the TLS it decided on: plain HTTP on loopback unless the control plane runs a CA.
        runtime = AgentRuntime(agent_settings)
        agent_app, _runtime = create_agent_app(agent_settings, runtime)
        await stack.enter_async_context(runtime)
        tls = runtime.server_tls
        agent = _Server(
            agent_app,
            agent_sock,
            "wrenn-agent",
            lifespan="off",
            tls=tls.context if isinstance(tls, ReloadingServerContext) else tls,
        )
        await agent.start()
        stack.push_async_callback(agent.stop)

        for line in lines:
            print(line, flush=True)
        if ready is not None:
            result = ready(lines)
            if asyncio.iscoroutine(result):
                await result
        stopper = asyncio.create_task(stop.wait())
        waiters: list[asyncio.Task[Any]] = [stopper, *(t for t in (api.task, agent.task) if t is not None)]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        _log.info("wrenn up: shutting down")
