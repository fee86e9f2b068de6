"""The address plan: every name and address of a sandbox's network follows from its slot number alone.

Per slot ``s`` with prefix ``p`` (``wrenn`` by default) and transit network ``T`` (10.201.0.0/16 by default)::

    root namespace                         namespace p-ns-<s>                               guest
    p-v<s>  T+4s+1/30  ═══ veth ═══  veth0  T+4s+2/30   ── DNAT ──  tap0 169.254.0.22/30  ──  eth0 169.254.0.21/30

The guest side is the same in every namespace, so snapshot clones (same IP and MAC) work anywhere; the host reaches
a sandbox's guest, on any port, at the namespace's veth address ``T+4s+2`` (`SlotAddresses.address`). Slot 0 is
usable; the plan holds ``|T| / 4`` slots (16384 for a /16). Link names fit IFNAMSIZ (15) for prefixes of up to
8 characters and slots of up to 5 digits.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from wrenn.agent.network._errors import InvalidSlot

GUEST_IP = "169.254.0.21"
GATEWAY_IP = "169.254.0.22"
GUEST_PREFIXLEN = 30
GUEST_MAC = "02:fc:00:00:00:02"
TAP = "tap0"
PEER = "veth0"
DEFAULT_PREFIX = "wrenn"
DEFAULT_TRANSIT = "10.201.0.0/16"


@dataclass(frozen=True)
class SlotAddresses:
    """Names and addresses of one slot."""

    slot: int
    netns: str
    host_link: str
    host_ip: str
    address: str
    """The namespace's veth address: where the host reaches the guest (DNAT to `GUEST_IP`)."""
    nft_table: str
    """Name of the slot's nftables table, both inside the namespace and in the root namespace."""


@dataclass(frozen=True)
class AddressPlan:
    """Maps slots to names and addresses under one `prefix` and transit network."""

    prefix: str = DEFAULT_PREFIX
    transit: str = DEFAULT_TRANSIT

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", self.prefix):
            raise InvalidSlot(f"network prefix {self.prefix!r}: 1-8 lowercase letters or digits, a letter first")
        net = ipaddress.ip_network(self.transit)
        if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen > 28:
            raise InvalidSlot(f"transit network {self.transit!r}: an IPv4 network of /28 or larger")

    @property
    def network(self) -> ipaddress.IPv4Network:
        net = ipaddress.ip_network(self.transit)
        assert isinstance(net, ipaddress.IPv4Network)
        return net

    @property
    def capacity(self) -> int:
        return min(self.network.num_addresses // 4, 100_000)

    def slot(self, slot: int) -> SlotAddresses:
        if not 0 <= slot < self.capacity:
            raise InvalidSlot(f"slot {slot} outside 0..{self.capacity - 1} of {self.transit}")
        base = self.network.network_address + 4 * slot
        return SlotAddresses(
            slot=slot,
            netns=f"{self.prefix}-ns-{slot}",
            host_link=f"{self.prefix}-v{slot}",
            host_ip=str(base + 1),
            address=str(base + 2),
            nft_table=f"{self.prefix}-s{slot}",
        )

    def parse(self, kind: str, name: str) -> int | None:
        """The slot a namespace (``netns``), host link (``link``) or nft table (``table``) name belongs to, or None
        when the name is not one of this plan's."""
        infix = {"netns": "-ns-", "link": "-v", "table": "-s"}[kind]
        match = re.fullmatch(rf"{re.escape(self.prefix)}{infix}(\d{{1,5}})", name)
        return int(match.group(1)) if match else None
