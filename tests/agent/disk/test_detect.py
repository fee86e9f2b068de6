"""Backend detection per driver and filesystem, and the reflink backend's refusal on filesystems without reflink."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.agent.disk.conftest import MiB, make_base, xfs_mount
from wrenn.agent.disk import (
    BackendUnsupported,
    DmSnapshotBackend,
    InvalidDiskSize,
    Qcow2Backend,
    ReflinkBackend,
    detect_backend,
)
from wrenn.agent.vmm import DiskFormat

HAS_DM = Path("/dev/mapper/control").exists()


def _reflinks(path: Path) -> bool:
    src, dst = path / "probe-src", path / "probe-dst"
    src.write_bytes(b"x" * 4096)
    ok = subprocess.run(["cp", "--reflink=always", str(src), str(dst)], capture_output=True).returncode == 0
    src.unlink()
    dst.unlink(missing_ok=True)
    return ok


async def test_qemu_gets_qcow2(tmp_path: Path) -> None:
    assert isinstance(await detect_backend("qemu", tmp_path), Qcow2Backend)


@pytest.mark.root
async def test_raw_driver_on_xfs_gets_reflink_or_dm() -> None:
    with xfs_mount() as mnt:
        backend = await detect_backend("firecracker", mnt / "layers")
        assert isinstance(backend, DmSnapshotBackend if HAS_DM else ReflinkBackend)
        assert sorted(p.name for p in mnt.iterdir()) == ["layers"]  # the probe cleaned up


async def test_raw_driver_without_dm_or_reflink_is_refused(tmp_path: Path) -> None:
    if HAS_DM or _reflinks(tmp_path):
        pytest.skip(f"{tmp_path} can reflink or the host has device-mapper: nothing to refuse")
    with pytest.raises(BackendUnsupported, match="device-mapper") as info:
        await detect_backend("firecracker", tmp_path)
    assert "reflink" in info.value.reason


async def test_reflink_refuses_filesystem_without_reflink(tmp_path: Path) -> None:
    if _reflinks(tmp_path):
        pytest.skip(f"{tmp_path} can reflink")
    make_base(tmp_path / "base.raw")
    with pytest.raises(BackendUnsupported, match="XFS/btrfs"):
        await ReflinkBackend().create(tmp_path / "base.raw", tmp_path / "a.raw", 64 * MiB)
    assert sorted(os.listdir(tmp_path)) == ["base.raw"]


async def test_dm_snapshot_refuses_without_device_mapper(tmp_path: Path) -> None:
    if HAS_DM:
        pytest.skip("this host has device-mapper")
    make_base(tmp_path / "base.raw")
    with pytest.raises(BackendUnsupported, match="/dev/mapper/control"):
        await DmSnapshotBackend().create(tmp_path / "base.raw", tmp_path / "a.raw", 64 * MiB)


async def test_qcow2_layer_over_a_qcow2_base(tmp_path: Path) -> None:
    """A paused sandbox's frozen disk is qcow2; its clones stack a qcow2 layer on it (beyond the interface)."""
    make_base(tmp_path / "base.raw")
    backend = Qcow2Backend()
    frozen = await backend.create(tmp_path / "base.raw", tmp_path / "frozen.qcow2", 64 * MiB)
    with pytest.raises(InvalidDiskSize):
        await backend.create(frozen.path, tmp_path / "clone.qcow2", 48 * MiB, base_format=DiskFormat.QCOW2)
    clone = await backend.create(frozen.path, tmp_path / "clone.qcow2", 128 * MiB, base_format=DiskFormat.QCOW2)
    info = await asyncio.to_thread(
        subprocess.run,
        ["qemu-img", "info", "-U", "--output=json", str(clone.path)],
        check=True,
        capture_output=True,
        text=True,
    )
    parsed = json.loads(info.stdout)
    assert parsed["virtual-size"] == 128 * MiB
    assert parsed["backing-filename-format"] == "qcow2"
    await backend.remove(clone.path)
    await backend.remove(frozen.path)
