"""Backend detection per driver and filesystem, and the reflink backend's refusal on filesystems without reflink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.agent.disk.conftest import MiB, make_base, xfs_mount
from wrenn.agent.disk import (
    BackendUnsupported,
    DmSnapshotBackend,
    Qcow2Backend,
    ReflinkBackend,
    detect_backend,
)

HAS_DM = Path("/dev/mapper/control").exists()


def _reflinks(path: Path) -> bool:
    import subprocess

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
