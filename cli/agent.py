"""`wrenn agent`: run the host agent (HTTPS + JSON API under uvicorn; plain HTTP when no certificate is set).

Flags override the ``WRENN_AGENT_*`` environment (see `wrenn.agent.AgentSettings`). With ``--tls-client-ca`` the
server requires a client certificate that chains to it (mutual TLS with the control plane).
"""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path
from typing import Any


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
    import uvicorn

    from wrenn.agent import AgentSettings, create_agent_app

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
    app, _runtime = create_agent_app(settings)
    host, port = settings.listen_address()
    tls: dict[str, Any] = {}
    if settings.tls_cert is not None:
        tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key or settings.tls_cert)}
        if settings.tls_client_ca is not None:
            tls |= {"ssl_ca_certs": str(settings.tls_client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    uvicorn.run(app, host=host, port=port, log_level="info", lifespan="on", **tls)
    return 0
