"""Cache keys: hashes of everything a guest image is made from.

Two levels: the *source key* covers the inputs in this repository (recipe, COPY sources, envd's sources, the init,
the initramfs script and module list, the builder's format version, the base template's source key) and can be
computed offline; the *image key* adds what comes from outside (the Debian kernel package version and the Debian
mirror's ``Release`` date) and names the cache directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterable
from pathlib import Path

from ._recipe import CopyStep, Template

FORMAT_VERSION = 1
"""Bump when the builder changes what it puts into an image in a way the other inputs do not show."""


def tree_digest(paths: Iterable[Path], root: Path) -> str:
    """sha256 over the relative names, modes and contents of files under `paths` (``__pycache__`` skipped)."""
    digest = hashlib.sha256()
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    for file in sorted(files):
        if "__pycache__" in file.parts or file.suffix == ".pyc":
            continue
        digest.update(f"{file.relative_to(root)}\0{file.stat().st_mode & 0o777:o}\0".encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def envd_source_dir() -> Path:
    """The repository's envd package (``envd/``, importable as ``wrenn.envd``)."""
    spec = importlib.util.find_spec("wrenn.envd")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("wrenn.envd is not importable; run `pip install -e .`")
    return Path(next(iter(spec.submodule_search_locations)))


def source_key(template: Template, folder: Path, *, base_source_key: str, guest_inputs: str) -> str:
    """Hash of the repository-side inputs. `guest_inputs` is the digest of the init and initramfs."""
    copies = [folder / source for step in template.steps if isinstance(step, CopyStep) for source in step.sources]
    document = {
        "format": FORMAT_VERSION,
        "recipe": template.model_dump(mode="json"),
        "copies": tree_digest(copies, folder),
        "envd": tree_digest([envd_source_dir()], envd_source_dir()),
        "guest": guest_inputs,
        "base": base_source_key,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def tree_key(template: Template, folder: Path, *, base_key: str, debian_release: str, mirror: str) -> str:
    """Hash of what makes the package tree (debootstrap or base image, then the recipe's steps) before envd and the
    init are added: an envd change reuses the cached tree instead of running debootstrap again."""
    copies = [folder / source for step in template.steps if isinstance(step, CopyStep) for source in step.sources]
    document = {
        "format": FORMAT_VERSION,
        "recipe": template.model_dump(mode="json", include={"base", "packages", "steps"}),
        "copies": tree_digest(copies, folder),
        "base": base_key,
        "release": debian_release,
        "mirror": mirror,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def image_key(source: str, *, kernel_package: str, debian_release: str, base_key: str) -> str:
    document = {"source": source, "kernel": kernel_package, "release": debian_release, "base": base_key}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
