"""`NetworkPool`: a few network slots set up ahead of any sandbox, so a create does not wait for its network.

A prepared slot is a full sandbox network (namespace, veth pair, TAP, both nft tables) with egress denied, made by
`HostResources.prepare_network` on a slot of the manager's `SlotAllocator`. `take` hands one to a create, which
applies the sandbox's egress to it (`HostResources.take_network`); from then on it is that sandbox's network,
recorded in its `SandboxRecord` and undone with it like any other. An empty pool (a burst, a failing host) only
means the create sets up its network itself, as without a pool.

The refill task (`open` starts it, `aclose` cancels it; it exits only so) keeps ``size`` slots prepared, one at a
time, and backs off after a failure. Persisted in ``pool.json`` beside the sandboxes (``{"slots": [...]}``,
written atomically): a slot is recorded *before* it is set up and stays recorded until it is handed to a sandbox
(or removed), so after an agent crash every pool slot is known. Restart recovery (`recover`) removes the recorded
slots that no sandbox record claims — a sandbox record's claim wins, since a slot is taken from the pool before
its file is rewritten — and whatever is left unrecorded on the host is removed by `cleanup_stale` as usual.
`aclose` tears the prepared slots down, so a stopped agent leaves none behind.

The pool never holds more than ``size`` slots, prepared or being prepared; ``size`` 0 disables it.

The refill yields to creates: while any create runs (`creating`), it waits before each slot — up to `QUIET_LIMIT`
seconds, so a steady stream of creates cannot starve it. A slot's setup is ~70 ms of ``ip``/``nft`` processes and
netlink work; started the moment a create took a slot, it ran beside that create's VMM and guest and slowed them
(measured on a 2-core host: docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import deque
from collections.abc import AsyncIterator, Collection
from pathlib import Path

import structlog

from wrenn.agent._resources import HostResources
from wrenn.agent._slots import SlotAllocator
from wrenn.agent._tasks import cancel_and_wait
from wrenn.protocol.errors import WrennError

_log = structlog.get_logger(__name__)

POOL_FILE = "pool.json"
OWNER = "pool"
"""The sandbox id passed to `HostResources.release_network` for a slot no sandbox holds yet."""
QUIET_LIMIT = 2.0
"""Seconds the refill waits for the creates running to end before it prepares a slot anyway."""
BACKOFF = (0.5, 30.0)
"""Seconds to wait after a failed preparation: the first, doubled per failure up to the second."""


class NetworkPool:
    """Up to `size` prepared network slots, refilled in the background. ``open`` / ``aclose`` bound the task."""

    def __init__(self, *, resources: HostResources, slots: SlotAllocator, path: Path, size: int) -> None:
        self._resources = resources
        self._slots = slots
        self._path = path
        self._size = max(0, size)
        self._ready: deque[int] = deque()
        self._preparing: set[int] = set()
        self._wanted = asyncio.Event()
        self._idle = asyncio.Event()
        self._creates = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()

    @property
    def size(self) -> int:
        return self._size

    @property
    def ready(self) -> tuple[int, ...]:
        """The prepared slots, in the order `take` hands them out."""
        return tuple(self._ready)

    # ---- life --------------------------------------------------------------------------------------------------

    async def recover(self, claimed: Collection[int]) -> None:
        """At agent start, before `open`: remove the slots a previous agent recorded for its pool, except those a
        sandbox record claims (`claimed`: they are that sandbox's now). Their allocator slots are free afterwards."""
        recorded = await asyncio.to_thread(self._read)
        for slot in sorted(set(recorded) - set(claimed)):
            _log.info("removing a network slot prepared by the previous agent", slot=slot)
            try:
                await self._resources.release_network(OWNER, slot)
            except (WrennError, OSError) as exc:  # unclaimed on the host: `cleanup_stale`, right after, tries again
                _log.warning("cannot remove a prepared network slot", slot=slot, error=repr(exc))
        await self._write()

    def open(self) -> None:
        """Start the refill task (no-op when the pool is disabled or already open)."""
        if self._size == 0 or self._task is not None:
            return
        self._wanted.set()
        self._task = asyncio.create_task(self._refill(), name="network-pool-refill")

    async def aclose(self) -> None:
        """Cancel the refill task (a slot it was preparing is undone) and tear down the prepared slots."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        while self._ready:
            slot = self._ready.popleft()
            try:
                await self._resources.release_network(OWNER, slot)
            except (WrennError, OSError) as exc:  # recorded still: the next agent removes it
                _log.warning("cannot remove a prepared network slot", slot=slot, error=repr(exc))
                continue
            self._slots.free(slot)
        await self._write()

    async def settled(self) -> None:
        """Wait until the refill task has nothing to do (the pool is full, or it is backing off after a failure).
        For benchmarks and tests that want a quiet host; a create never waits for the pool."""
        if self._task is None:
            return
        await asyncio.sleep(0)  # let a refill that was just asked for clear `_idle` first
        while self._wanted.is_set() or not self._idle.is_set():
            await self._idle.wait()
            await asyncio.sleep(0)

    # ---- use ---------------------------------------------------------------------------------------------------

    def take(self) -> int | None:
        """A prepared slot (egress denied) for a create, or None when none is ready. The caller records the slot in
        its sandbox record; the pool's file forgets it at its next write."""
        slot = self._ready.popleft() if self._ready else None
        if self._task is not None:
            self._wanted.set()
        return slot

    @contextlib.asynccontextmanager
    async def creating(self) -> AsyncIterator[None]:
        """Around a create: the refill does not start a slot while one runs (see the module's docstring)."""
        self._creates += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._creates -= 1
            if self._creates == 0:
                self._quiet.set()

    # ---- refill task -------------------------------------------------------------------------------------------

    async def _refill(self) -> None:
        """Runs until cancelled (`aclose`)."""
        failures = 0
        while True:
            await self._wanted.wait()
            self._idle.clear()
            self._wanted.clear()
            while len(self._ready) + len(self._preparing) < self._size:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(QUIET_LIMIT):
                        await self._quiet.wait()
                try:
                    await self._prepare_one()
                except Exception as exc:  # noqa: BLE001 - the task outlives a failing host; logged, backed off
                    failures += 1
                    delay = min(BACKOFF[1], BACKOFF[0] * 2 ** (failures - 1))
                    _log.warning("preparing a network slot failed; backing off", error=repr(exc), seconds=delay)
                    self._idle.set()
                    await asyncio.sleep(delay)  # a back-off, not a wait for readiness
                    self._idle.clear()
                else:
                    failures = 0
            await self._write()  # forget slots handed out since the last write
            self._idle.set()

    async def _prepare_one(self) -> None:
        slot = self._slots.allocate()
        self._preparing.add(slot)
        try:
            await self._write()  # recorded before it is set up
            preparing = asyncio.ensure_future(self._resources.prepare_network(slot))
            try:
                await asyncio.shield(preparing)
            except asyncio.CancelledError:
                # The host work goes on in its worker thread after a cancellation: undo it only once it has ended,
                # or the undo could run before the last of it and leave a namespace behind.
                await asyncio.wait([preparing])
                raise
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._resources.release_network(OWNER, slot))
            self._preparing.discard(slot)
            self._slots.free(slot)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._write())
            raise
        self._preparing.discard(slot)
        self._ready.append(slot)

    # ---- the file ----------------------------------------------------------------------------------------------

    async def _write(self) -> None:
        async with self._write_lock:
            slots = sorted({*self._ready, *self._preparing})
            writing = asyncio.ensure_future(asyncio.to_thread(self._save, slots))
            try:
                await asyncio.shield(writing)
            except asyncio.CancelledError:  # the thread writes on: keep the lock until it is done
                await asyncio.wait([writing])
                raise

    def _save(self, slots: list[int]) -> None:
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w") as f:
            json.dump({"slots": slots}, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self._path)

    def _read(self) -> list[int]:
        try:
            raw = json.loads(self._path.read_text())
            return [int(s) for s in raw.get("slots", [])]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            # Unreadable: the slots it named are unclaimed on the host, and `cleanup_stale` removes those.
            _log.warning("unreadable network pool file; its slots are removed as stale", error=repr(exc))
            return []
