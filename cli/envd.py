"""`wrenn envd`: run the guest agent on this host (what the image's init does inside a VM)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("envd", help="run envd (the guest agent) on this host")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to wrenn-envd")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from wrenn.envd.__main__ import main

    return main(list(args.args))
