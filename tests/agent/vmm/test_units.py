"""Unit tests of the VMM package's pieces that need no VM: command line, config, errors, accelerator detection
(with stand-in ``qemu-system-x86_64`` scripts: a working KVM cannot be had here), and envd readiness."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.agent.vmm.conftest import alive
from wrenn.agent.vmm import (
    ControlError,
    FirecrackerAPIError,
    QMPError,
    StartFailed,
    TapNetwork,
    UserNetwork,
    VMConfig,
    VMMError,
    VMStateError,
    wait_envd,
)
from wrenn.agent.vmm.qemu import AcceleratorDetector, QemuDriver, build_argv, host_tsc_khz
from wrenn.protocol.agent import Accelerator
from wrenn.protocol.errors import Conflict, Internal, Unavailable


def _config(tmp_path: Path, **changes: object) -> VMConfig:
    base = VMConfig(
        vm_id="vm1",
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd",
        kernel_cmdline="console=ttyS0 quiet",
        rootfs=tmp_path / "disk.qcow2",
        network=UserNetwork(host_port=40001),
        run_dir=tmp_path,
    )
    return base.model_copy(update=changes)


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_tcg_user_network_command_line(tmp_path: Path) -> None:
    argv = build_argv(_config(tmp_path), binary="qemu", accel=Accelerator.TCG, tsc_khz=2445404)
    assert argv[0] == "qemu"
    assert _opt(argv, "-M") == ["microvm,accel=tcg,acpi=on"]
    assert _opt(argv, "-cpu") == ["max"]
    assert _opt(argv, "-append") == ["console=ttyS0 quiet tsc_early_khz=2445404"]
    (netdev,) = _opt(argv, "-netdev")
    assert "restrict=on" in netdev
    assert "hostfwd=tcp:127.0.0.1:40001-169.254.0.21:49983" in netdev
    assert {"-S", "-no-reboot", "-nodefaults"} <= set(argv)
    assert "-daemonize" not in argv, "QEMU stays the process the driver spawned"
    assert "socket,id=qmp,fd=3,server=on,wait=off" in _opt(argv, "-chardev"), "QMP on the socket the driver binds"
    assert _opt(argv, "-mon") == ["chardev=qmp,mode=control"]
    assert _opt(argv, "-drive")[0].startswith(f"id=rootfs,file={tmp_path / 'disk.qcow2'},format=qcow2,")
    assert "-incoming" not in argv


def test_kvm_tap_command_line(tmp_path: Path) -> None:
    net = TapNetwork(netns="wrenn-ns-1", tap="tap1", mac="02:00:00:00:00:01")
    argv = build_argv(_config(tmp_path, network=net), binary="qemu", accel=Accelerator.KVM, tsc_khz=2445404)
    assert argv[0] == "qemu", "the driver spawns QEMU inside the namespace itself: no `ip netns exec` first"
    assert _opt(argv, "-cpu") == ["host"]
    assert _opt(argv, "-append") == ["console=ttyS0 quiet"], "tsc_early_khz is a TCG-only workaround"
    assert _opt(argv, "-netdev") == ["tap,id=net0,ifname=tap1,script=no,downscript=no"]
    assert _opt(argv, "-device")[-1] == "virtio-net-device,netdev=net0,mac=02:00:00:00:00:01"


def test_kernel_without_acpi_gets_a_machine_without_acpi(tmp_path: Path) -> None:
    config = _config(tmp_path, kernel_cmdline="console=ttyS0 acpi=off")
    argv = build_argv(config, binary="qemu", accel=Accelerator.TCG, tsc_khz=None)
    assert _opt(argv, "-M") == ["microvm,accel=tcg,acpi=off"]
    assert _opt(argv, "-append") == ["console=ttyS0 acpi=off"]


@pytest.mark.parametrize(("share", "expected"), [(True, "share=on"), (False, "share=off")])
def test_file_backed_memory(tmp_path: Path, share: bool, expected: str) -> None:
    config = _config(tmp_path, memory_file=tmp_path / "mem")
    argv = build_argv(config, binary="qemu", accel=Accelerator.TCG, tsc_khz=None, memory_share=share, incoming=True)
    assert _opt(argv, "-M") == ["microvm,accel=tcg,acpi=on,memory-backend=mem"]
    assert _opt(argv, "-object") == [f"memory-backend-file,id=mem,size=256M,mem-path={tmp_path / 'mem'},{expected}"]
    assert _opt(argv, "-incoming") == ["defer"]


def test_a_restore_waits_for_its_stream_with_events_on(tmp_path: Path) -> None:
    config = _config(tmp_path, memory_file=tmp_path / "mem")
    argv = build_argv(
        config, binary="qemu", accel=Accelerator.TCG, tsc_khz=None, incoming=True, incoming_configuration=False
    )
    assert _opt(argv, "-incoming") == ["defer"], "named over QMP once negotiated: no event cuts into negotiation"
    assert {"migration.x-events=on", "migration.send-configuration=off"} <= set(_opt(argv, "-global"))


def test_host_tsc_khz(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 2445.404\n")
    assert host_tsc_khz(cpuinfo) == 2445404
    cpuinfo.write_text("processor\t: 0\n")
    assert host_tsc_khz(cpuinfo) is None


def test_config_round_trips_through_the_run_dir(tmp_path: Path) -> None:
    config = _config(tmp_path, network=TapNetwork(netns="ns", tap="tap0", mac="02:00:00:00:00:01"))
    config.save()
    assert VMConfig.load(tmp_path) == config
    assert isinstance(VMConfig.load(tmp_path).network, TapNetwork)


@pytest.mark.parametrize(
    "changes",
    [
        {"vm_id": "has space"},
        {"vcpus": 0},
        {"memory_mb": 16},
        {"network": {"kind": "tap", "netns": "ns", "tap": "a-name-longer-than-15", "mac": "02:00:00:00:00:01"}},
        {"network": {"kind": "tap", "netns": "ns", "tap": "tap0", "mac": "not-a-mac"}},
        {"network": {"kind": "bridge"}},
    ],
)
def test_config_rejects_bad_values(tmp_path: Path, changes: dict[str, object]) -> None:
    data = _config(tmp_path).model_dump(mode="json") | changes
    with pytest.raises(ValidationError):
        VMConfig.model_validate(data)


def test_errors_are_wrenn_error_kinds() -> None:
    state = VMStateError("vm1", "stopped", ("running", "paused"))
    assert isinstance(state, Conflict)
    assert state.status == 409
    assert state.message == "VM vm1 is stopped, needs to be running or paused"
    failed = StartFailed("vm1", "QEMU exited with status 1", "could not open disk")
    assert isinstance(failed, Unavailable)
    assert failed.status == 503
    qmp = QMPError("cont", None, {"error": {"class": "GenericError"}}, "boom")
    assert isinstance(qmp, ControlError)
    assert isinstance(qmp, Internal)
    assert (qmp.command, qmp.reply) == ("cont", {"error": {"class": "GenericError"}})
    api = FirecrackerAPIError("PUT", "/actions", 400, "no kernel")
    assert (api.status, api.http_status) == (500, 400)


# -- accelerator detection -----------------------------------------------------------------------------------

_FAKE_QEMU = """#!/bin/sh
if [ "$1" = --version ]; then echo "QEMU emulator version 9.9.9 (stand-in)"; exit 0; fi
for a; do case "$a" in file:*) out="${a#file:}" ;; esac; done
echo "$$" > "PIDS"
BEHAVIOUR
"""

BEHAVIOURS = {
    "boots": 'echo "Kernel panic - not syncing: VFS: Unable to mount root fs" > "$out"; exit 0',
    "hangs": "exec sleep 600",
    "dies": 'echo "KVM internal error. Suberror: 1" >&2; exit 1',
}


def _fake_qemu(tmp_path: Path, behaviour: str) -> str:
    script = tmp_path / f"qemu-{behaviour}"
    text = _FAKE_QEMU.replace("BEHAVIOUR", BEHAVIOURS[behaviour]).replace("PIDS", str(tmp_path / "probe.pid"))
    script.write_text(text)
    script.chmod(0o755)
    return str(script)


def _replace(path: Path, data: bytes) -> None:
    path.write_bytes(data)


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    path = tmp_path / "vmlinuz"
    path.write_bytes(b"kernel bytes")
    return path


@pytest.fixture
def kvm_device(tmp_path: Path) -> Path:
    path = tmp_path / "kvm"
    path.write_bytes(b"")
    return path


async def test_missing_kvm_device_means_tcg_without_a_probe(tmp_path: Path, kernel: Path) -> None:
    detector = AcceleratorDetector(
        binary=_fake_qemu(tmp_path, "boots"), cache_dir=tmp_path / "cache", kvm_device=tmp_path / "no-kvm"
    )
    report = await detector.detect(kernel)
    assert report.accelerator is Accelerator.TCG
    assert "no-kvm is missing" in report.reason
    assert detector.probes_run == 0


async def test_kvm_that_boots_is_used_and_cached(tmp_path: Path, kernel: Path, kvm_device: Path) -> None:
    binary = _fake_qemu(tmp_path, "boots")
    detector = AcceleratorDetector(binary=binary, cache_dir=tmp_path / "cache", kvm_device=kvm_device)
    report = await detector.detect(kernel)
    assert report.accelerator is Accelerator.KVM
    assert report.qemu_version == "QEMU emulator version 9.9.9 (stand-in)"
    assert detector.probes_run == 1

    again = AcceleratorDetector(binary=binary, cache_dir=tmp_path / "cache", kvm_device=kvm_device)
    assert await again.detect(kernel) == report
    assert again.probes_run == 0, "a second agent on the same host reuses the cached result"

    _replace(kernel, b"another kernel")
    assert (await again.detect(kernel)).accelerator is Accelerator.KVM
    assert again.probes_run == 1, "a different kernel is probed again"


@pytest.mark.parametrize(("behaviour", "reason"), [("hangs", "did not finish within 1 s"), ("dies", "exit 1")])
async def test_kvm_that_does_not_boot_falls_back_to_tcg(
    tmp_path: Path, kernel: Path, kvm_device: Path, behaviour: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    detector = AcceleratorDetector(
        binary=_fake_qemu(tmp_path, behaviour), cache_dir=tmp_path / "cache", kvm_device=kvm_device, timeout=1
    )
    report = await detector.detect(kernel)
    assert report.accelerator is Accelerator.TCG
    assert reason in report.reason
    assert "KVM NOT USABLE" in capsys.readouterr().out
    cached = AcceleratorDetector(
        binary=_fake_qemu(tmp_path, behaviour), cache_dir=tmp_path / "cache", kvm_device=kvm_device, timeout=1
    )
    assert await cached.detect(kernel) == report
    assert cached.probes_run == 0
    assert "KVM NOT USABLE" in capsys.readouterr().out, "a cached TCG verdict is announced again"
    probe_pid = int((tmp_path / "probe.pid").read_text())
    assert not alive(probe_pid), "the probe VMM must not outlive the probe"


# -- envd readiness ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _serve(statuses: list[int]) -> Iterator[tuple[int, list[str]]]:
    """A loopback HTTP server (in threads) answering `statuses` in turn, then 204.

    Threads rather than asyncio: Python 3.11's asyncio server cannot be shut down without racing connections it
    accepted but has not handed to a handler yet, and those leak as ResourceWarnings; `server_close()` of a
    non-daemon `ThreadingHTTPServer` joins every handler thread, so nothing stays open.
    """
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(statuses.pop(0) if statuses else 204)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = False
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


async def test_wait_envd_waits_for_204() -> None:
    with _serve([503, 503]) as (port, seen):
        await wait_envd(f"127.0.0.1:{port}", limit=10, interval=0.01)
    assert seen == ["/health"] * 3


async def test_wait_envd_times_out() -> None:
    with _serve([503] * 1000) as (port, _), pytest.raises(TimeoutError):
        await wait_envd(f"127.0.0.1:{port}", limit=0.3, interval=0.01)


async def test_accelerator_needs_a_kernel_to_probe_or_a_forced_choice(tmp_path: Path) -> None:
    with pytest.raises(VMMError, match="no probe_kernel"):
        await QemuDriver(data_dir=tmp_path).accelerator()
    forced = QemuDriver(data_dir=tmp_path, accelerator=Accelerator.TCG)
    assert await forced.accelerator() is Accelerator.TCG
    assert (await forced.accelerator_report()).reason == "configured"
