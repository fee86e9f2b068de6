"""`wrenn image build|list|path`: build guest images from templates and show what the cache holds."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("image", help="build and inspect guest images")
    commands = parser.add_subparsers(dest="image_command", metavar="COMMAND")

    def _help(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=_help)

    build = commands.add_parser("build", help="build a template's image (cached unless its inputs changed)")
    build.add_argument("template", help="template name (images/templates/<name>) or path to a template folder")
    build.add_argument("--cache-dir", type=Path, default=None, help="image cache (default: /var/cache/wrenn/images)")
    build.add_argument("--force", action="store_true", help="rebuild even when a cached image matches")
    build.set_defaults(handler=_build)

    listing = commands.add_parser("list", help="list built images")
    listing.add_argument("--cache-dir", type=Path, default=None)
    listing.set_defaults(handler=_list)

    prune = commands.add_parser("prune", help="remove all but the newest images of each template")
    prune.add_argument("--keep", type=int, default=1, help="images to keep per template (default 1)")
    prune.add_argument("--cache-dir", type=Path, default=None)
    prune.set_defaults(handler=_prune)

    path = commands.add_parser("path", help="print the directory of a template's current image")
    path.add_argument("template")
    path.add_argument("--cache-dir", type=Path, default=None)
    path.set_defaults(handler=_path)


def _build(args: argparse.Namespace) -> int:
    from wrenn.images import ImageError, build_image

    started = time.monotonic()

    def progress(step: str, message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {step}: {message}", file=sys.stderr, flush=True)

    try:
        image = build_image(args.template, cache_dir=args.cache_dir, force=args.force, progress=progress)
    except ImageError as exc:
        print(f"wrenn image build: {exc.message}", file=sys.stderr)
        return 1
    print(image.rootfs.parent)
    return 0


def _list(args: argparse.Namespace) -> int:
    from wrenn.images import list_images

    images = list_images(args.cache_dir)
    if not images:
        print("no images built yet; build one with `wrenn image build base`", file=sys.stderr)
        return 0
    print(f"{'TEMPLATE':<16} {'KEY':<16} {'BUILT (UTC)':<19} {'ROOTFS MiB':>10} {'ON DISK MiB':>11}  DIRECTORY")
    for image in images:
        built = image.built_at.strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{image.name:<16} {image.key[:16]:<16} {built:<19} {image.size_bytes >> 20:>10} "
            f"{image.allocated_bytes >> 20:>11}  {image.rootfs.parent}"
        )
    return 0


def _prune(args: argparse.Namespace) -> int:
    from wrenn.images import prune_images

    for folder in prune_images(args.cache_dir, keep=max(args.keep, 1)):
        print(f"removed {folder}")
    return 0


def _path(args: argparse.Namespace) -> int:
    from wrenn.images import ImageError, find_image

    try:
        image = find_image(args.template, cache_dir=args.cache_dir)
    except ImageError as exc:
        print(f"wrenn image path: {exc.message}", file=sys.stderr)
        return 1
    print(image.rootfs.parent)
    return 0
