"""Named snapshots of running sandboxes, and new sandboxes started from them.

A snapshot is taken with the sandbox's own pause machinery (`wrenn.agent.pause`): the sandbox is paused (memory,
device state and disk to files), the files are copied into ``<data>/snapshots/<id>/`` and the sandbox is resumed at
once — to its user it keeps running (its processes see a pause of about a second). Layout::

    <data>/snapshots/<id>/snapshot/   device (+ memory) state and the driver's manifest; ``memory``: a copy of the
                                      sandbox's own memory file (QEMU), which clones map copy-on-write
    <data>/snapshots/<id>/disk.qcow2  the frozen disk (an immutable copy; clones' overlays are backed by it)
    <data>/snapshots/<id>/meta.json   `SnapshotMeta`, written last: a directory without it is a crashed take

`find(id)` gives what a create needs to restore from it (`WarmSnapshot`): creating a sandbox from a snapshot is a
restore, not a boot, exactly like creating one from a warm template. A snapshot whose disk backs a live sandbox's
overlay cannot be deleted (Conflict).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict, Field

from wrenn.agent.pause import SNAPSHOT_DIR
from wrenn.agent.templates import WarmSnapshot
from wrenn.agent.vmm._sparse import copy_sparse
from wrenn.protocol.errors import Conflict, Invalid, NotFound

_log = structlog.get_logger(__name__)

META = "meta.json"
DISK = "disk.qcow2"
MANIFEST = "snapshot.json"
MEMORY = "memory"
KEY_PREFIX = "snap-"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SnapshotMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    snapshot_id: str = Field(pattern=_ID.pattern)
    template: str = Field(description="the image template the snapshot's sandbox was made from")
    source_sandbox: str
    vcpus: int
    memory_mb: int
    disk_mb: int
    created_at: datetime
    envd_token: str | None = Field(default=None, description="the token the snapshot's envd holds (clones' /init)")


class SnapshotStore:
    """The snapshots on this host (``<data>/snapshots``)."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def directory(self, snapshot_id: str) -> Path:
        if not _ID.match(snapshot_id):
            raise Invalid(f"bad snapshot id {snapshot_id!r}")
        return self._root / snapshot_id

    def find(self, snapshot_id: str) -> tuple[SnapshotMeta, WarmSnapshot] | None:
        if not _ID.match(snapshot_id):
            return None
        directory = self._root / snapshot_id
        try:
            meta = SnapshotMeta.model_validate_json((directory / META).read_text())
        except (OSError, ValueError):
            return None
        warm = WarmSnapshot(key=KEY_PREFIX + snapshot_id, directory=directory / SNAPSHOT_DIR, disk=directory / DISK)
        return meta, warm

    def guest_token(self, key: str) -> str | None:
        """The envd token inside the snapshot a warm key names (None for templates and token-less snapshots)."""
        if not key.startswith(KEY_PREFIX):
            return None
        found = self.find(key.removeprefix(KEY_PREFIX))
        return found[0].envd_token if found is not None else None

    def list(self) -> list[SnapshotMeta]:
        if not self._root.is_dir():
            return []
        found = [self.find(d.name) for d in sorted(self._root.iterdir()) if d.is_dir()]
        return [f[0] for f in found if f is not None]

    def recover(self) -> None:
        """Remove takes a crash interrupted (no ``meta.json``)."""
        if not self._root.is_dir():
            return
        for directory in self._root.iterdir():
            if directory.is_dir() and not (directory / META).exists():
                _log.info("removing unfinished snapshot", directory=str(directory))
                shutil.rmtree(directory, ignore_errors=True)

    def capture(self, meta: SnapshotMeta, paused_snapshot: Path, frozen_disk: Path) -> None:
        """Copy a just-paused sandbox's files into the snapshot (the sandbox's VMM is gone: nothing changes them).

        The driver's manifest is re-pointed at the copied disk, so a restore checks clones against it."""
        directory = self.directory(meta.snapshot_id)
        if (directory / META).exists():
            raise Conflict(f"snapshot {meta.snapshot_id} already exists")
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        try:
            shutil.copytree(paused_snapshot, directory / SNAPSHOT_DIR)
            _copy_disk(frozen_disk, directory / DISK, self._root)
            manifest_path = directory / SNAPSHOT_DIR / MANIFEST
            if manifest_path.exists():
                manifest = json.loads(manifest_path.read_text())
                if manifest.get("disk"):
                    manifest["disk"] = str(directory / DISK)
                memory = Path(manifest["memory_file"]) if manifest.get("memory_file") else None
                if memory is not None and memory.is_file() and not memory.is_relative_to(paused_snapshot):
                    # The sandbox's own memory file (QEMU), which it maps again on resume: the snapshot keeps a
                    # copy (its data extents only). Clones then map the copy copy-on-write.
                    copy_sparse(memory, directory / SNAPSHOT_DIR / MEMORY)
                    manifest["memory_file"] = str(directory / SNAPSHOT_DIR / MEMORY)
                manifest["directory"] = str(directory / SNAPSHOT_DIR)
                manifest_path.write_text(json.dumps(manifest))
            tmp = directory / f".{META}.tmp"
            tmp.write_text(meta.model_dump_json(indent=2))
            os.replace(tmp, directory / META)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def delete(self, snapshot_id: str, in_use: bool) -> None:
        directory = self.directory(snapshot_id)
        if not (directory / META).exists():
            raise NotFound(f"snapshot {snapshot_id} not found on this host")
        if in_use:
            raise Conflict(f"snapshot {snapshot_id} backs live sandboxes; destroy them first")
        shutil.rmtree(directory, ignore_errors=True)


def _copy_disk(source: Path, dest: Path, snapshots: Path) -> None:
    """Copy the frozen disk as a snapshot's own layer, flattened: every layer that belongs to another snapshot (a
    sandbox made from a snapshot, snapshotted again) is merged in, so the new layer is backed only by what is not a
    snapshot (the warm template's frozen disk or the image) and deleting one snapshot never breaks another.
    A disk ``qemu-img`` cannot read (the fake driver's) is copied as it is."""
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", "--backing-chain", str(source)], capture_output=True, text=True
    )
    chain: list[dict[str, object]] = json.loads(info.stdout) if info.returncode == 0 else []
    below = [Path(str(layer["filename"])) for layer in chain[1:]]
    if not below or not any(layer.is_relative_to(snapshots) for layer in below):
        subprocess.run(["cp", "--sparse=always", str(source), str(dest)], check=True)
        return
    base = next((layer for layer in below if not layer.is_relative_to(snapshots)), None)
    if base is None:
        subprocess.run(["cp", "--sparse=always", str(source), str(dest)], check=True)
        return
    base_format = next(str(c["format"]) for c in chain if Path(str(c["filename"])) == base)
    subprocess.run(
        ["qemu-img", "convert", "-U", "-O", "qcow2", "-B", str(base), "-F", base_format, str(source), str(dest)],
        check=True,
        capture_output=True,
    )


def new_meta(snapshot_id: str, template: str, source: str, vcpus: int, memory_mb: int, disk_mb: int) -> SnapshotMeta:
    return SnapshotMeta(
        snapshot_id=snapshot_id,
        template=template,
        source_sandbox=source,
        vcpus=vcpus,
        memory_mb=memory_mb,
        disk_mb=disk_mb,
        created_at=datetime.now(UTC),
    )
