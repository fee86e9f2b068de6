"""`wrenn api`: run the control plane alone under uvicorn against an external PostgreSQL.

Settings come from ``WRENN_*`` variables; the flags override them. `--bootstrap-admin EMAIL` creates the first
admin, team and API key when the database has no user yet and prints them once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("api", help="run the control-plane API (Falcon under uvicorn)")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: $WRENN_DATABASE_URL)")
    parser.add_argument("--listen", help="HOST:PORT to listen on (default: $WRENN_LISTEN or 127.0.0.1:3000)")
    parser.add_argument("--no-migrate", action="store_true", help="do not apply pending migrations at start-up")
    parser.add_argument("--job-workers", type=int, help="job-queue worker tasks in this process")
    parser.add_argument("--bootstrap-admin", metavar="EMAIL", help="create the first admin/team/key if no user exists")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(handler=_run)


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from wrenn.api import Deps, Settings, bootstrap_admin
    from wrenn.api.deps import AsgiApp
    from wrenn.api.sandboxes import create_public_app

    overrides: dict[str, Any] = {}
    if args.database_url:
        overrides["database_url"] = args.database_url
    if args.listen:
        overrides["listen"] = args.listen
    if args.no_migrate:
        overrides["apply_migrations"] = False
    if args.job_workers is not None:
        overrides["job_workers"] = args.job_workers
    settings = Settings(**overrides)
    try:
        host, port = split_listen(settings.listen)
    except ValueError as exc:
        print(f"wrenn api: {exc}", file=sys.stderr)
        return 2

    def configure(app: AsgiApp, deps: Deps) -> None:
        if not args.bootstrap_admin:
            return

        async def bootstrap() -> None:
            created = await bootstrap_admin(deps.store, email=args.bootstrap_admin, clock=deps.clock, ids=deps.ids)
            if created is not None:
                print(
                    f"created admin {created.email} (password: {created.password}), team {created.team_name} "
                    f"({created.team_id})\nE2B_API_KEY={created.api_key}",
                    flush=True,
                )

        deps.on_startup(bootstrap)

    # The public app: the REST API behind the sandbox traffic proxy, exactly what `wrenn up` serves.
    app = create_public_app(settings, configure=configure)
    uvicorn.run(app, host=host, port=port, lifespan="on", log_level=args.log_level)
    return 0
