"""Errors of the per-sandbox network, each also one of Wrenn's error kinds (`wrenn.protocol.errors`).

    NetworkError            (WrennError, 500)   root of every network error
    ├── SlotsExhausted      (Unavailable, 503)  every slot of the address plan is taken
    ├── InvalidSlot         (Invalid, 400)      a slot number outside the address plan
    └── HostCommandFailed   (Unavailable, 503)  netlink, ``ip`` or ``nft`` refused a step; carries the step

Netlink errors (`pyroute2.NetlinkError`), ``OSError`` and failed commands are translated where they happen with
``raise ... from``, so the original stays attached as ``__cause__``.
"""

from __future__ import annotations

from wrenn.protocol.errors import Invalid, Unavailable, WrennError


class NetworkError(WrennError):
    """Root of every network error."""


class SlotsExhausted(NetworkError, Unavailable):
    """No free slot is left in the address plan."""


class InvalidSlot(NetworkError, Invalid):
    """A slot number outside the address plan."""


class HostCommandFailed(NetworkError, Unavailable):
    """A host step (netlink call, ``ip``, ``nft``, sysctl) failed; `step` names it, `detail` says what it said."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step} failed: {detail}")
        self.step = step
        self.detail = detail
