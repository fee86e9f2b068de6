"""Background renewal of a short-lived certificate (the API's 24-hour client certificate, a host's 7-day one).

`CertificateRenewer` is an async context manager that owns one task. On entry it makes sure a valid certificate is
on disk (issuing one if the file is missing or due); the task then waits until the certificate is due — a third
of its lifetime left by default — issues a new one through the injected ``issue`` callable, writes it atomically
and calls ``on_renewed`` (typically `ReloadingClientContext.reload`), so the process never restarts. ``wake()``
makes the task look at the clock now (tests move a fake clock; an operator can force a renewal). The task exits
when the context exits; an error while renewing is logged and retried after ``retry_s``, never swallowed silently
and never fatal to the process that holds the certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from cryptography import x509

from wrenn.provision._tasks import cancel_and_wait
from wrenn.provision.ca._authority import Clock, IssuedCertificate, needs_renewal

__all__ = ["CertificateRenewer"]

_log = logging.getLogger(__name__)

Issue = Callable[[], Awaitable[IssuedCertificate]]


class CertificateRenewer:
    """Keeps ``cert_file``/``key_file`` fresh; ``generation`` counts the certificates it has written."""

    def __init__(
        self,
        *,
        issue: Issue,
        cert_file: Path,
        key_file: Path,
        clock: Clock,
        on_renewed: Callable[[IssuedCertificate], None] | None = None,
        remaining_fraction: float = 1 / 3,
        retry_s: float = 30.0,
    ) -> None:
        self._issue = issue
        self.cert_file = cert_file
        self.key_file = key_file
        self._clock = clock
        self.on_renewed = on_renewed
        self._remaining_fraction = remaining_fraction
        self._retry_s = retry_s
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.generation = 0
        self.serial: int | None = None

    def is_due(self) -> bool:
        if not self.cert_file.exists() or not self.key_file.exists():
            return True
        return needs_renewal(self.cert_file.read_text(), now=self._clock(), remaining_fraction=self._remaining_fraction)

    async def renew(self) -> IssuedCertificate:
        """Issue, write and announce a new certificate now."""
        issued = await self._issue()
        issued.write(self.cert_file, self.key_file)
        self.serial = issued.serial
        if self.on_renewed is not None:
            self.on_renewed(issued)
        async with self._changed:
            self.generation += 1
            self._changed.notify_all()
        _log.info("certificate renewed", extra={"serial": f"{issued.serial:x}", "not_after": str(issued.not_after)})
        return issued

    async def renew_if_due(self) -> bool:
        if not self.is_due():
            return False
        await self.renew()
        return True

    def wake(self) -> None:
        """Look at the clock now instead of at the next scheduled check."""
        self._wake.set()

    async def wait_generation(self, generation: int) -> None:
        """Wait until at least ``generation`` certificates have been written."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.generation >= generation)

    def _seconds_until_due(self) -> float:
        cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        due = cert.not_valid_after_utc - lifetime * self._remaining_fraction
        return max(0.0, (due - self._clock()).total_seconds())

    async def _run(self) -> None:
        while True:
            try:
                await self.renew_if_due()
                delay = self._seconds_until_due()
                if delay == 0:
                    # A certificate that is due the moment it is issued (the issuer's clock lags ours, or the
                    # lifetime is tiny): do not spin; try again later.
                    _log.warning(
                        "freshly issued certificate is already due for renewal; retrying in %ss", self._retry_s
                    )
                    delay = self._retry_s
            except Exception:  # noqa: BLE001 - the loop must outlive a failing issuer; logged with traceback
                _log.exception("certificate renewal failed; retrying in %ss", self._retry_s)
                delay = self._retry_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self._wake.clear()

    async def __aenter__(self) -> Self:
        await self.renew_if_due()
        self.start()
        return self

    def start(self) -> None:
        """Start the background task without the entry's renewal (the caller made sure a certificate is there)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"renew {self.cert_file.name}")

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._task is None:
            return
        await cancel_and_wait(self._task)
        self._task = None
