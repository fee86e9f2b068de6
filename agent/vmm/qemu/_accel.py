"""Accelerator detection for QEMU: a short KVM boot probe, cached per host, with a loud TCG fallback.

``/dev/kvm`` existing proves nothing (on this project's own machines it is a paravirtual nested layer that crawls
through Debian kernels and then dies), so KVM counts as usable only when the real guest kernel, booted under
``accel=kvm`` without a root filesystem, reaches its "Kernel panic - not syncing: VFS" marker (the end of kernel
init) within the timeout. The result is cached in ``<data_dir>/accel-<key>.json``, keyed by the QEMU version, the
probe kernel's digest and the host kernel release, so a host probes once per combination.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict

from wrenn.agent.vmm._process import kill_and_wait
from wrenn.protocol.agent import Accelerator

_log = structlog.get_logger(__name__)

PANIC_MARKER = b"Kernel panic"


class AcceleratorReport(BaseModel):
    """What detection found and why; the agent reports it as-is."""

    model_config = ConfigDict(frozen=True)

    accelerator: Accelerator
    reason: str
    qemu_version: str
    probe_seconds: float | None = None


async def qemu_version(binary: str) -> str:
    """First line of ``qemu-system-x86_64 --version``."""
    proc = await asyncio.create_subprocess_exec(
        binary, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    return out.decode().splitlines()[0].strip() if out else "unknown"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


async def _boot_probe(binary: str, kernel: Path, limit: float) -> tuple[bool, str, float]:
    """Boot `kernel` under KVM with no root fs; True when it reaches the panic marker within `limit`."""
    with tempfile.TemporaryDirectory(prefix="wrenn-kvm-probe-") as tmp:
        console = Path(tmp) / "console.log"
        argv = [
            binary,
            *("-M", "microvm,accel=kvm,acpi=off", "-cpu", "host", "-m", "128M", "-smp", "1"),
            *("-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"),
            *("-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 reboot=t root=/dev/wrenn-none"),
            *("-serial", f"file:{console}"),
        ]
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        try:
            async with asyncio.timeout(limit):
                _, err = await proc.communicate()
        except TimeoutError:
            await kill_and_wait(proc.pid)
            await proc.wait()
            return False, f"KVM probe boot did not finish within {limit:.0f} s", time.monotonic() - started
        elapsed = time.monotonic() - started
        output = console.read_bytes() if console.exists() else b""
        if PANIC_MARKER in output:
            return True, f"KVM probe boot reached kernel init end in {elapsed:.2f} s", elapsed
        detail = (err.decode(errors="replace").strip() or output[-300:].decode(errors="replace")).splitlines()
        return False, f"KVM probe boot failed (exit {proc.returncode}): {' | '.join(detail[-3:])}", elapsed


class AcceleratorDetector:
    """Detects (once per host and key) whether QEMU can use KVM; otherwise TCG, logged loudly."""

    def __init__(
        self,
        *,
        binary: str,
        cache_dir: Path,
        kvm_device: Path = Path("/dev/kvm"),
        timeout: float = 15.0,
    ) -> None:
        self._binary = binary
        self._cache_dir = cache_dir
        self._kvm_device = kvm_device
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self.probes_run = 0

    async def detect(self, kernel: Path) -> AcceleratorReport:
        async with self._lock:
            version = await qemu_version(self._binary)
            key = hashlib.sha256(
                f"{version}\0{_digest(kernel)}\0{os.uname().release}\0{self._kvm_device}".encode()
            ).hexdigest()[:16]
            cache = self._cache_dir / f"accel-{key}.json"
            try:
                report = AcceleratorReport.model_validate_json(cache.read_text())
            except (FileNotFoundError, ValueError):
                report = await self._probe(kernel, version)
                self._cache_dir.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(".tmp")
                tmp.write_text(report.model_dump_json())
                tmp.replace(cache)
            if report.accelerator is Accelerator.TCG:
                # Every detection says it, cached or not: an agent on TCG must never look like a KVM host.
                _log.warning(
                    "KVM NOT USABLE: running guests under TCG software emulation, for development and CI only",
                    reason=report.reason,
                    qemu=version,
                )
            return report

    async def _probe(self, kernel: Path, version: str) -> AcceleratorReport:
        if not self._kvm_device.exists():
            return AcceleratorReport(
                accelerator=Accelerator.TCG, reason=f"{self._kvm_device} is missing", qemu_version=version
            )
        if not os.access(self._kvm_device, os.R_OK | os.W_OK):
            return AcceleratorReport(
                accelerator=Accelerator.TCG, reason=f"{self._kvm_device} is not read-writable", qemu_version=version
            )
        self.probes_run += 1
        ok, reason, seconds = await _boot_probe(self._binary, kernel, self._timeout)
        accel = Accelerator.KVM if ok else Accelerator.TCG
        return AcceleratorReport(accelerator=accel, reason=reason, qemu_version=version, probe_seconds=seconds)
