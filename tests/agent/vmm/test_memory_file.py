"""`wrenn.agent.vmm.qemu._memory` and `_sparse` on a real private file mapping in this process (no VM needed):
the pages written through a copy-on-write mapping are found in pagemap and end up in the built file."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from wrenn.agent.vmm._sparse import copy_sparse
from wrenn.agent.vmm.qemu._memory import PAGE, build_memory_file, private_runs, ram_mapping

SIZE = 64 * PAGE


def _base(path: Path) -> None:
    """A sparse file: data in pages 0-3 and 40, holes elsewhere."""
    with path.open("wb") as f:
        f.truncate(SIZE)
        f.write(b"A" * 4 * PAGE)
        f.seek(40 * PAGE)
        f.write(b"B" * PAGE)


def test_copy_sparse_keeps_data_and_holes(tmp_path: Path) -> None:
    base = tmp_path / "base"
    _base(base)
    copied = copy_sparse(base, tmp_path / "copy", size=2 * SIZE)
    data = (tmp_path / "copy").read_bytes()
    assert len(data) == 2 * SIZE
    assert data[:SIZE] == base.read_bytes()
    assert copied in (0, 5 * PAGE), "a reflink, or the data extents only"
    assert os.stat(tmp_path / "copy").st_blocks * 512 <= 8 * PAGE, "holes stay holes"


def test_private_pages_of_a_copy_on_write_mapping_go_into_the_built_file(tmp_path: Path) -> None:
    base = tmp_path / "base"
    _base(base)
    with base.open("rb") as f:
        ram = mmap.mmap(f.fileno(), SIZE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        _ = ram[2 * PAGE]  # read only: stays the file's page
        for page in (1, 10, 11, 12, 63):
            ram[page * PAGE : page * PAGE + 5] = b"dirty"
        mapping = ram_mapping(os.getpid(), base, SIZE)
        assert not mapping.shared
        assert private_runs(os.getpid(), mapping) == [(1, 1), (10, 3), (63, 1)]
        dest = tmp_path / "own"
        stats = build_memory_file(os.getpid(), base, dest, SIZE)
        assert stats.private == 5 * PAGE
        assert dest.read_bytes() == bytes(ram)
        assert not (tmp_path / "own.tmp").exists()
        assert base.read_bytes()[PAGE : PAGE + 5] == b"AAAAA", "the base file is never written"
    finally:
        ram.close()


def test_a_shared_mapping_is_not_copied(tmp_path: Path) -> None:
    base = tmp_path / "base"
    _base(base)
    with base.open("r+b") as f:
        ram = mmap.mmap(f.fileno(), SIZE, flags=mmap.MAP_SHARED)
    try:
        assert ram_mapping(os.getpid(), base, SIZE).shared
    finally:
        ram.close()
