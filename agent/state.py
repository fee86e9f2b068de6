"""Per-sandbox state persisted on the host: what a restarted agent needs to adopt, finish or undo a sandbox.

Layout: ``<data>/sandboxes/<id>/state.json`` (the `SandboxRecord`), next to the sandbox's run directory
(``run/``: VMM control socket, pidfile, logs, ``vm.json``) and its disk overlay. Writes are atomic (temp file,
fsync, rename, fsync of the directory), so a crash leaves either the old or the new record, never a torn one.

A record lists the host steps of a create (`Step`) in the order they are taken. A step is appended *before* it is
taken, so after a crash at any point the record names everything that may exist and recovery undoes exactly that
(every undo is idempotent: undoing a step that never happened is a no-op).

The writes of a create are not fsynced (``durable=False``): what they guard against is the agent dying, and for that
an atomic rename is enough. A host crash takes every step's result with it — namespaces (``/run`` is tmpfs),
cgroups, VMMs — except the files under the sandbox's directory, which go whole with the directory when its record
is undone, or, when the crash lost the record too, as a directory without a readable record (`load_all`).
"""

from __future__ import annotations

import enum
import json
import os
import shutil
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wrenn.protocol.agent import SANDBOX_ID_PATTERN, CreateSandbox, SandboxState

STATE_FILE = "state.json"


class Step(enum.StrEnum):
    """Host steps of a create, in order. Destroy undoes them in reverse."""

    SLOT = "slot"
    NETWORK = "network"
    DISK = "disk"
    CGROUP = "cgroup"
    VM = "vm"
    INIT = "init"


class SandboxRecord(BaseModel):
    """The persisted truth about one sandbox on this host."""

    model_config = ConfigDict(extra="forbid")

    sandbox_id: str = Field(pattern=SANDBOX_ID_PATTERN)
    request: CreateSandbox
    state: SandboxState = SandboxState.CREATING
    steps: list[Step] = Field(default_factory=list, description="steps begun, in order (appended before acting)")
    slot: int | None = None
    netns: str | None = None
    envd_address: str | None = None
    disk: Path | None = None
    run_dir: Path | None = None
    template_key: str | None = None
    restored: bool = False
    created_at: datetime
    error: str | None = None

    def begun(self, step: Step) -> bool:
        return step in self.steps


class StateStore:
    """Reads and writes `SandboxRecord`s under ``<data>/sandboxes``. Synchronous and small: callers run it in a
    thread when they care about the event loop (a record is a few hundred bytes)."""

    def __init__(self, root: Path) -> None:
        self._root = root

    @property
    def root(self) -> Path:
        return self._root

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self._root / sandbox_id

    def save(self, record: SandboxRecord, *, durable: bool = True) -> None:
        """Write `record` atomically (temp file, rename). `durable` also fsyncs the file and the directory, so the
        record survives a host crash; without it, it survives the agent's crash (the page cache outlives a killed
        process, and the rename is atomic either way)."""
        directory = self.sandbox_dir(record.sandbox_id)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / STATE_FILE
        tmp = directory / f".{STATE_FILE}.tmp"
        with tmp.open("w") as f:
            f.write(record.model_dump_json(indent=2))
            if durable:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
        if durable:
            _fsync_dir(directory)

    def load(self, sandbox_id: str) -> SandboxRecord | None:
        path = self.sandbox_dir(sandbox_id) / STATE_FILE
        try:
            return SandboxRecord.model_validate_json(path.read_text())
        except FileNotFoundError:
            return None

    def load_all(self) -> tuple[list[SandboxRecord], list[Path]]:
        """Every readable record, and the sandbox directories without one (a crash before the first write, or a
        corrupt file): the caller removes those."""
        records: list[SandboxRecord] = []
        orphans: list[Path] = []
        if not self._root.is_dir():
            return records, orphans
        for directory in sorted(self._root.iterdir()):
            if not directory.is_dir():
                continue
            try:
                records.append(SandboxRecord.model_validate_json((directory / STATE_FILE).read_text()))
            except (OSError, ValidationError, json.JSONDecodeError):
                orphans.append(directory)
        return records, orphans

    def remove(self, sandbox_id: str) -> None:
        """Forget a sandbox: its directory (record, run dir, overlay if it lives there) goes."""
        shutil.rmtree(self.sandbox_dir(sandbox_id), ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
