"""`GuestImage`, the manifest of one built image (``manifest.json`` next to its files), as the host agent sees it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ._recipe import Defaults, Healthcheck

MANIFEST = "manifest.json"


class GuestImage(BaseModel):
    """A built guest image: boot it with ``kernel``/``initrd``/``kernel_cmdline`` on a copy-on-write layer over
    ``rootfs`` (read-only, shared by every sandbox). The agent appends ``wrenn.ip=``/``wrenn.gw=``/``wrenn.dns=``
    to ``kernel_cmdline``. Paths are absolute once loaded; on disk they are relative to the image directory."""

    model_config = ConfigDict(frozen=True)

    name: str
    key: str
    """Hash of every input (recipe, envd, init, kernel package, Debian mirror state); the cache directory name."""
    source_key: str
    """Hash of the inputs in this repository only; `find_image` matches on it without asking the network."""
    kernel: Path
    initrd: Path | None
    rootfs: Path
    kernel_cmdline: str
    defaults: Defaults
    env: dict[str, str] = Field(default_factory=dict)
    """Environment the init gives envd (the recipe's ENV steps)."""
    user: str = "root"
    workdir: str = "/"
    healthcheck: Healthcheck | None = None
    size_bytes: int
    """Apparent size of the raw root filesystem (the disk a sandbox starts with)."""
    allocated_bytes: int
    """Blocks the sparse root filesystem really uses on the host."""
    build_seconds: float
    built_at: datetime
    kernel_package: str
    debian_release: str
    """The Debian mirror's ``Release`` date the packages came from."""
    tree: str = ""
    """File name of the saved package tree (next to the image folders) that templates built on this one start from."""

    def relative_to(self, directory: Path) -> GuestImage:
        return self.model_copy(update=_paths(self, lambda p: p.relative_to(directory)))

    def anchored_at(self, directory: Path) -> GuestImage:
        return self.model_copy(update=_paths(self, lambda p: directory / p))


def _paths(image: GuestImage, change: object) -> dict[str, Path | None]:
    assert callable(change)
    return {
        "kernel": change(image.kernel),
        "initrd": change(image.initrd) if image.initrd is not None else None,
        "rootfs": change(image.rootfs),
    }


def read_manifest(directory: Path) -> GuestImage:
    image = GuestImage.model_validate_json((directory / MANIFEST).read_text())
    return image.anchored_at(directory)


def write_manifest(directory: Path, image: GuestImage) -> None:
    (directory / MANIFEST).write_text(image.relative_to(directory).model_dump_json(indent=2) + "\n")
