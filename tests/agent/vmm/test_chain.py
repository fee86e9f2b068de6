"""The qcow2 header reader that replaces ``qemu-img info --backing-chain`` on restore: it must name the same files
qemu-img does, and say "don't know" (None) wherever it cannot be sure."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from wrenn.agent.vmm.qemu._chain import QCOW2_MAGIC, backing_chain, chain_contains

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (Debian qemu-utils) not installed")


def _qemu_img(*argv: str) -> str:
    return subprocess.run(["qemu-img", *argv], check=True, capture_output=True, text=True).stdout


def _overlay(path: Path, backing: str, backing_format: str) -> Path:
    _qemu_img("create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format, str(path))
    return path


def _qemu_img_chain(image: Path) -> list[Path]:
    chain = json.loads(_qemu_img("info", "-U", "--output=json", "--backing-chain", str(image)))
    return [Path(entry["filename"]).resolve() for entry in chain]


def test_the_chain_is_the_one_qemu_img_sees(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * 1024 * 1024)
    (tmp_path / "frozen").mkdir()
    frozen = _overlay(tmp_path / "frozen" / "disk.qcow2", str(base), "raw")  # absolute name
    (tmp_path / "sandbox").mkdir()
    layer = _overlay(tmp_path / "sandbox" / "layer.qcow2", "../frozen/disk.qcow2", "qcow2")  # relative name
    chain = backing_chain(layer)
    assert chain is not None
    assert [p.resolve() for p in chain] == _qemu_img_chain(layer) == [layer, frozen, base]
    assert chain_contains(chain, frozen)
    assert chain_contains(chain, base)
    assert not chain_contains(chain, tmp_path / "frozen" / "other.qcow2")


def test_a_layer_without_a_backing_file_is_its_own_chain(tmp_path: Path) -> None:
    alone = tmp_path / "alone.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(alone), "1M")
    assert backing_chain(alone) == [alone]
    assert _qemu_img_chain(alone) == [alone.resolve()]


def test_symlinked_snapshot_disk_is_recognised(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * 65536)
    layer = _overlay(tmp_path / "layer.qcow2", str(base), "raw")
    (tmp_path / "link.raw").symlink_to(base)
    chain = backing_chain(layer)
    assert chain is not None
    assert chain_contains(chain, tmp_path / "link.raw")


@pytest.mark.parametrize("name", ['json:{"driver": "raw"}', "nbd://127.0.0.1/x"])
def test_a_protocol_backing_name_is_left_to_qemu_img(tmp_path: Path, name: str) -> None:
    layer = tmp_path / "layer.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", name, "-F", "raw", str(layer), "1M")
    assert backing_chain(layer) is None


def test_missing_or_damaged_files_are_left_to_qemu_img(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * 65536)
    layer = _overlay(tmp_path / "layer.qcow2", str(base), "raw")
    assert backing_chain(tmp_path / "nowhere.qcow2") is None
    header = bytearray(layer.read_bytes()[:4096])
    struct.pack_into(">I", header, 16, 2000)  # a backing name longer than QEMU allows
    damaged = tmp_path / "damaged.qcow2"
    damaged.write_bytes(bytes(header))
    assert backing_chain(damaged) is None
    truncated = tmp_path / "truncated.qcow2"
    offset, size = struct.unpack_from(">QI", header, 8)
    truncated.write_bytes(layer.read_bytes()[: offset + 2])
    assert size > 2
    assert backing_chain(truncated) is None


def test_a_cycle_ends_in_none(tmp_path: Path) -> None:
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(a), "1M")
    _overlay(b, str(a), "qcow2")
    data = bytearray(a.read_bytes())  # rewrite a's header to name b: a -> b -> a -> ...
    assert data[:4] == QCOW2_MAGIC
    name = str(b).encode()
    struct.pack_into(">QI", data, 8, 4096 - len(name) - 8, len(name))
    data[4096 - len(name) - 8 : 4096 - 8] = name
    a.write_bytes(bytes(data))
    assert backing_chain(b) is None
