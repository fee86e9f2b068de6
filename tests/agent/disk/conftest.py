"""Fixtures for the disk conformance suite: one environment per backend (a layer directory and a base image on
the right filesystem), and format-aware reads and writes of a layer's guest-visible bytes."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from wrenn.agent.disk import DiskBackend, DmSnapshotBackend, Layer, Qcow2Backend, ReflinkBackend
from wrenn.agent.vmm import DiskFormat

MiB = 1024 * 1024
BASE_SIZE = 32 * MiB


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@dataclass
class DiskEnv:
    backend: DiskBackend
    directory: Path
    base: Path
    private_fs: bool = False
    """Whether `directory` is on a filesystem only this test writes (free-space deltas mean something)."""

    def layer_path(self, name: str) -> Path:
        suffix = "qcow2" if self.backend.format is DiskFormat.QCOW2 else "raw"
        return self.directory / f"{name}.{suffix}"


def make_base(path: Path) -> None:
    """A raw base with data in its first 8 MiB (random, so sharing is visible) and a hole after it."""
    with path.open("wb") as f:
        f.write(os.urandom(8 * MiB))
        f.truncate(BASE_SIZE)
    os.chmod(path, 0o444)


@contextlib.contextmanager
def xfs_mount() -> Iterator[Path]:
    """A fresh XFS filesystem (reflink on) in a sparse loop file, mounted on a temporary directory."""
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("mkfs.xfs missing (Debian package xfsprogs)")
    with tempfile.TemporaryDirectory(prefix="wrenn-xfs-") as tmp:
        image, mnt = Path(tmp) / "xfs.img", Path(tmp) / "mnt"
        mnt.mkdir()
        with image.open("wb") as f:
            f.truncate(512 * MiB)
        _run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
        try:
            _run("mount", "-o", "loop", str(image), str(mnt))
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot loop-mount XFS here: {exc.stderr.strip()}")
        try:
            yield mnt
        finally:
            _run("umount", str(mnt))  # also detaches the loop device (autoclear)


BACKENDS = [
    pytest.param("qcow2", id="qcow2"),
    pytest.param("reflink", id="reflink", marks=pytest.mark.root),
    pytest.param("dm-snapshot", id="dm-snapshot", marks=pytest.mark.root),
]


@pytest.fixture(params=BACKENDS)
def disk_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DiskEnv]:
    kind = str(request.param)
    if kind == "qcow2":
        make_base(tmp_path / "base.raw")
        (tmp_path / "layers").mkdir()
        yield DiskEnv(Qcow2Backend(), tmp_path / "layers", tmp_path / "base.raw")
    elif kind == "reflink":
        with xfs_mount() as mnt:
            make_base(mnt / "base.raw")
            (mnt / "layers").mkdir()
            yield DiskEnv(ReflinkBackend(), mnt / "layers", mnt / "base.raw", private_fs=True)
    else:
        if not Path("/dev/mapper/control").exists():
            pytest.skip("no device-mapper on this host (/dev/mapper/control missing)")
        make_base(tmp_path / "base.raw")
        (tmp_path / "layers").mkdir()
        yield DiskEnv(DmSnapshotBackend(), tmp_path / "layers", tmp_path / "base.raw")


def write_layer(layer: Layer, offset: int, data: bytes) -> None:
    """Write as the guest would: through qemu-io for qcow2, straight to the file or device for raw."""
    if layer.format is DiskFormat.QCOW2:
        assert len(set(data)) == 1, "qcow2 writes use a one-byte pattern"
        _run("qemu-io", "-f", "qcow2", "-c", f"write -P {data[0]} {offset} {len(data)}", str(layer.path))
        return
    with open(layer.path, "r+b") as f:
        f.seek(offset)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_layer(layer: Layer, offset: int, length: int) -> bytes:
    """The guest-visible bytes at `offset` (through the backing chain for qcow2)."""
    if layer.format is DiskFormat.QCOW2:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.raw"
            _run("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(layer.path), str(out))
            with out.open("rb") as f:
                f.seek(offset)
                return f.read(length)
    with open(layer.path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def guest_size(layer: Layer) -> int:
    if layer.format is DiskFormat.QCOW2:
        import json

        return int(json.loads(_run("qemu-img", "info", "-U", "--output=json", str(layer.path)))["virtual-size"])
    with open(layer.path, "rb") as f:
        return f.seek(0, os.SEEK_END)
