"""The image cache: ``<cache>/<template>/<key>/`` with ``manifest.json`` next to the kernel, initrd and rootfs.

Builds happen in ``<cache>/<template>/.tmp-<key>-<pid>/`` and are renamed into place, so a reader only ever sees
finished images; builds of the same key serialize on ``<cache>/<template>/.lock-<key>`` (``flock``), and the one
that waited finds the other's result instead of building again.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from ._errors import ImageNotFound
from ._manifest import MANIFEST, GuestImage, read_manifest

DEFAULT_CACHE = Path("/var/cache/wrenn/images")
KEY_LENGTH = 16
"""Characters of the image key used for the directory name."""


def cache_root(cache_dir: Path | None = None) -> Path:
    """`cache_dir`, else ``$WRENN_IMAGE_CACHE``, else /var/cache/wrenn/images."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("WRENN_IMAGE_CACHE", str(DEFAULT_CACHE)))


def image_dir(root: Path, name: str, key: str) -> Path:
    return root / name / key[:KEY_LENGTH]


def cached(root: Path, name: str, key: str) -> GuestImage | None:
    directory = image_dir(root, name, key)
    if not (directory / MANIFEST).is_file():
        return None
    try:
        return read_manifest(directory)
    except (OSError, ValidationError):
        return None


def images_of(root: Path, name: str) -> list[GuestImage]:
    """Every readable built image of `name`, newest first."""
    found = []
    folder = root / name
    for directory in sorted(folder.iterdir()) if folder.is_dir() else []:
        if directory.name.startswith(".") or not (directory / MANIFEST).is_file():
            continue
        try:
            found.append(read_manifest(directory))
        except (OSError, ValidationError):
            continue
    return sorted(found, key=lambda image: image.built_at, reverse=True)


def all_images(root: Path) -> list[GuestImage]:
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    return [image for name in names for image in images_of(root, name)]


def newest_matching(root: Path, name: str, source_key: str) -> GuestImage:
    images = images_of(root, name)
    for image in images:
        if image.source_key == source_key:
            return image
    detail = "built images exist, but their inputs have changed since" if images else ""
    raise ImageNotFound(name, str(root), detail)


@contextmanager
def key_lock(root: Path, name: str, key: str) -> Iterator[None]:
    """Hold the build lock of one key; clears build folders left by builders that died."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".lock-{key[:KEY_LENGTH]}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for stale in folder.glob(f".tmp-{key[:KEY_LENGTH]}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_files() -> set[Path]:
    """Files any process on the host has open (a running VMM holds its base image open)."""
    found: set[Path] = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            links = list(fd_dir.iterdir())
        except OSError:
            continue
        for link in links:
            try:
                found.add(Path(os.readlink(link)))
            except OSError:
                continue
    return found


def prune(root: Path, keep: int) -> list[Path]:
    """Remove all but the `keep` newest images of each template, skipping any a running process holds open, and
    the saved package trees no remaining image refers to. Returns the removed image folders.

    Paused or stopped sandboxes whose overlays still name an old image as backing file are not visible here:
    prune only when the host agent has none (or with a generous `keep`)."""
    removed: list[Path] = []
    in_use = {path.parent for path in open_files()}
    names = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []
    for name in names:
        for image in images_of(root, name)[keep:]:
            folder = image.rootfs.parent
            if folder in in_use:
                continue
            shutil.rmtree(folder)
            removed.append(folder)
        from ._rootfs import prune_trees

        prune_trees(root / name, keep=set())
    return removed


def build_dir(root: Path, name: str, key: str) -> Path:
    return root / name / f".tmp-{key[:KEY_LENGTH]}-{os.getpid()}"
