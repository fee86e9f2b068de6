"""Address plan, slot allocator and nft rendering: pure logic, no privileges."""

from __future__ import annotations

from pathlib import Path

import pytest

from wrenn.agent.network import AddressPlan, InvalidSlot, SlotAllocator, SlotsExhausted
from wrenn.agent.network._nft import host_rules, namespace_rules


def test_slot_addresses_are_deterministic_and_disjoint() -> None:
    plan = AddressPlan()
    a, b = plan.slot(0), plan.slot(1)
    assert (a.netns, a.host_link, a.host_ip, a.address) == ("wrenn-ns-0", "wrenn-v0", "10.201.0.1", "10.201.0.2")
    assert (b.host_ip, b.address) == ("10.201.0.5", "10.201.0.6")
    assert plan.slot(16383).address == "10.201.255.254"
    assert plan.slot(7) == AddressPlan().slot(7)
    assert len({plan.slot(s).address for s in range(500)}) == 500


@pytest.mark.parametrize(
    ("kind", "name", "slot"),
    [
        ("netns", "wrenn-ns-12", 12),
        ("link", "wrenn-v3", 3),
        ("table", "wrenn-s0", 0),
        ("netns", "wrenn-ns-x", None),
        ("link", "wrennh3", None),
        ("link", "wrenn-v3x", None),
        ("netns", "other-ns-1", None),
    ],
)
def test_parse_names(kind: str, name: str, slot: int | None) -> None:
    assert AddressPlan().parse(kind, name) == slot


@pytest.mark.parametrize("slot", [-1, 16384])
def test_slot_outside_plan(slot: int) -> None:
    with pytest.raises(InvalidSlot):
        AddressPlan().slot(slot)


@pytest.mark.parametrize("prefix", ["", "Wrenn", "toolongprefix", "1abc", "a-b"])
def test_bad_prefix(prefix: str) -> None:
    with pytest.raises(InvalidSlot):
        AddressPlan(prefix=prefix)


def test_link_names_fit_ifnamsiz() -> None:
    plan = AddressPlan(prefix="abcdefgh", transit="10.0.0.0/8")
    assert len(plan.slot(plan.capacity - 1).host_link) <= 15


def test_allocator_persists_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "slots.json"
    slots = SlotAllocator(3, path)
    assert slots.allocate("a") == 0
    assert slots.allocate("b") == 1
    assert slots.allocate("a") == 0
    slots.release(0)
    slots.release(0)
    again = SlotAllocator(3, path)
    assert again.owners() == {1: "b"}
    assert again.allocate("c") == 0
    assert again.allocate("d") == 2
    with pytest.raises(SlotsExhausted):
        again.allocate("e")


def test_denied_egress_rules_have_no_route_out() -> None:
    plan = AddressPlan()
    addrs = plan.slot(2)
    ns = namespace_rules(addrs, plan, allow_egress=False)
    assert f"ip daddr {addrs.address} dnat to 169.254.0.21" in ns
    assert "policy drop" in ns
    assert "masquerade" not in ns
    assert 'iifname "tap0" oifname "veth0"' not in ns
    host = host_rules(addrs, plan, allow_egress=False)
    assert 'iifname "wrenn-v2" drop' in host
    assert "masquerade" not in host


def test_allowed_egress_rules_masquerade_but_not_to_other_slots() -> None:
    plan = AddressPlan()
    addrs = plan.slot(2)
    ns = namespace_rules(addrs, plan, allow_egress=True)
    assert 'oifname "veth0" ip saddr 169.254.0.21 masquerade' in ns
    assert f"ip daddr != {plan.transit} accept" in ns
    host = host_rules(addrs, plan, allow_egress=True)
    assert f'iifname "wrenn-v2" ip daddr {plan.transit} drop' in host
    assert f'ip saddr {addrs.address} oifname != "wrenn-v2" masquerade' in host
