"""Where the agent finds a template's guest image: `ImageSource` (consumer protocol) and `BuiltImages`, which
asks `wrenn.images.find_image` (images built by ``wrenn image build``)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from wrenn.protocol.errors import NotFound, WrennError


@dataclass(frozen=True)
class AgentImage:
    """A bootable guest image: kernel, optional initrd, read-only base rootfs and the base command line.

    `key` identifies the exact inputs (warm snapshots are cached by it, so a rebuilt image never restores from a
    snapshot of the old one)."""

    template: str
    kernel: Path
    initrd: Path | None
    rootfs: Path
    kernel_cmdline: str
    key: str
    rootfs_format: str = "raw"


class ImageSource(Protocol):
    def find(self, template: str) -> AgentImage:
        """The image of `template`; `NotFound` when none is built."""
        ...


class BuiltImages:
    """Images from `wrenn.images.find_image(name)`.

    A lookup parses the template's recipe and hashes the image inputs (≈ 35 ms here, on the event loop), so a found
    image is reused for `ttl` seconds while its kernel and rootfs exist: a rebuilt image is picked up at most `ttl`
    seconds later. A template without a built image is looked up again every time (a build may just have ended)."""

    def __init__(self, ttl: float = 10.0) -> None:
        self._ttl = ttl
        self._found: dict[str, tuple[float, AgentImage]] = {}

    def find(self, template: str) -> AgentImage:
        now = time.monotonic()
        hit = self._found.get(template)
        if hit is not None and now - hit[0] < self._ttl and hit[1].kernel.is_file() and hit[1].rootfs.is_file():
            return hit[1]
        image = self._lookup(template)
        self._found[template] = (now, image)
        return image

    def _lookup(self, template: str) -> AgentImage:
        try:
            from wrenn.images import find_image  # type: ignore[attr-defined,unused-ignore]
        except ImportError as exc:
            raise NotFound(f"template {template!r}: no image builder installed") from exc
        try:
            image = find_image(template)
        except WrennError:
            raise
        except (LookupError, OSError, ValueError) as exc:
            raise NotFound(f"template {template!r} has no built image: {exc}") from exc
        if image is None:
            raise NotFound(f"template {template!r} has no built image (run `wrenn image build {template}`)")
        initrd = getattr(image, "initrd", None)
        return AgentImage(
            template=template,
            kernel=Path(image.kernel),
            initrd=Path(initrd) if initrd else None,
            rootfs=Path(image.rootfs),
            kernel_cmdline=str(image.kernel_cmdline),
            key=str(image.key),
        )


class StaticImages:
    """A fixed table of images (tests, benchmarks, development guests)."""

    def __init__(self, images: dict[str, AgentImage]) -> None:
        self._images = dict(images)

    @classmethod
    def from_file(cls, path: Path) -> StaticImages:
        """Read a JSON object ``{template: {kernel, initrd, rootfs, kernel_cmdline, key, rootfs_format}}``."""
        table = json.loads(path.read_text())
        images = {}
        for template, spec in table.items():
            initrd = spec.get("initrd")
            images[template] = AgentImage(
                template=template,
                kernel=Path(spec["kernel"]),
                initrd=Path(initrd) if initrd else None,
                rootfs=Path(spec["rootfs"]),
                kernel_cmdline=str(spec.get("kernel_cmdline", "")),
                key=str(spec["key"]),
                rootfs_format=str(spec.get("rootfs_format", "raw")),
            )
        return cls(images)

    def to_file(self, path: Path) -> None:
        table = {}
        for template, image in self._images.items():
            spec = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(image).items() if k != "template"}
            table[template] = spec
        path.write_text(json.dumps(table, indent=2))

    def find(self, template: str) -> AgentImage:
        try:
            return self._images[template]
        except KeyError:
            raise NotFound(f"template {template!r} not found") from None
