"""nftables rules of one slot, rendered as one ``nft -f`` transaction each.

Inside the namespace (table ``ip <prefix>-s<slot>``): DNAT of everything arriving on ``veth0`` for the namespace's
address to the guest (any port); forward policy drop except replies, that inbound traffic, and — with egress
allowed — the guest's own traffic out of ``veth0`` (masqueraded to the namespace's address, never to another
slot's transit range); input from ``tap0`` dropped except replies (the guest cannot talk to the namespace).

In the root namespace (same table name): traffic from the slot's host link to the host itself is dropped except
replies (the guest never reaches the host's listeners); forwarding from the host link is dropped (egress denied),
or accepted except towards the transit network and masqueraded out of the host (egress allowed).

Each transaction first declares and deletes the table, then writes it whole: applying it again gives the same
ruleset (idempotent), and a half-written table cannot exist because nft applies a file atomically.
"""

from __future__ import annotations

from wrenn.agent.network._plan import GUEST_IP, PEER, TAP, AddressPlan, SlotAddresses


def _replace(table: str, body: str) -> str:
    return f"table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n{body}}}\n"


def namespace_rules(addrs: SlotAddresses, plan: AddressPlan, *, allow_egress: bool) -> str:
    egress_forward = f'    iifname "{TAP}" oifname "{PEER}" ip daddr != {plan.transit} accept\n' if allow_egress else ""
    egress_nat = f'    oifname "{PEER}" ip saddr {GUEST_IP} masquerade\n' if allow_egress else ""
    body = (
        "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n"
        f'    iifname "{PEER}" ip daddr {addrs.address} dnat to {GUEST_IP}\n  }}\n'
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n"
        f"{egress_nat}  }}\n"
        "  chain forward {\n    type filter hook forward priority filter; policy drop;\n"
        "    ct state established,related accept\n"
        f'    iifname "{PEER}" oifname "{TAP}" ip daddr {GUEST_IP} ct status dnat accept\n'
        f"{egress_forward}  }}\n"
        "  chain input {\n    type filter hook input priority filter; policy accept;\n"
        f'    iifname "{TAP}" ct state established,related accept\n'
        f'    iifname "{TAP}" drop\n  }}\n'
    )
    return _replace(addrs.nft_table, body)


def host_rules(addrs: SlotAddresses, plan: AddressPlan, *, allow_egress: bool) -> str:
    link = addrs.host_link
    if allow_egress:
        forward = (
            f'    iifname "{link}" ip daddr {plan.transit} drop\n'
            f'    iifname "{link}" accept\n'
            f'    oifname "{link}" ct state established,related accept\n'
            f'    oifname "{link}" drop\n'
        )
        nat = (
            "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    ip saddr {addrs.address} oifname != "{link}" masquerade\n  }}\n'
        )
    else:
        forward = f'    iifname "{link}" drop\n    oifname "{link}" drop\n'
        nat = ""
    body = (
        "  chain input {\n    type filter hook input priority filter; policy accept;\n"
        f'    iifname "{link}" ct state established,related accept\n'
        f'    iifname "{link}" drop\n  }}\n'
        "  chain forward {\n    type filter hook forward priority filter; policy accept;\n"
        f"{forward}  }}\n"
        f"{nat}"
    )
    return _replace(addrs.nft_table, body)


def delete_table(table: str) -> str:
    return f"table ip {table}\ndelete table ip {table}\n"
