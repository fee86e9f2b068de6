"""The Debian mirror the image is built from: the one the host's apt uses for bookworm (``WRENN_DEBIAN_MIRROR``
overrides), and its ``Release`` date, which pins what debootstrap will install and so goes into the image key."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx

from ._errors import BuildError

SUITE = "bookworm"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
_SOURCES = Path("/etc/apt")


def host_mirror(apt_dir: Path = _SOURCES) -> str:
    """The first ``deb`` source serving the ``bookworm`` suite's main component on this host."""
    override = os.environ.get("WRENN_DEBIAN_MIRROR")
    if override:
        return override.rstrip("/")
    for uri in [*_one_line_sources(apt_dir), *_deb822_sources(apt_dir)]:
        return uri.rstrip("/")
    return FALLBACK_MIRROR


def _one_line_sources(apt_dir: Path) -> list[str]:
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    found = []
    for file in files:
        if not file.is_file():
            continue
        for line in file.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 4 and words[0] == "deb" and words[2] == SUITE and "main" in words[3:]:
                found.append(words[1])
    return found


def _deb822_sources(apt_dir: Path) -> list[str]:
    found: list[str] = []
    for file in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for block in re.split(r"\n\s*\n", file.read_text()):
            fields: dict[str, list[str]] = {}
            for line in block.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.split()
            if (
                "deb" in fields.get("types", [])
                and SUITE in fields.get("suites", [])
                and "main" in fields.get("components", [])
                and fields.get("enabled", ["yes"]) != ["no"]
            ):
                found.extend(uri for uri in fields.get("uris", []) if uri.startswith(("http://", "https://")))
    return found


def release_date(mirror: str, timeout: float = 30.0) -> str:
    """The ``Date:`` of ``dists/bookworm/Release`` on `mirror` (changes with every point release)."""
    url = f"{mirror}/dists/{SUITE}/Release"
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True) as client, client.stream("GET", url) as response:
            response.raise_for_status()
            head = ""
            for chunk in response.iter_text():
                head += chunk
                if len(head) > 4096:
                    break
    except httpx.HTTPError as exc:
        raise BuildError("mirror", f"cannot read {url}: {exc}") from exc
    for line in head.splitlines():
        if line.startswith("Date:"):
            return line.partition(":")[2].strip()
    raise BuildError("mirror", f"{url} has no Date: field")
