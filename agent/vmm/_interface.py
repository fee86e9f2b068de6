"""The VMM driver contract: `VMDriver` starts, restores and adopts VMs; `VM` is the handle to one running VMM.

Vocabulary
    VMM       the host process that emulates the machine (``qemu-system-x86_64``, ``firecracker``).
    guest     the operating system inside; it runs only after the driver resumed or started it.
    run dir   a directory private to one VM: control socket, pidfile, console log, ``vm.json``.
    handle    a `VM` object. Dropping or closing a handle never stops the VMM: VMs outlive agent restarts.

Lifecycle (`VMState`)::

    start()/restore() ──> STARTING ──> RUNNING <──> PAUSED
                             │            │           │
                             │          stop() ──> STOPPING ──> STOPPED
                             │            │           │
                             └─ failure: StartFailed, nothing left behind
            any state ── VMM exits without stop()/kill() ──> CRASHED
            any state ── kill() ──> STOPPED

    STARTING   VMM spawned, guest not running yet; `placement` is called here with the VMM pid.
    RUNNING    guest vCPUs run.
    PAUSED     guest vCPUs stopped (snapshot in progress, or a later pause feature); memory kept.
    STOPPING   stop() asked the VMM to end.
    STOPPED    the VMM process is gone because we asked (stop/kill).
    CRASHED    the VMM process is gone and nobody asked (guest reboot/poweroff, VMM crash, OOM kill).

Guarantees
    * `start()` returns only once the guest is running; readiness of the guest's services (envd ``/health``) is
      the caller's to wait for — `wait_envd` does it.
    * On any start failure the driver kills the VMM it spawned and removes its sockets and pidfile before raising
      `StartFailed` (the run dir itself and the caller's files stay).
    * `placement(pid)` is awaited after the VMM exists and before any guest instruction runs, so a cgroup set there
      accounts the whole guest. If it raises, the start is rolled back and the error propagates.
    * `stop()`, `kill()` and `wait_exited()` are idempotent and safe in STOPPED/CRASHED.
    * `adopt(run_dir)` re-attaches to a live VMM started by the same driver, by pidfile + control socket, checking
      that the pid still is that VMM (not a reused pid); it raises `AdoptFailed` otherwise.
    * Methods needing a state raise `VMStateError` naming the actual and the required state.

Errors: see `wrenn.agent.vmm._errors` (every one is also a `wrenn.protocol` error kind).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from wrenn.agent.vmm._config import SnapshotInfo, VMConfig
from wrenn.protocol.agent import Accelerator


class VMState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"


EXITED_STATES = frozenset({VMState.STOPPED, VMState.CRASHED})

Placement = Callable[[int], Awaitable[None]]
"""Called once with the VMM's pid after spawn and before the guest runs (e.g. to move it into a cgroup), possibly
while the VMM is still initialising; it must accept a pid that has exited meanwhile by raising."""


@runtime_checkable
class VM(Protocol):
    """A handle to one VMM process."""

    @property
    def config(self) -> VMConfig: ...

    @property
    def state(self) -> VMState: ...

    @property
    def pid(self) -> int: ...

    async def wait_exited(self) -> VMState:
        """Wait until the VMM process is gone; return STOPPED or CRASHED. Does not ask it to exit."""
        ...

    async def stop(self, grace: float = 10.0) -> None:
        """End the VM: ask the VMM to exit, wait up to `grace` s, then SIGKILL. Idempotent."""
        ...

    async def kill(self) -> None:
        """SIGKILL the VMM and wait for it to be gone. Idempotent."""
        ...

    async def pause(self) -> None:
        """Stop the guest's vCPUs (RUNNING -> PAUSED)."""
        ...

    async def resume(self) -> None:
        """Run the guest's vCPUs again (PAUSED -> RUNNING)."""
        ...

    async def save_snapshot(self, directory: Path) -> SnapshotInfo:
        """Pause the guest and write its device (and, unless file-backed, memory) state into `directory`.

        The disk is frozen with it (`SnapshotInfo.disk`): QEMU puts a new qcow2 layer on top of the rootfs so
        the layer below stays as it was; Firecracker copies the raw rootfs. The VM stays PAUSED afterwards; the
        caller stops or resumes it (it then writes to its new layer).
        """
        ...

    async def aclose(self) -> None:
        """Release the handle (control connection, tasks). The VMM keeps running; `adopt` finds it again.

        A closed handle refuses every further call with `VMStateError` (it no longer watches the process).
        """
        ...


class VMDriver(Protocol):
    """Starts VMs of one VMM kind. Implementations: `QemuDriver`, `FirecrackerDriver`."""

    name: str

    async def accelerator(self) -> Accelerator:
        """The accelerator VMs of this driver use on this host (detected, never assumed)."""
        ...

    async def start(self, config: VMConfig, placement: Placement | None = None) -> VM:
        """Spawn the VMM, call `placement(pid)`, then run the guest. Returns a RUNNING handle."""
        ...

    async def restore(self, config: VMConfig, snapshot: Path, placement: Placement | None = None) -> VM:
        """Start a VMM from a snapshot written by `VM.save_snapshot`. Returns a RUNNING handle.

        `config.rootfs` must show the snapshot's frozen disk (see `SnapshotInfo.disk`); QEMU checks the backing
        chain and refuses anything else with `StartFailed`.
        """
        ...

    async def adopt(self, run_dir: Path) -> VM:
        """Re-attach to the live VMM whose run directory is `run_dir`."""
        ...
