"""`wrenn up`: run a single-node Wrenn (API + proxy + host agent) in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "up", help="run API, sandbox proxy and host agent on this machine (zero configuration)"
    )
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("WRENN_DATA_DIR", "/var/lib/wrenn")))
    parser.add_argument("--listen", default="127.0.0.1:8000", help="host:port of the API and sandbox proxy")
    parser.add_argument("--domain", default="localhost", help="sandbox domain (E2B_DOMAIN)")
    parser.add_argument("--database-url", default=None, help="external PostgreSQL (default: a private cluster)")
    parser.add_argument("--no-build", action="store_true", help="fail instead of building a missing guest image")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from wrenn.api.up import UpOptions, run_up

    options = UpOptions(
        data_dir=args.data_dir,
        listen=args.listen,
        domain=args.domain,
        database_url=args.database_url,
        build_image=not args.no_build,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_up(options, stop=stop)

    asyncio.run(main())
    return 0
