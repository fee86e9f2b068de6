"""`LocalResources`: the agent's own small implementation of `HostResources` with the host's tools (``ip``,
``nft``, ``qemu-img``, cgroup files) — used when the host-resource packages (`wrenn.agent.network`, `.disk`,
`.cgroup`) are not installed, and as the reference the adapter to them is tested against.

Per slot ``s`` (names fit IFNAMSIZ; ``p`` is the prefix, ``wrenn`` by default; the transit network is
10.213.0.0/16 by default — two agents on one host (tests) need different prefixes *and* transit networks)::

    host ── <p>h<s> 10.213.x.y+1/30 ══ veth0 10.213.x.y+2/30 ── netns <p>-ns-<s> ── tap0 169.254.0.22/30 ── guest .21

Inside the namespace an nftables DNAT sends ``<veth0 address>:49983`` to the guest, so envd is reachable from the
host at ``10.213.x.y+2:49983`` while every guest keeps the same address (warm-snapshot clones share it). The
namespace has no default route and no NAT: the guest reaches nothing but the host's end of its veth (egress
denied; ``allow_internet`` is refused until NAT is implemented). cgroup v1 (cpu, memory, pids) under ``<p>/<id>``.
Every operation is idempotent: measure, act, verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import signal
import time
from collections.abc import Collection
from pathlib import Path

import structlog

from wrenn.agent._resources import GATEWAY_IP, GUEST_IP, GUEST_MAC, GUEST_PREFIX, HostFacts, NetworkLease
from wrenn.agent.vmm import ENVD_PORT, Placement, TapNetwork
from wrenn.protocol.errors import Invalid, Unavailable

_log = structlog.get_logger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("cpu", "memory", "pids")
TRANSIT = ipaddress.ip_network("10.213.0.0/16")
VMM_OVERHEAD_MB = 192  # QEMU's own memory on top of the guest's (TCG translation cache, device state)
PIDS_MAX = 512


async def _run(*argv: str, check: bool = True, stdin: bytes | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    if check and proc.returncode != 0:
        raise Unavailable(f"{' '.join(argv[:4])}… failed: {err.decode(errors='replace').strip()[:300]}")
    return out.decode()


class LocalResources:
    """Network namespaces, qcow2 overlays and cgroup v1 groups, one set per sandbox slot."""

    def __init__(self, *, prefix: str = "wrenn", transit: str = str(TRANSIT), max_slots: int = 1000) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", prefix):
            raise Invalid(f"resource prefix {prefix!r}: 1-8 lowercase letters/digits")
        self._transit = ipaddress.ip_network(transit)
        if max_slots > self._transit.num_addresses // 4 - 1:
            raise Invalid(f"{transit} has room for {self._transit.num_addresses // 4 - 1} slots, not {max_slots}")
        self._prefix = prefix
        self._max_slots = max_slots
        self._sizes: dict[tuple[str, int, int], int] = {}

    # ---- naming ------------------------------------------------------------------------------------------------

    def netns(self, slot: int) -> str:
        return f"{self._prefix}-ns-{slot}"

    def host_link(self, slot: int) -> str:
        return f"{self._prefix}h{slot}"

    def addresses(self, slot: int) -> tuple[str, str]:
        """(host end, namespace end) of the slot's /30 transit network."""
        base = self._transit.network_address + 4 * slot
        return str(base + 1), str(base + 2)

    def cgroup(self, controller: str, sandbox_id: str) -> Path:
        return CGROUP_ROOT / controller / self._prefix / sandbox_id

    # ---- lifecycle ---------------------------------------------------------------------------------------------

    async def open(self) -> HostFacts:
        missing = [c for c in CONTROLLERS if not (CGROUP_ROOT / c / "cgroup.procs").exists()]
        version = 1 if not missing else 2
        if missing:
            _log.warning("cgroup v1 controllers missing; limits not applied", missing=missing)
        for controller in CONTROLLERS:
            if controller not in missing:
                (CGROUP_ROOT / controller / self._prefix).mkdir(exist_ok=True)
        return HostFacts(cgroup_version=version, cow_backend="qcow2")

    async def aclose(self) -> None:
        """Remove the prefix's parent cgroups when no sandbox group is left in them (VMMs outlive the agent)."""
        for controller in CONTROLLERS:
            with contextlib.suppress(OSError):
                await asyncio.to_thread((CGROUP_ROOT / controller / self._prefix).rmdir)

    # ---- network -----------------------------------------------------------------------------------------------

    async def acquire_network(self, sandbox_id: str, slot: int, *, allow_internet: bool) -> NetworkLease:
        if allow_internet:
            raise Invalid("internet egress is not supported by this host's network setup")
        ns, host_if = self.netns(slot), self.host_link(slot)
        host_ip, ns_ip = self.addresses(slot)
        # Measure, then act in batches: one `ip` process per side instead of one per change (≈ 10 ms each).
        if ns not in await self._namespaces():
            await _run("ip", "netns", "add", ns)
            links = ""  # a new namespace has only lo
        else:
            links = await _run("ip", "-n", ns, "-o", "link", "show")
        host_batch = []
        if "veth0" not in links:
            await _run("ip", "link", "del", host_if, check=False)
            host_batch.append(f"link add {host_if} type veth peer name veth0 netns {ns}")
        host_batch += [f"addr replace {host_ip}/30 dev {host_if}", f"link set {host_if} up"]
        await _run("ip", "-batch", "-", stdin="\n".join(host_batch).encode())
        ns_batch = [] if "tap0" in links else ["tuntap add dev tap0 mode tap"]
        ns_batch += [
            f"addr replace {ns_ip}/30 dev veth0",
            f"addr replace {GATEWAY_IP}/{GUEST_PREFIX} dev tap0",
            *(f"link set {dev} up" for dev in ("lo", "veth0", "tap0")),
        ]
        await _run("ip", "-n", ns, "-batch", "-", stdin="\n".join(ns_batch).encode())
        rules = (
            "table ip wrenn\ndelete table ip wrenn\n"
            "table ip wrenn {\n"
            "  chain prerouting { type nat hook prerouting priority -100;"
            f" ip daddr {ns_ip} tcp dport {ENVD_PORT} dnat to {GUEST_IP}:{ENVD_PORT}; }}\n"
            "  chain forward { type filter hook forward priority 0; policy drop;"
            f" ct state established,related accept; iifname veth0 oifname tap0 ip daddr {GUEST_IP}"
            f" tcp dport {ENVD_PORT} accept; }}\n"
            "}\n"
        )
        # One process inside the namespace for the forwarding switch and the rules.
        script = "sysctl -qw net.ipv4.ip_forward=1 && nft -f -"
        await _run("ip", "netns", "exec", ns, "sh", "-c", script, stdin=rules.encode())
        return NetworkLease(
            vm_network=TapNetwork(netns=ns, tap="tap0", mac=GUEST_MAC),
            envd_address=f"{ns_ip}:{ENVD_PORT}",
            netns=ns,
        )

    async def release_network(self, sandbox_id: str, slot: int) -> None:
        await _run("ip", "link", "del", self.host_link(slot), check=False)
        if self.netns(slot) in await self._namespaces():
            await _run("ip", "netns", "del", self.netns(slot))

    async def _namespaces(self) -> set[str]:
        out = await _run("ip", "netns", "list")
        return {line.split()[0] for line in out.splitlines() if line.strip()}

    # ---- disk --------------------------------------------------------------------------------------------------

    async def _virtual_size(self, base: Path, base_format: str) -> int:
        """The base image's size as the guest sees it; cached (bases are read-only; a rebuilt image has a new
        path, and a file's identity is part of the key)."""
        stat = await asyncio.to_thread(base.stat)
        key = (str(base), stat.st_ino, stat.st_mtime_ns)
        if key not in self._sizes:
            info = json.loads(await _run("qemu-img", "info", "-U", "--output=json", "-f", base_format, str(base)))
            self._sizes[key] = int(info["virtual-size"])
        return self._sizes[key]

    async def create_disk(self, base: Path, base_format: str, dest: Path, size_mb: int) -> None:
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", base_format, str(dest)]
        if size_mb and size_mb * 1024 * 1024 > await self._virtual_size(base, base_format):
            argv.append(f"{size_mb}M")
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        await _run(*argv)

    async def remove_disk(self, dest: Path) -> None:
        await asyncio.to_thread(dest.unlink, missing_ok=True)

    def disk_mb_free(self, path: Path) -> int:
        stat = os.statvfs(path if path.exists() else path.parent)
        return stat.f_bavail * stat.f_frsize // (1024 * 1024)

    # ---- cgroups -----------------------------------------------------------------------------------------------

    async def create_cgroup(self, sandbox_id: str, vcpus: int, memory_mb: int) -> Placement:
        def make() -> list[Path]:
            groups = []
            for controller in CONTROLLERS:
                group = self.cgroup(controller, sandbox_id)
                if not group.parent.exists():
                    continue
                group.mkdir(exist_ok=True)
                groups.append(group)
            settings = {
                "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": str(100000 * vcpus)},
                "memory": {"memory.limit_in_bytes": str((memory_mb + VMM_OVERHEAD_MB) * 1024 * 1024)},
                "pids": {"pids.max": str(PIDS_MAX)},
            }
            for group in groups:
                for name, value in settings[group.parent.parent.name].items():
                    (group / name).write_text(value)
            return groups

        groups = await asyncio.to_thread(make)

        async def placement(pid: int) -> None:
            for group in groups:
                await asyncio.to_thread((group / "cgroup.procs").write_text, str(pid))

        return placement

    async def remove_cgroup(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self._remove_cgroups, [sandbox_id])

    def _remove_cgroups(self, sandbox_ids: Collection[str]) -> None:
        for controller in CONTROLLERS:
            for sandbox_id in sandbox_ids:
                group = self.cgroup(controller, sandbox_id)
                if not group.exists():
                    continue
                with contextlib.suppress(OSError):
                    for pid in (group / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                for _ in range(200):  # a killed task leaves the group a moment later
                    try:
                        group.rmdir()
                        break
                    except OSError:
                        time.sleep(0.01)

    # ---- stale ---------------------------------------------------------------------------------------------------

    async def cleanup_stale(self, keep_sandboxes: Collection[str], keep_slots: Collection[int]) -> None:
        pattern = re.compile(rf"^{self._prefix}-ns-(\d+)$")
        for ns in await self._namespaces():
            match = pattern.match(ns)
            if match and int(match.group(1)) not in keep_slots:
                _log.info("removing stale namespace", netns=ns)
                await self.release_network("", int(match.group(1)))
        links = await _run("ip", "-o", "link", "show")
        host_pattern = re.compile(rf"^{self._prefix}h(\d+)$")
        for line in links.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            match = host_pattern.match(name)
            if match and int(match.group(1)) not in keep_slots:
                _log.info("removing stale link", link=name)
                await _run("ip", "link", "del", name, check=False)
        stale: set[str] = set()
        for controller in CONTROLLERS:
            parent = CGROUP_ROOT / controller / self._prefix
            if parent.is_dir():
                stale |= {g.name for g in parent.iterdir() if g.is_dir() and g.name not in keep_sandboxes}
        if stale:
            _log.info("removing stale cgroups", cgroups=sorted(stale))
            await asyncio.to_thread(self._remove_cgroups, stale)
