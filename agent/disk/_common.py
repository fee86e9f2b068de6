"""Shared steps of the file-based backends: running commands, checking the inputs, temporary names."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from wrenn.agent.disk._errors import BaseImageMissing, DiskCommandFailed, InvalidDiskSize


async def run(*argv: str, stdin: str | None = None) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise DiskCommandFailed(" ".join(argv[:3]), str(exc)) from exc
    out, err = await proc.communicate(None if stdin is None else stdin.encode())
    if proc.returncode != 0:
        raise DiskCommandFailed(" ".join(argv[:3]), err.decode(errors="replace").strip()[:500])
    return out.decode()


def check_inputs(base: Path, size_bytes: int | None) -> int:
    """The base's file size, after checking it exists and `size_bytes` (unless None) is not below it."""
    try:
        base_size = base.stat().st_size
    except FileNotFoundError as exc:
        raise BaseImageMissing(f"base image {base} does not exist") from exc
    if size_bytes is not None and size_bytes < base_size:
        raise InvalidDiskSize(f"disk size {size_bytes} is below the base image's {base_size} bytes")
    return base_size


def temporary(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.partial")


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def discard(path: Path) -> None:
    path.unlink(missing_ok=True)
