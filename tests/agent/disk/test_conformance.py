"""The `DiskBackend` conformance suite: every backend, the same guarantees (see `wrenn.agent.disk._interface`).

qcow2 runs on the test's own directory; reflink on an XFS filesystem made in a loop file for the test (root);
dm-snapshot where device-mapper exists (not on these machines: it skips with that reason).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from tests.agent.disk.conftest import BASE_SIZE, DiskEnv, MiB, guest_size, read_layer, write_layer
from wrenn.agent.disk import BaseImageMissing, InvalidDiskSize

SIZE = 256 * MiB


def digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def listing(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


async def test_base_untouched_after_writes(disk_env: DiskEnv) -> None:
    before = digest(disk_env.base)
    base_head = disk_env.base.read_bytes()[: 1 * MiB]
    layer = await disk_env.backend.create(disk_env.base, disk_env.layer_path("a"), SIZE)
    await asyncio.to_thread(write_layer, layer, 0, b"\xab" * (64 * 1024))
    await asyncio.to_thread(write_layer, layer, SIZE - 64 * 1024, b"\xcd" * (64 * 1024))
    assert digest(disk_env.base) == before
    head = await asyncio.to_thread(read_layer, layer, 0, 1 * MiB)
    assert head[: 64 * 1024] == b"\xab" * (64 * 1024)
    assert head[64 * 1024 :] == base_head[64 * 1024 :]  # the rest still reads the base
    tail = await asyncio.to_thread(read_layer, layer, SIZE - 64 * 1024, 64 * 1024)
    assert tail == b"\xcd" * (64 * 1024)
    await disk_env.backend.remove(layer.path)


async def test_two_layers_do_not_see_each_other(disk_env: DiskEnv) -> None:
    a = await disk_env.backend.create(disk_env.base, disk_env.layer_path("a"), SIZE)
    b = await disk_env.backend.create(disk_env.base, disk_env.layer_path("b"), SIZE)
    await asyncio.to_thread(write_layer, a, 4096, b"\x11" * 4096)
    assert await asyncio.to_thread(read_layer, b, 4096, 4096) == disk_env.base.read_bytes()[4096:8192]
    await disk_env.backend.remove(a.path)
    await disk_env.backend.remove(b.path)


async def test_sparse(disk_env: DiskEnv) -> None:
    free_before = os.statvfs(disk_env.directory).f_bavail * os.statvfs(disk_env.directory).f_frsize
    layer = await disk_env.backend.create(disk_env.base, disk_env.layer_path("a"), SIZE)
    usage = await disk_env.backend.usage(layer.path)
    assert usage.allocated_bytes < 1 * MiB  # neither the base's 8 MiB of data nor the 256 MiB size
    free_after = os.statvfs(disk_env.directory).f_bavail * os.statvfs(disk_env.directory).f_frsize
    if disk_env.private_fs:  # on a shared filesystem others' writes drown the delta
        assert free_before - free_after < 2 * MiB
    await asyncio.to_thread(write_layer, layer, 0, b"\x22" * (2 * MiB))
    grown = await disk_env.backend.usage(layer.path)
    assert grown.allocated_bytes >= 2 * MiB  # writes are the layer's own
    await disk_env.backend.remove(layer.path)


async def test_size_honoured(disk_env: DiskEnv) -> None:
    layer = await disk_env.backend.create(disk_env.base, disk_env.layer_path("a"), SIZE)
    assert layer.size_bytes == SIZE
    assert (await disk_env.backend.usage(layer.path)).size_bytes == SIZE
    assert await asyncio.to_thread(guest_size, layer) == SIZE
    beyond = await asyncio.to_thread(read_layer, layer, BASE_SIZE + MiB, 4096)
    assert beyond == b"\0" * 4096
    await disk_env.backend.remove(layer.path)


async def test_size_below_base_refused(disk_env: DiskEnv) -> None:
    before = listing(disk_env.directory)
    with pytest.raises(InvalidDiskSize):
        await disk_env.backend.create(disk_env.base, disk_env.layer_path("a"), BASE_SIZE - MiB)
    assert listing(disk_env.directory) == before


async def test_removal_leaves_nothing(disk_env: DiskEnv) -> None:
    before = listing(disk_env.directory)
    layer = await disk_env.backend.create(disk_env.base, disk_env.layer_path("a"), SIZE)
    await asyncio.to_thread(write_layer, layer, 0, b"\x33" * 4096)
    assert listing(disk_env.directory) != before
    await disk_env.backend.remove(layer.path)
    assert listing(disk_env.directory) == before


async def test_idempotent_create_and_remove(disk_env: DiskEnv) -> None:
    dest = disk_env.layer_path("a")
    layer = await disk_env.backend.create(disk_env.base, dest, SIZE)
    await asyncio.to_thread(write_layer, layer, 0, b"\x44" * 4096)
    again = await disk_env.backend.create(disk_env.base, dest, SIZE)
    assert again == layer
    assert await asyncio.to_thread(read_layer, again, 0, 4096) == b"\x44" * 4096  # not made anew
    await disk_env.backend.remove(dest)
    await disk_env.backend.remove(dest)
    assert not dest.exists()


async def test_leftover_partial_is_replaced(disk_env: DiskEnv) -> None:
    dest = disk_env.layer_path("a")
    partial = dest.with_name(f".{dest.name}.partial")
    partial.write_bytes(b"half-written by a killed agent")
    layer = await disk_env.backend.create(disk_env.base, dest, SIZE)
    assert not partial.exists()
    assert await asyncio.to_thread(guest_size, layer) == SIZE
    await disk_env.backend.remove(dest)


async def test_missing_base(disk_env: DiskEnv) -> None:
    before = listing(disk_env.directory)
    with pytest.raises(BaseImageMissing):
        await disk_env.backend.create(disk_env.directory / "nope.raw", disk_env.layer_path("a"), SIZE)
    assert listing(disk_env.directory) == before
