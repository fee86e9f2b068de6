"""Fixtures for the VMM tests: the guest to boot, per-driver harnesses (QEMU with user or TAP networking,
Firecracker with TAP), run directories and disks, and a cleanup that kills whatever a failed test left running."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.agent.vmm.guest import TestGuest, build_tiny_guest
from wrenn.agent.vmm import VM, DiskFormat, TapNetwork, UserNetwork, VMConfig, VMDriver, VMState, wait_envd
from wrenn.agent.vmm.fake import FakeDriver
from wrenn.agent.vmm.firecracker import FirecrackerDriver
from wrenn.agent.vmm.qemu import QemuDriver
from wrenn.agent.vmm.qemu._accel import AcceleratorDetector
from wrenn.protocol.agent import Accelerator

GUEST_IP = "169.254.0.21"
GATEWAY_IP = "169.254.0.22"
BOOT_LIMIT = 180.0  # TCG boots take 4-5 s alone, far more with several at once on 2 cores


@pytest.fixture(scope="session")
def guest() -> TestGuest:
    # Always the tiny busybox guest, even where the product `base` image is built: it boots fastest under TCG and
    # answers /boot_id, which the restore and clone tests need to tell a fresh boot from a restored one. The product
    # image is exercised by the host agent's end-to-end tests and by bench/vm_boot.py.
    try:
        return build_tiny_guest()
    except (OSError, subprocess.CalledProcessError, StopIteration) as exc:
        pytest.skip(f"cannot build the test guest (needs apt-get download, dpkg-deb, cpio, busybox): {exc}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@dataclass
class Netns:
    """A throwaway network namespace with a TAP device whose host side is the guest's gateway."""

    name: str
    tap: str = "wtap0"

    def create(self) -> None:
        _run("ip", "netns", "add", self.name)
        _run("ip", "-n", self.name, "tuntap", "add", "dev", self.tap, "mode", "tap")
        _run("ip", "-n", self.name, "addr", "add", f"{GATEWAY_IP}/30", "dev", self.tap)
        _run("ip", "-n", self.name, "link", "set", self.tap, "up")
        _run("ip", "-n", self.name, "link", "set", "lo", "up")

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)


_HEALTH_POLL = """
import sys, time, urllib.request, urllib.error
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        if urllib.request.urlopen(sys.argv[1], timeout=2).status == 204:
            sys.exit(0)
    except (OSError, urllib.error.URLError):
        pass
    time.sleep(0.05)
sys.exit(1)
"""


_FETCH = """
import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())
"""


async def fetch_in_netns(netns: str, url: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, sys.executable, "-c", _FETCH, url, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise OSError(f"GET {url} in {netns} failed")
    return out.decode()


async def wait_envd_in_netns(netns: str, address: str, limit: float) -> None:
    """`wait_envd`, but from inside `netns` (where a TAP-networked guest is reachable)."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, sys.executable, "-c", _HEALTH_POLL, f"http://{address}/health", str(limit)
    )
    if await proc.wait() != 0:
        raise TimeoutError(f"envd at {address} in {netns} did not answer 204 within {limit} s")


@dataclass
class Harness:
    """One driver under test plus how to make configs for it and reach their guests."""

    name: str
    driver: VMDriver
    guest: TestGuest
    base: Path
    network: str  # "user" or "tap"
    make_driver: Callable[[], VMDriver]
    started: list[VM] = field(default_factory=list)
    namespaces: list[Netns] = field(default_factory=list)
    has_boot_id: bool = False
    """Whether the guest answers GET /boot_id (the tiny test guest and the fake do; envd does not)."""

    def config(self, vm_id: str | None = None, *, memory_file: bool = False, backing: Path | None = None) -> VMConfig:
        """A fresh run dir and disk: a qcow2 overlay (QEMU, fake) or a copy (Firecracker) of the guest's base
        image, or of `backing` (a snapshot's frozen disk, itself qcow2 for QEMU and the fake, raw otherwise)."""
        vm_id = vm_id or f"t{uuid.uuid4().hex[:10]}"
        run = self.base / vm_id
        run.mkdir(parents=True)
        fmt = DiskFormat.RAW if self.name == "firecracker" else DiskFormat.QCOW2
        disk = run / f"disk.{fmt.value}"
        base, base_format = (backing, "qcow2") if backing is not None else (self.guest.rootfs, "raw")
        if fmt is DiskFormat.QCOW2:
            _run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", base_format, str(disk))
        else:
            shutil.copy(base, disk)
        net: TapNetwork | UserNetwork
        if self.network == "user":
            net = UserNetwork(host_port=free_port(), guest_ip=GUEST_IP, gateway_ip=GATEWAY_IP)
        else:
            ns = Netns(f"vmmtest-{uuid.uuid4().hex[:8]}")
            self.namespaces.append(ns)
            ns.create()
            net = TapNetwork(netns=ns.name, tap=ns.tap, mac="02:fc:00:00:00:02")
        cmdline = f"{self.guest.kernel_cmdline} wrenn.ip={GUEST_IP}/30 wrenn.gw={GATEWAY_IP}"
        return VMConfig(
            vm_id=vm_id,
            kernel=self.guest.kernel,
            initrd=self.guest.initrd,
            kernel_cmdline=cmdline,
            rootfs=disk,
            rootfs_format=fmt,
            vcpus=1,
            memory_mb=256,
            network=net,
            run_dir=run,
            memory_file=run / "memory" if memory_file else None,
        )

    def track(self, vm: VM) -> VM:
        self.started.append(vm)
        return vm

    async def boot_id(self, config: VMConfig) -> str | None:
        """The guest kernel's boot id (None when the guest has no such endpoint)."""
        if not self.has_boot_id:
            return None
        net = config.network
        if isinstance(net, UserNetwork):
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.get(f"http://127.0.0.1:{net.host_port}/boot_id")
                response.raise_for_status()
                return response.text
        return await fetch_in_netns(net.netns, f"http://{GUEST_IP}:49983/boot_id")

    @property
    def writes_disk(self) -> bool:
        """Whether the guest can write a token to its disk (`GET /write-<token>`: the tiny test guest)."""
        return self.name != "fake" and self.guest.boot_id_endpoint

    async def write_disk(self, config: VMConfig, token: str) -> None:
        net = config.network
        if isinstance(net, UserNetwork):
            async with httpx.AsyncClient(timeout=30) as client:
                response = await client.get(f"http://127.0.0.1:{net.host_port}/write-{token}")
                assert response.status_code == 204
        else:
            await fetch_in_netns(net.netns, f"http://{GUEST_IP}:49983/write-{token}")

    async def wait_envd(self, config: VMConfig, limit: float = BOOT_LIMIT) -> None:
        net = config.network
        if isinstance(net, UserNetwork):
            await wait_envd(f"127.0.0.1:{net.host_port}", limit)
        else:
            await wait_envd_in_netns(net.netns, f"{GUEST_IP}:49983", limit)


@pytest.fixture(scope="session")
def accel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A per-host cache outlives test sessions so the KVM probe runs once per host, not once per run.
    path = Path(os.environ.get("WRENN_TEST_ACCEL_CACHE", "/var/cache/wrenn-tests/accel"))
    path.mkdir(parents=True, exist_ok=True)
    return path


DRIVER_PARAMS = [
    pytest.param("fake-user", id="fake"),
    pytest.param("qemu-user", id="qemu-user", marks=[pytest.mark.vm, pytest.mark.slow]),
    pytest.param("qemu-tap", id="qemu-tap", marks=[pytest.mark.vm, pytest.mark.slow, pytest.mark.root]),
    pytest.param(
        "firecracker-tap",
        id="firecracker",
        marks=[pytest.mark.vm, pytest.mark.slow, pytest.mark.root, pytest.mark.firecracker],
    ),
]


@pytest.fixture(params=DRIVER_PARAMS)
async def vmm(
    request: pytest.FixtureRequest, guest: TestGuest, tmp_path: Path, accel_cache: Path
) -> AsyncIterator[Harness]:
    kind, network = str(request.param).split("-")
    make_driver: Callable[[], VMDriver]
    if kind == "fake":

        def make_driver() -> VMDriver:
            return FakeDriver()

    elif kind == "qemu":

        def make_driver() -> VMDriver:
            return QemuDriver(data_dir=accel_cache, probe_kernel=guest.kernel)

    else:
        binary = shutil.which("firecracker")
        report = await AcceleratorDetector(binary="qemu-system-x86_64", cache_dir=accel_cache).detect(guest.kernel)
        missing = []
        if binary is None:
            missing.append("no firecracker binary on PATH (Debian does not package it)")
        if report.accelerator is not Accelerator.KVM:
            missing.append(f"/dev/kvm does not run guests here ({report.reason})")
        if binary is None or missing:
            pytest.skip("; ".join(missing))

        def make_driver() -> VMDriver:
            return FirecrackerDriver(binary=str(binary))

    harness = Harness(
        name=kind,
        driver=make_driver(),
        guest=guest,
        base=tmp_path,
        network=network,
        make_driver=make_driver,
        has_boot_id=guest.boot_id_endpoint or kind == "fake",
    )
    try:
        yield harness
    finally:
        for vm in harness.started:
            await vm.kill()
            await vm.aclose()
        # Safety net: a test that failed half-way may have dropped a handle; daemonized VMMs would outlive us.
        for pid in processes_mentioning(str(tmp_path)):
            os.kill(pid, signal.SIGKILL)
        for ns in harness.namespaces:
            ns.delete()


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes with `text` in their command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in raw:
            found.append(int(entry.name))
    return found


def no_process_mentions(text: str) -> bool:
    """True when no live process has `text` in its command line (nothing left behind)."""
    return not processes_mentioning(text)


PlacementLog = list[int]


def recording_placement(log: PlacementLog) -> Callable[[int], Awaitable[None]]:
    async def placement(pid: int) -> None:
        log.append(pid)

    return placement


def state_of(vm: VM) -> VMState:
    """The state now (a call, so the type checker does not carry an earlier assert across awaits)."""
    return vm.state


def alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie waiting for init (an adopted or daemonized VMM's parent) does not count."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def disk_head(image: Path, size: int = 16) -> bytes:
    """The first `size` bytes the guest sees on `image` (through its whole backing chain)."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "disk.raw"
        _run("qemu-img", "convert", "-U", "-O", "raw", str(image), str(raw))
        with raw.open("rb") as f:
            return f.read(size)
