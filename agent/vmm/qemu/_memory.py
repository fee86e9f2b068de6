"""A paused QEMU's guest RAM written out as a memory file of its own, without a migration stream.

A VM restored from a snapshot maps the snapshot's memory file copy-on-write (``memory-backend-file,share=off``):
the pages the guest wrote since are private to the QEMU process, the others still are the file's. QEMU treats
such RAM as not shared, so a migration (even with ``x-ignore-shared``) streams every page of it. Instead, with the
VM stopped, `build_memory_file` makes the VM's own file: a sparse copy of the snapshot's file with the private
pages written at their offsets. The private pages are found in ``/proc/<pid>/pagemap`` (present or swapped, and
not "file-page or shared-anon") over the RAM mapping ``/proc/<pid>/maps`` shows for the file, and read from
``/proc/<pid>/mem``. The cost is the snapshot file's data plus the dirtied pages, not the RAM size.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from wrenn.agent.vmm._sparse import copy_sparse

PAGE = os.sysconf("SC_PAGE_SIZE")
# pagemap entry bits 63 (present), 62 (swapped), 61 (file page or shared anonymous) are bits 7, 6, 5 of its top
# byte: private = (present or swapped) and not file/shared.
_PRIVATE_TOP_BYTE = bytes(1 if b & 0xC0 and not b & 0x20 else 0 for b in range(256))
_RUN = re.compile(rb"\x01+")
_ENTRIES = 1 << 16  # pagemap entries read at once (512 KiB)
_READ_LIMIT = 16 << 20  # bytes moved from /proc/<pid>/mem per read


@dataclass(frozen=True)
class RamMapping:
    start: int
    end: int
    shared: bool


@dataclass(frozen=True)
class BuildStats:
    copied: int
    """bytes of the snapshot file's data copied (0 on a reflink)"""
    private: int
    """bytes of the guest's private pages written"""


def ram_mapping(pid: int, memory_file: Path, size: int) -> RamMapping:
    """The mapping of `memory_file` of `size` bytes in process `pid` (guest RAM), from ``/proc/<pid>/maps``."""
    wanted = {str(memory_file), os.path.realpath(memory_file)}  # maps shows the path as resolved
    found: list[RamMapping] = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or fields[5].rstrip("\n").removesuffix(" (deleted)") not in wanted:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if end - start == size and int(fields[2], 16) == 0:
                found.append(RamMapping(start, end, fields[1][3] == "s"))
    if len(found) != 1:
        raise OSError(f"QEMU {pid}: {len(found)} mappings of {memory_file} with {size} bytes (want one)")
    return found[0]


def private_runs(pid: int, mapping: RamMapping) -> list[tuple[int, int]]:
    """Runs ``(first page, page count)`` of the mapping's pages that are the process's own (copied on write).

    Only the top byte of each 64-bit entry matters (bits 63, 62, 61); it is mapped to 1 (private) or 0 with
    `bytes.translate` and the runs of 1s are found with a regular expression, so 4 GiB of RAM (a million entries)
    is scanned at C speed."""
    pages = (mapping.end - mapping.start) // PAGE
    runs: list[tuple[int, int]] = []
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pagemap:
        index = 0
        while index < pages:
            count = min(_ENTRIES, pages - index)
            data = os.pread(pagemap.fileno(), count * 8, (mapping.start // PAGE + index) * 8)
            if len(data) != count * 8:
                raise OSError(f"QEMU {pid}: short pagemap read")
            flags = data[7::8].translate(_PRIVATE_TOP_BYTE)
            for match in _RUN.finditer(flags):
                first = index + match.start()
                if runs and runs[-1][0] + runs[-1][1] == first:  # a run across two reads
                    runs[-1] = (runs[-1][0], runs[-1][1] + match.end() - match.start())
                else:
                    runs.append((first, match.end() - match.start()))
            index += count
    return runs


def build_memory_file(pid: int, base: Path, dest: Path, size: int) -> BuildStats:
    """Write the stopped VM's RAM (a private mapping of `base`) as `dest`: durable and complete, or not there.

    Built as ``dest.tmp`` and renamed, so a crash leaves either the old `dest` or the new one."""
    mapping = ram_mapping(pid, base, size)
    if mapping.shared:
        raise OSError(f"QEMU {pid} maps {base} shared: its RAM is that file")
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        copied = copy_sparse(base, tmp, size=size)
        written = 0
        fd = os.open(tmp, os.O_WRONLY)
        try:
            with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
                for first, count in private_runs(pid, mapping):
                    offset = first * PAGE
                    end = offset + count * PAGE
                    while offset < end:
                        length = min(_READ_LIMIT, end - offset)
                        data = os.pread(mem.fileno(), length, mapping.start + offset)
                        if len(data) != length:
                            raise OSError(f"QEMU {pid}: short read of guest RAM at {offset:#x}")
                        os.pwrite(fd, data, offset)
                        written += length
                        offset += length
            os.fdatasync(fd)
        finally:
            os.close(fd)
        tmp.replace(dest)
        sync_directory(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BuildStats(copied=copied, private=written)


def sync_file(path: Path) -> None:
    """Write back a memory file's dirty pages (the guest's writes since the last sync) and wait for them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
