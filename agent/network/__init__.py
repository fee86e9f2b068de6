"""Per-sandbox networks: a network namespace, a veth pair to the host, a TAP for the VM and nftables rules, all
named and addressed from a slot number (`AddressPlan`; the plan is drawn in `_plan` and docs/host-resources.md).

    plan = AddressPlan()                          # prefix "wrenn", transit 10.201.0.0/16
    slots = SlotAllocator(plan.capacity, path)    # persisted slot -> sandbox id
    net = await NetworkManager(plan).setup(slots.allocate(sandbox_id), egress=Egress.DENIED)
    driver.start(VMConfig(network=net.vm_network, kernel_cmdline=... + net.kernel_args(), ...))
    # the host reaches the guest's envd at net.envd_address, any other guest port at net.address
    await manager.teardown(net.slot); slots.release(net.slot)
    await manager.cleanup_stale(keep=slots.owners())  # at agent start

Errors (tree in `_errors`): `NetworkError` and its kinds; pyroute2 and command failures arrive translated.
"""

from wrenn.agent.network._errors import HostCommandFailed, InvalidSlot, NetworkError, SlotsExhausted
from wrenn.agent.network._manager import Egress, NetworkManager, SandboxNetwork, SlotState, prepare_host
from wrenn.agent.network._plan import (
    DEFAULT_PREFIX,
    DEFAULT_TRANSIT,
    GATEWAY_IP,
    GUEST_IP,
    GUEST_MAC,
    GUEST_PREFIXLEN,
    AddressPlan,
    SlotAddresses,
)
from wrenn.agent.network._slots import SlotAllocator

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_TRANSIT",
    "GATEWAY_IP",
    "GUEST_IP",
    "GUEST_MAC",
    "GUEST_PREFIXLEN",
    "AddressPlan",
    "Egress",
    "HostCommandFailed",
    "InvalidSlot",
    "NetworkError",
    "NetworkManager",
    "SandboxNetwork",
    "SlotAddresses",
    "SlotAllocator",
    "SlotState",
    "SlotsExhausted",
    "prepare_host",
]
