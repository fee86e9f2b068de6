"""The `wrenn` command line: one entry point that only wires subcommands to the components.

Each subcommand group lives in its own module here (`image`, `agent`, `api`, `up`, `sandbox`, `provision`) and
exposes ``register(subparsers)``; a module is imported only when the CLI starts, never at package import.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import cast

# Modules under wrenn.cli that add subcommands. A missing module is a bug, not an optional feature.
_GROUPS = ("image", "envd", "agent", "up", "sandbox", "api", "provision")

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wrenn", description="Self-hosted microVM sandboxes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _GROUPS:
        module = importlib.import_module(f"wrenn.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = cast(Handler, args.handler)
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
