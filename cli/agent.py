"""`wrenn agent`: run the host agent (HTTPS + JSON API under uvicorn).

Flags override the ``WRENN_AGENT_*`` environment (see `wrenn.agent.AgentSettings`). TLS, in this order:
``--tls-cert``/``--tls-key`` (with ``--tls-client-ca``: client certificates from that CA are required); otherwise
the certificate the control plane's internal CA issued at registration (mutual TLS, renewed in the background,
revocation list checked); plain HTTP only when the control plane runs no CA. ``SIGHUP`` renews the issued
certificate and fetches the revocation list now.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wrenn.agent import AgentSettings


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("agent", help="run the host agent")
    parser.add_argument("--data-dir", type=Path, help="state, sandboxes and warm templates (WRENN_AGENT_DATA_DIR)")
    parser.add_argument("--listen", help="host:port to listen on (default 127.0.0.1:5007)")
    parser.add_argument("--api-url", help="control plane URL to register with and heartbeat to")
    parser.add_argument("--registration-token", help="one-time token for the first registration")
    parser.add_argument("--advertise-url", help="URL the control plane reaches this agent at")
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="server key (PEM)")
    parser.add_argument("--tls-client-ca", type=Path, help="require client certificates from this CA (mTLS)")
    parser.add_argument("--driver", choices=("qemu", "fake"), help="VMM driver (fake: development without VMs)")
    parser.add_argument("--no-warm-templates", action="store_true", help="cold-boot every sandbox")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import structlog

    from wrenn.agent import AgentSettings

    overrides: dict[str, Any] = {
        name: value
        for name, value in {
            "data_dir": args.data_dir,
            "listen": args.listen,
            "api_url": args.api_url,
            "registration_token": args.registration_token,
            "advertise_url": args.advertise_url,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
            "tls_client_ca": args.tls_client_ca,
            "driver": args.driver,
        }.items()
        if value is not None
    }
    if args.no_warm_templates:
        overrides["warm_templates"] = False
    settings = AgentSettings(**overrides)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(colors=False),
        ]
    )
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):  # stopped during start-up
        asyncio.run(_serve(settings))
    return 0


async def _serve(settings: AgentSettings) -> None:
    """Open the runtime (registration included), then listen with the TLS it decided on; close in reverse."""
    import uvicorn

    from wrenn.agent import AgentRuntime, create_agent_app
    from wrenn.provision.ca import ReloadingServerContext

    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stops = (signal.SIGTERM, signal.SIGINT)
    # During start-up (registration may wait for the control plane) SIGTERM/SIGINT cancel it, and what the runtime
    # opened is closed again. While serving, uvicorn owns them; it re-raises the signal after it stopped, which
    # must then not interrupt the runtime's shutdown: hence the no-op handlers.
    for sig in stops:
        loop.add_signal_handler(sig, main.cancel)
    try:
        runtime = AgentRuntime(settings)
        app, _ = create_agent_app(settings, runtime)
        async with runtime:
            for sig in stops:
                loop.add_signal_handler(sig, _ignore)
            loop.add_signal_handler(signal.SIGHUP, runtime.refresh_tls)
            tls = runtime.server_tls
            context = tls.context if isinstance(tls, ReloadingServerContext) else tls
            host, port = settings.listen_address()
            config = uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="info",
                # The runtime is already open (its TLS depends on the registration), so no ASGI lifespan.
                lifespan="off",
                # uvicorn would build its own SSLContext from file names (ssl_certfile=…) once, at start: a renewed
                # certificate or a new CRL would need a restart. ssl_context_factory (uvicorn >= 0.47) is its
                # supported way to hand it a context instead; ours is the ReloadingServerContext dispatcher, whose
                # sni_callback gives every new handshake a context built from the files as they are now.
                ssl_context_factory=None if context is None else (lambda _config, _default: context),
            )
            await uvicorn.Server(config).serve()
    finally:
        for sig in (*stops, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _ignore() -> None:
    return None
