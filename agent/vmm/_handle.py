"""`ProcessHandle`: what every driver's `VM` handle shares — state, exit watching through a pidfd, kill,
idempotent waits, detaching. Drivers add their control channel (QMP, Firecracker API, the fake's socket)."""

from __future__ import annotations

import asyncio
import signal
from typing import Self

import structlog

from wrenn.agent._tasks import cancel_and_wait
from wrenn.agent.vmm._config import VMConfig
from wrenn.agent.vmm._errors import VMStateError
from wrenn.agent.vmm._interface import EXITED_STATES, VMState
from wrenn.agent.vmm._process import remove_files, send_signal, tail, wait_pid_exit

_log = structlog.get_logger(__name__)


class ProcessHandle:
    """Base of the drivers' VM handles. Owns one task, the exit watcher, which ends when the VMM is gone or when
    the handle is closed; `control_files` (run-dir names) are removed once the VMM is gone."""

    control_files: tuple[str, ...] = ()

    def __init__(self, config: VMConfig, pid: int, state: VMState) -> None:
        self._config = config
        self._pid = pid
        self._state = state
        self._exit_requested = False
        self._detached = False
        self._log = _log.bind(vm_id=config.vm_id, pid=pid)
        self._watch = asyncio.create_task(self._watch_exit(), name=f"vmm-exit-{config.vm_id}")

    @property
    def config(self) -> VMConfig:
        return self._config

    @property
    def state(self) -> VMState:
        return self._state

    @property
    def pid(self) -> int:
        return self._pid

    def _require_attached(self) -> None:
        if self._detached:
            raise VMStateError(self._config.vm_id, "detached (aclose() was called)", ("attached",))

    def _require(self, *states: VMState) -> None:
        self._require_attached()
        if self._state not in states:
            raise VMStateError(self._config.vm_id, self._state.value, tuple(s.value for s in states))

    async def _close_channel(self) -> None:
        """Close the driver's control connection; must not raise."""

    async def _watch_exit(self) -> None:
        await wait_pid_exit(self._pid)
        self._state = VMState.STOPPED if self._exit_requested else VMState.CRASHED
        remove_files(*(self._config.run_dir / name for name in self.control_files))
        await self._close_channel()
        if self._state is VMState.CRASHED:
            self._log.warning("VMM exited unasked", console=tail(self._config.run_dir / "console.log", 500))

    async def _wait_gone(self, limit: float) -> bool:
        """Wait up to `limit` s for the VMM to be gone; False on timeout."""
        try:
            async with asyncio.timeout(limit):
                await asyncio.shield(self._watch)
        except TimeoutError:
            return False
        return True

    async def wait_exited(self) -> VMState:
        self._require_attached()
        await asyncio.shield(self._watch)
        return self._state

    async def kill(self) -> None:
        if self._state in EXITED_STATES:
            return
        self._require_attached()
        self._exit_requested = True
        send_signal(self._pid, signal.SIGKILL)
        if not await self._wait_gone(10):
            raise TimeoutError(f"VMM {self._pid} survived SIGKILL for 10 s")

    async def aclose(self) -> None:
        """Detach: stop watching and close the control channel. The VMM keeps running; this handle refuses
        further calls (`VMStateError`), `adopt` makes a new one."""
        self._detached = True
        if not self._watch.done():
            await cancel_and_wait(self._watch)
        await self._close_channel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
