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


def _qemu_io_write(path: Path) -> None:
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 64k", str(path)], check=True, capture_output=True)


def _qemu_img(*argv: str) -> str:
    return subprocess.run(["qemu-img", *argv], check=True, capture_output=True, text=True).stdout


async def test_qcow2_later_layers_of_a_base_are_written_from_the_first(tmp_path: Path) -> None:
    """The first layer of a (base, size) comes from ``qemu-img create``; later ones are its bytes, written without a
    process — byte for byte what qemu-img makes, sparse, and made anew when the base file changes."""
    make_base(tmp_path / "base.raw")
    backend = Qcow2Backend()
    first = await backend.create(tmp_path / "base.raw", tmp_path / "a.qcow2", 64 * MiB)
    second = await backend.create(tmp_path / "base.raw", tmp_path / "b.qcow2", 64 * MiB)
    reference = tmp_path / "ref.qcow2"
    _qemu_img(
        "create", "-q", "-f", "qcow2", "-b", str(tmp_path / "base.raw"), "-F", "raw", str(reference), str(64 * MiB)
    )
    assert second.path.read_bytes() == reference.read_bytes() == first.path.read_bytes()
    assert os.stat(second.path).st_blocks * 512 <= os.stat(reference).st_blocks * 512
    _qemu_img("check", str(second.path))
    assert not await asyncio.to_thread(lambda: list(tmp_path.glob(".*partial")))
    # Written through QEMU, the second layer takes the data; the first (and the base) stay as they were.
    await asyncio.to_thread(_qemu_io_write, second.path)
    assert first.path.read_bytes() == reference.read_bytes()
    assert second.path.read_bytes() != reference.read_bytes()
    # A base replaced at the same path (new inode) gets a layer from qemu-img again, pointing at the new file.
    (tmp_path / "base.raw").unlink()
    make_base(tmp_path / "base.raw")
    third = await backend.create(tmp_path / "base.raw", tmp_path / "d.qcow2", 64 * MiB)
    assert json.loads(_qemu_img("info", "-U", "--output=json", str(third.path)))["virtual-size"] == 64 * MiB
    # Another size is another key.
    bigger = await backend.create(tmp_path / "base.raw", tmp_path / "e.qcow2", 128 * MiB)
    assert json.loads(_qemu_img("info", "-U", "--output=json", str(bigger.path)))["virtual-size"] == 128 * MiB
    for layer in (first, second, third, bigger):
        await backend.remove(layer.path)
