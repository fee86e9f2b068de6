"""`NetworkManager`: sets up and tears down the network of one slot, and removes what no slot should have.

Every step measures, acts, verifies: `setup` on a slot that is fully set up changes nothing, on a half-set-up slot
(an agent killed mid-create) completes it, and checks its result (links read back over netlink, each nft table
listed back by its own transaction). `teardown` of a slot that has nothing left is a no-op. The blocking work runs
in a worker thread, one slot at a time per call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

import structlog

from wrenn.agent._netns import NETNS_DIR
from wrenn.agent.network import _host, _nft
from wrenn.agent.network._errors import HostCommandFailed
from wrenn.agent.network._plan import (
    GATEWAY_IP,
    GUEST_IP,
    GUEST_MAC,
    GUEST_PREFIXLEN,
    PEER,
    TAP,
    AddressPlan,
    SlotAddresses,
)
from wrenn.agent.vmm import ENVD_PORT, TapNetwork

_log = structlog.get_logger(__name__)


class Egress(StrEnum):
    """Whether the guest may open connections beyond its namespace."""

    DENIED = "denied"
    ALLOWED = "allowed"
    """Masqueraded out through the host; needs ``net.ipv4.ip_forward=1`` on the host (`prepare_host`)."""


@dataclass(frozen=True)
class SandboxNetwork:
    """A slot's network, set up: what the VMM attaches to and where the host reaches the guest."""

    slot: int
    netns: str
    host_link: str
    address: str
    """Host-reachable address of the guest: every TCP/UDP port here is forwarded to the guest's port."""
    egress: Egress
    tap: str = TAP
    mac: str = GUEST_MAC
    guest_ip: str = GUEST_IP
    gateway_ip: str = GATEWAY_IP

    @property
    def vm_network(self) -> TapNetwork:
        return TapNetwork(netns=self.netns, tap=self.tap, mac=self.mac)

    @property
    def envd_address(self) -> str:
        return f"{self.address}:{ENVD_PORT}"

    def kernel_args(self) -> str:
        """The guest side of the contract, for the kernel command line (read by the image's init)."""
        return f"wrenn.ip={self.guest_ip}/{GUEST_PREFIXLEN} wrenn.gw={self.gateway_ip}"


@dataclass(frozen=True)
class SlotState:
    """What exists of one slot on the host (measured, not remembered)."""

    netns: bool
    host_link: bool
    peer: bool
    tap: bool
    namespace_table: bool
    host_table: bool

    @property
    def complete(self) -> bool:
        return all((self.netns, self.host_link, self.peer, self.tap, self.namespace_table, self.host_table))

    @property
    def empty(self) -> bool:
        return not any((self.netns, self.host_link, self.namespace_table, self.host_table))


def prepare_host(*, allow_egress: bool) -> None:
    """Host-wide settings: with egress allowed anywhere, the host must forward (``net.ipv4.ip_forward=1``).
    Nothing is needed for denied egress — the host only talks to the namespaces' veth addresses."""
    if allow_egress:
        _host.sysctl("net/ipv4/ip_forward", "1")


class NetworkManager:
    """Per-slot namespaces, veth pairs, TAPs and nftables tables under one `AddressPlan`."""

    def __init__(self, plan: AddressPlan | None = None) -> None:
        self.plan = plan or AddressPlan()

    def addresses(self, slot: int) -> SlotAddresses:
        return self.plan.slot(slot)

    async def setup(self, slot: int, *, egress: Egress = Egress.DENIED) -> SandboxNetwork:
        """Make slot `slot`'s network (or repair it) and verify it. When a step fails on a slot that had nothing
        before, what was made is rolled back; a slot that existed (a repair, a live sandbox) is left as it is."""
        addrs = self.plan.slot(slot)
        was_empty = (await self.inspect(slot)).empty
        try:
            await asyncio.to_thread(self._setup, addrs, egress)
        except Exception:
            if was_empty:
                await asyncio.shield(self.teardown(slot))
            raise
        return self.network(slot, egress)

    def network(self, slot: int, egress: Egress = Egress.DENIED) -> SandboxNetwork:
        """Slot `slot`'s network as `setup` returns it, without touching the host (for a slot known to be set up)."""
        addrs = self.plan.slot(slot)
        return SandboxNetwork(
            slot=slot, netns=addrs.netns, host_link=addrs.host_link, address=addrs.address, egress=egress
        )

    async def set_egress(self, slot: int, egress: Egress) -> SandboxNetwork:
        """Switch a set-up slot's egress (default route and both nft tables, each table replaced in one
        transaction and listed back); cheaper than `setup`, which first measures and repairs every link."""
        addrs = self.plan.slot(slot)
        await asyncio.to_thread(self._apply_egress, addrs, egress is Egress.ALLOWED)
        return self.network(slot, egress)

    async def teardown(self, slot: int) -> None:
        """Remove slot `slot`'s network: host link, host table, namespace (with everything in it). Idempotent."""
        addrs = self.plan.slot(slot)
        await asyncio.to_thread(self._teardown, addrs)

    async def inspect(self, slot: int) -> SlotState:
        return await asyncio.to_thread(self._inspect, self.plan.slot(slot))

    async def present_slots(self) -> set[int]:
        """Slots of this plan with anything on the host (namespace, host link or host table)."""
        return await asyncio.to_thread(self._present_slots)

    async def cleanup_stale(self, keep: Collection[int]) -> list[int]:
        """Tear down every slot of this plan's prefix that is not in `keep`; returns the slots removed."""
        stale = sorted((await self.present_slots()) - set(keep))
        for slot in stale:
            _log.info("removing stale sandbox network", slot=slot, netns=self.plan.slot(slot).netns)
            await self.teardown(slot)
        return stale

    # ---- blocking parts (worker thread) --------------------------------------------------------------------------

    def _setup(self, addrs: SlotAddresses, egress: Egress) -> None:
        allow = egress is Egress.ALLOWED  # the host must forward for it: `prepare_host`, once at agent start
        if addrs.netns not in _host.list_netns():
            _host.run(["ip", "netns", "add", addrs.netns])
        with _host.in_netns(addrs.netns), _host.netlink() as ns:
            peer_present = _host.link_index(ns, PEER) is not None
        with _host.netlink() as ipr:
            host_index = _host.link_index(ipr, addrs.host_link)
            if host_index is not None and not peer_present:  # a pair whose other end is gone or elsewhere
                ipr.link("del", index=host_index)
                host_index = None
            if host_index is None:
                ipr.link(
                    "add",
                    ifname=addrs.host_link,
                    kind="veth",
                    peer={"ifname": PEER, "net_ns_fd": str(NETNS_DIR / addrs.netns)},
                )
                host_index = _host.link_index(ipr, addrs.host_link)
                if host_index is None:
                    raise HostCommandFailed(f"creating {addrs.host_link}", "link missing after creation")
            _host.ensure_address(ipr, host_index, addrs.host_ip, 30)
            _host.set_up(ipr, host_index)
        with _host.in_netns(addrs.netns):
            with _host.netlink() as ns:
                if _host.link_index(ns, TAP) is None:
                    ns.link("add", ifname=TAP, kind="tuntap", mode="tap")
                indexes = {name: _host.link_index(ns, name) for name in ("lo", PEER, TAP)}
                missing = [name for name, index in indexes.items() if index is None]
                if missing:
                    raise HostCommandFailed(f"setting up {addrs.netns}", f"links missing: {missing}")
                _host.ensure_address(ns, indexes[PEER] or 0, addrs.address, 30)
                _host.ensure_address(ns, indexes[TAP] or 0, GATEWAY_IP, GUEST_PREFIXLEN)
                for index in indexes.values():
                    _host.set_up(ns, index or 0)
            _host.sysctl("net/ipv4/ip_forward", "1")  # inside the namespace: it routes veth0 <-> tap0
        self._apply_egress(addrs, allow)
        # Verified: links above (netlink, after creating them), tables by the transactions listing them back.

    def _apply_egress(self, addrs: SlotAddresses, allow: bool) -> None:
        """The namespace's default route (only with egress allowed) and both nft tables of the slot."""
        with _host.in_netns(addrs.netns):
            with _host.netlink() as ns:
                routes = ns.get_default_routes(family=2)
                if allow and not routes:
                    ns.route("add", dst="0.0.0.0/0", gateway=addrs.host_ip)
                elif not allow and routes:
                    ns.route("del", dst="0.0.0.0/0")
            in_ns = _host.apply_nft(_nft.namespace_rules(addrs, self.plan, allow_egress=allow), addrs.nft_table)
        try:
            in_root = _host.apply_nft(_nft.host_rules(addrs, self.plan, allow_egress=allow), addrs.nft_table)
        except Exception:
            in_ns.kill()
            in_ns.communicate()
            raise
        failures: list[HostCommandFailed] = []
        for proc, where in ((in_ns, addrs.netns), (in_root, "the root namespace")):
            try:  # wait for both, even when the first failed: no process or pipe left behind
                _host.finish_nft(proc, addrs.nft_table, where)
            except HostCommandFailed as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

    def _teardown(self, addrs: SlotAddresses) -> None:
        with _host.netlink() as ipr:
            index = _host.link_index(ipr, addrs.host_link)
            if index is not None:
                ipr.link("del", index=index)
        if addrs.nft_table in _host.nft_tables():
            _host.run(["nft", "-f", "-"], stdin=_nft.delete_table(addrs.nft_table))
        if addrs.netns in _host.list_netns():
            _host.run(["ip", "netns", "del", addrs.netns])
        state = self._inspect(addrs)
        if not state.empty:
            raise HostCommandFailed(f"removing {addrs.netns}", f"left behind: {state}")

    def _inspect(self, addrs: SlotAddresses) -> SlotState:
        with _host.netlink() as ipr:
            host_link = _host.link_index(ipr, addrs.host_link) is not None
        host_table = addrs.nft_table in _host.nft_tables()
        if addrs.netns not in _host.list_netns():
            return SlotState(False, host_link, False, False, False, host_table)
        with _host.in_netns(addrs.netns):
            with _host.netlink() as ns:
                names = _host.link_names(ns)
            ns_table = addrs.nft_table in _host.nft_tables()
        return SlotState(True, host_link, PEER in names, TAP in names, ns_table, host_table)

    def _present_slots(self) -> set[int]:
        found = {self.plan.parse("netns", name) for name in _host.list_netns()}
        with _host.netlink() as ipr:
            found |= {self.plan.parse("link", name) for name in _host.link_names(ipr)}
        found |= {self.plan.parse("table", name) for name in _host.nft_tables()}
        return {slot for slot in found if slot is not None}
