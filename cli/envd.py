"""`wrenn envd`: run the guest agent on this host (what the image's init does inside a VM)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from wrenn.envd.__main__ import add_arguments

    parser: argparse.ArgumentParser = sub.add_parser("envd", help="run envd (the guest agent) on this host")
    add_arguments(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from wrenn.envd.__main__ import run, settings_from

    return run(settings_from(args))
