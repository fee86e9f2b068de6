"""`python -m wrenn.envd` / `wrenn-envd`: run envd in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from ._app import create_server
from ._state import Settings
from ._tasks import cancel_and_wait


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """envd's flags; also used by `wrenn envd`."""
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")  # noqa: S104
    parser.add_argument("--port", type=int, default=49983, help="TCP port (default 49983; 0 = any free port)")
    parser.add_argument("--set-clock", action="store_true", help="let POST /init set the system clock (guest only)")
    parser.add_argument("--access-token", default=os.environ.get("ENVD_ACCESS_TOKEN"), help="initial access token")
    parser.add_argument("--exited-retention", type=float, default=30.0, help="seconds an exited process stays")
    parser.add_argument("--port-file", help="write the bound port to this file once listening (for tests)")
    parser.add_argument(
        "--forward-localhost",
        action="store_true",
        help="make services listening on loopback only reachable on the guest's address (guest only)",
    )
    parser.add_argument("--log-level", default=os.environ.get("ENVD_LOG_LEVEL", "WARNING"))


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags; configures logging (entry points only)."""
    settings = Settings(
        host=args.host,
        port=args.port,
        set_clock=args.set_clock,
        access_token=args.access_token or None,
        exited_retention=args.exited_retention,
        port_file=args.port_file,
        forward_localhost=args.forward_localhost,
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return settings


def run(settings: Settings) -> int:
    asyncio.run(_run(settings))
    return 0


async def _run(settings: Settings) -> None:
    async with create_server(settings) as envd:
        await envd.start()
        port_file = settings.port_file
        if port_file:
            _write_port(port_file, envd.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        serve = asyncio.ensure_future(envd.serve_forever())
        await stop.wait()
        await cancel_and_wait(serve)


def _write_port(path: str, port: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wrenn-envd", description="E2B-compatible guest agent")
    add_arguments(parser)
    return run(settings_from(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
