"""Real namespaces, links and nftables tables (root): setup and teardown leave nothing, slots do not collide or
reach each other, setup repairs half-made slots, stale cleanup removes planted leftovers."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from tests.agent.network.conftest import host_names, sh
from wrenn.agent.network import Egress, HostCommandFailed, NetworkManager, SlotAddresses

pytestmark = pytest.mark.root

_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
except OSError as exc:
    print(type(exc).__name__, exc)
    sys.exit(1)
"""

_LISTEN = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 0))
s.listen(8)
print(s.getsockname()[1], flush=True)
while True:
    s.accept()[0].close()
"""


async def connects(netns: str | None, host: str, port: int) -> bool:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    proc = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-c", _CONNECT, host, str(port), stdout=asyncio.subprocess.DEVNULL
    )
    return await proc.wait() == 0


@pytest.fixture
async def listener_factory() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for proc in procs:
        proc.kill()
        await proc.wait()


async def listen(procs: list[asyncio.subprocess.Process], netns: str | None) -> int:
    """A TCP server accepting on 0.0.0.0 (inside `netns`, or in the root namespace); returns its port."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    proc = await asyncio.create_subprocess_exec(*prefix, sys.executable, "-c", _LISTEN, stdout=asyncio.subprocess.PIPE)
    procs.append(proc)
    assert proc.stdout is not None
    return int(await asyncio.wait_for(proc.stdout.readline(), 30))


def ns_out(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], check=True, capture_output=True, text=True).stdout


async def test_setup_and_teardown_leave_nothing(manager: NetworkManager) -> None:
    prefix = manager.plan.prefix
    assert host_names(prefix) == {"netns": set(), "links": set(), "tables": set()}
    net = await manager.setup(4)
    names = host_names(prefix)
    assert names == {"netns": {f"{prefix}-ns-4"}, "links": {f"{prefix}-v4"}, "tables": {f"{prefix}-s4"}}
    assert net.vm_network.netns == f"{prefix}-ns-4"
    assert net.vm_network.tap == "tap0"
    links = ns_out(net.netns, "ip", "-o", "addr", "show")
    assert f"{net.address}/30" in links
    assert "169.254.0.22/30" in links
    assert ns_out(net.netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    assert ns_out(net.netns, "ip", "route", "show", "default") == ""  # egress denied: no way out
    await manager.teardown(4)
    assert host_names(prefix) == {"netns": set(), "links": set(), "tables": set()}
    await manager.teardown(4)  # idempotent


async def test_setup_is_idempotent_and_repairs(manager: NetworkManager) -> None:
    net = await manager.setup(1)
    rules = ns_out(net.netns, "nft", "list", "ruleset")
    again = await manager.setup(1)
    assert again == net
    assert ns_out(net.netns, "nft", "list", "ruleset") == rules
    # An agent killed mid-create: the TAP and the host table are missing, the host link is down.
    await sh("ip", "-n", net.netns, "link", "del", "tap0")
    await sh("nft", "delete", "table", "ip", f"{manager.plan.prefix}-s1")
    assert not (await manager.inspect(1)).complete
    await manager.setup(1)
    assert (await manager.inspect(1)).complete
    assert ns_out(net.netns, "nft", "list", "ruleset") == rules


async def test_two_slots_do_not_collide_or_reach_each_other(
    manager: NetworkManager, listener_factory: list[asyncio.subprocess.Process]
) -> None:
    a, b = await manager.setup(0), await manager.setup(1)
    assert len({a.address, b.address, a.netns, b.netns, a.host_link, b.host_link}) == 6
    port = await listen(listener_factory, b.netns)
    assert await connects(b.netns, b.address, port)  # the server answers inside B
    assert not await connects(a.netns, b.address, port)  # A has no route to B
    assert not await connects(a.netns, manager.addresses(1).host_ip, port)
    # The guest range: from A, 169.254.0.0/30 is A's own TAP side; B's server bound there is out of reach.
    assert not await connects(a.netns, "169.254.0.22", port)


async def test_namespace_cannot_reach_host_listeners(
    manager: NetworkManager, listener_factory: list[asyncio.subprocess.Process]
) -> None:
    net = await manager.setup(2)
    port = await listen(listener_factory, None)
    assert await connects(None, "127.0.0.1", port)
    assert await connects(None, manager.addresses(2).host_ip, port)  # the host itself can
    assert not await connects(net.netns, manager.addresses(2).host_ip, port)  # input from the slot's link drops


async def test_host_reaches_any_port_through_dnat(manager: NetworkManager) -> None:
    """Without a VM only the rule is checked, and that nothing answers in the guest's place (the namespace itself
    listens nowhere); tests/agent/network/test_vm.py reaches a real guest through it."""
    net = await manager.setup(3)
    with socket.socket() as s:
        s.settimeout(1)
        with pytest.raises(OSError):  # noqa: PT011 - refused or timed out, either way nothing answered
            s.connect((net.address, 8080))
    rules = ns_out(net.netns, "nft", "list", "chain", "ip", f"{manager.plan.prefix}-s3", "prerouting")
    assert f"ip daddr {net.address} dnat to 169.254.0.21" in rules


async def test_allowed_egress_sets_route_and_masquerade(manager: NetworkManager) -> None:
    """Only the rules are checked: tests never send traffic off the host."""
    net = await manager.setup(5, egress=Egress.ALLOWED)
    assert manager.addresses(5).host_ip in ns_out(net.netns, "ip", "route", "show", "default")
    assert "masquerade" in ns_out(net.netns, "nft", "list", "ruleset")
    host = await sh("nft", "list", "table", "ip", f"{manager.plan.prefix}-s5")
    assert f"ip saddr {net.address}" in host
    assert "masquerade" in host
    denied = await manager.setup(5, egress=Egress.DENIED)  # switching back removes the way out
    assert ns_out(denied.netns, "ip", "route", "show", "default") == ""
    assert "masquerade" not in ns_out(denied.netns, "nft", "list", "ruleset")


async def test_set_egress_switches_a_set_up_slot(manager: NetworkManager) -> None:
    """What a create does to a slot the network pool prepared (egress denied): allow, then deny again. Rules and
    route only: tests never send traffic off the host."""
    prepared = await manager.setup(6)
    assert ns_out(prepared.netns, "ip", "route", "show", "default") == ""
    allowed = await manager.set_egress(6, Egress.ALLOWED)
    assert allowed == manager.network(6, Egress.ALLOWED)
    assert allowed.envd_address == prepared.envd_address
    assert manager.addresses(6).host_ip in ns_out(allowed.netns, "ip", "route", "show", "default")
    assert "masquerade" in ns_out(allowed.netns, "nft", "list", "ruleset")
    host = await sh("nft", "list", "table", "ip", f"{manager.plan.prefix}-s6")
    assert f"ip saddr {allowed.address}" in host
    assert "masquerade" in host
    assert (await manager.inspect(6)).complete
    await manager.set_egress(6, Egress.DENIED)
    assert ns_out(allowed.netns, "ip", "route", "show", "default") == ""
    assert "masquerade" not in ns_out(allowed.netns, "nft", "list", "ruleset")
    assert "masquerade" not in await sh("nft", "list", "table", "ip", f"{manager.plan.prefix}-s6")
    await manager.teardown(6)
    assert (await manager.inspect(6)).empty


async def test_cleanup_stale_removes_planted_leftovers(manager: NetworkManager) -> None:
    prefix = manager.plan.prefix
    await manager.setup(1)
    await sh("ip", "netns", "add", f"{prefix}-ns-7")
    await sh("ip", "link", "add", f"{prefix}-v8", "type", "veth", "peer", "name", f"{prefix}-p8")
    await sh("nft", "add", "table", "ip", f"{prefix}-s9")
    await sh("ip", "netns", "add", f"{prefix}-other")  # not one of ours: kept
    try:
        removed = await manager.cleanup_stale(keep={1})
        assert removed == [7, 8, 9]
        assert host_names(prefix) == {
            "netns": {f"{prefix}-ns-1", f"{prefix}-other"},
            "links": {f"{prefix}-v1"},
            "tables": {f"{prefix}-s1"},
        }
        assert (await manager.inspect(1)).complete
    finally:
        await sh("ip", "netns", "del", f"{prefix}-other", check=False)


async def test_concurrent_setups_and_cycles_leak_nothing(manager: NetworkManager) -> None:
    """Ten slots set up at once (the agent's ten concurrent creates), then 20 more set-up/tear-down cycles: every
    slot is complete while up, and nothing of the prefix is left at the end (namespaces, links, tables)."""
    prefix = manager.plan.prefix
    before = host_names(prefix)
    fds = len(os.listdir("/proc/self/fd"))
    nets = await asyncio.gather(*(manager.setup(slot) for slot in range(10)))
    assert len({n.address for n in nets}) == 10
    states = await asyncio.gather(*(manager.inspect(slot) for slot in range(10)))
    assert all(state.complete for state in states)
    assert len(host_names(prefix)["netns"]) == 10
    await asyncio.gather(*(manager.teardown(slot) for slot in range(10)))
    for cycle in range(20):
        await manager.setup(cycle % 3)
        await manager.teardown(cycle % 3)
    assert host_names(prefix) == before
    assert len(os.listdir("/proc/self/fd")) == fds  # netlink sockets and namespace fds all closed


async def _stand_in_guest(manager: NetworkManager, slot: int) -> str:
    """Replace the slot's TAP by a veth pair named ``tap0`` whose other end is ``eth0`` in a namespace of its own,
    configured like the guest (169.254.0.21/30, gateway .22): a guest without a VM, for traffic tests. Returns the
    stand-in guest's namespace."""
    ns, guest_ns = manager.addresses(slot).netns, f"{manager.plan.prefix}-g{slot}"
    await sh("ip", "netns", "add", guest_ns)
    await sh("ip", "-n", ns, "link", "del", "tap0")
    await sh("ip", "-n", ns, "link", "add", "tap0", "type", "veth", "peer", "name", "eth0", "netns", guest_ns)
    await sh("ip", "-n", ns, "addr", "add", "169.254.0.22/30", "dev", "tap0")
    await sh("ip", "-n", ns, "link", "set", "tap0", "up")
    await sh("ip", "-n", guest_ns, "addr", "add", "169.254.0.21/30", "dev", "eth0")
    for dev in ("lo", "eth0"):
        await sh("ip", "-n", guest_ns, "link", "set", dev, "up")
    await sh("ip", "-n", guest_ns, "route", "add", "default", "via", "169.254.0.22")
    return guest_ns


async def test_host_reaches_any_guest_port_and_guest_cannot_reach_out(
    manager: NetworkManager, listener_factory: list[asyncio.subprocess.Process]
) -> None:
    a, b = await manager.setup(0), await manager.setup(1)
    guest_a = await _stand_in_guest(manager, 0)
    try:
        guest_port = await listen(listener_factory, guest_a)
        assert await connects(None, a.address, guest_port)  # host -> slot address -> DNAT -> guest, any port
        assert not await connects(None, b.address, guest_port)  # B's address leads to B's (absent) guest only
        host_port = await listen(listener_factory, None)
        b_port = await listen(listener_factory, b.netns)
        ns_port = await listen(listener_factory, a.netns)
        assert not await connects(guest_a, "169.254.0.22", ns_port)  # not its own namespace
        assert not await connects(guest_a, manager.addresses(0).host_ip, host_port)  # not the host
        assert not await connects(guest_a, a.address, host_port)  # not the namespace itself
        assert not await connects(guest_a, b.address, b_port)  # not another sandbox
        assert not await connects(guest_a, manager.addresses(1).host_ip, host_port)
        assert await connects(b.netns, b.address, b_port)  # (B's listener does answer where it may)
        # Control: without the namespace's input chain the guest does reach the namespace's listener, so the
        # refusals above come from the rules, not from a broken stand-in (this traffic never leaves the namespace).
        await sh("ip", "netns", "exec", a.netns, "nft", "delete", "chain", "ip", f"{manager.plan.prefix}-s0", "input")
        assert await connects(guest_a, "169.254.0.22", ns_port)
    finally:
        await sh("ip", "netns", "del", guest_a, check=False)


async def test_failed_setup_rolls_back_only_what_it_made(manager: NetworkManager) -> None:
    """A step failing (here: an nft table name the kernel refuses, after the links exist) removes a fresh slot
    completely, but leaves an existing slot — maybe a running sandbox's — in place."""
    prefix = manager.plan.prefix
    await manager.setup(2)
    broken = NetworkManager(dataclasses.replace(manager.plan))
    original = broken.plan.slot

    def bad_slot(slot: int) -> SlotAddresses:
        return dataclasses.replace(original(slot), nft_table="bad table name")

    object.__setattr__(broken.plan, "slot", bad_slot)
    with pytest.raises(HostCommandFailed):
        await broken.setup(2)
    assert (await manager.inspect(2)).complete  # existing: untouched
    with pytest.raises(HostCommandFailed):
        await broken.setup(3)
    assert f"{prefix}-ns-3" not in host_names(prefix)["netns"]
    assert f"{prefix}-v3" not in host_names(prefix)["links"]
