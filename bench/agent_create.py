"""Host agent benchmark: create -> envd ready through Wrenn's agent vs a bare ``qemu-system-x86_64`` launch of the
same image to the same readiness, measured in the same run (interleaved), like with like:

* restore: `SandboxManager.create` from the warm snapshot (slot, netns + TAP, qcow2 overlay, cgroup, QEMU restore
  over QMP, envd ``/init`` as the readiness probe) vs a hand-written ``qemu -incoming exec:cat state`` of the same
  snapshot in an already prepared namespace and overlay (network and disk setup are *not* timed for bare QEMU:
  they are the agent's overhead being measured);
* restore, same readiness: the bare restore followed by the ``POST /init`` a restored guest needs (the clock, env
  vars) instead of ``GET /health``, so both sides end with the same guest state;
* boot: `create` with warm templates off (cold boot) vs the same hand-written command line booting the image
  (no ``-incoming``), in a prepared namespace too;

plus the host memory (PSS) of each idle sandbox's VMM and creates per second with 10 in parallel, and (with
``--breakdown``) the median time of each step of the agent's restore path.

The agent keeps its default network pool (`AgentSettings.network_pool`). Before every timed create and every bare
launch the bench waits, untimed, until the pool has refilled (`NetworkPool.settled`), so the refill's work never
lands inside a measured interval of either side; the creates measured are the steady state of a pool with slots.

    .venv/bin/python -m bench.agent_create [--count 20] [--cold-count 5] [--parallel 10] [--breakdown]

Needs root and QEMU. The guest is the built `base` image when there is one, else the tests' tiny guest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import structlog
from qemu.qmp import QMPClient

from bench.vm_boot import pss_kib
from tests.agent.e2e_support import guest_image, images_file
from wrenn.agent import AgentImage, AgentRuntime, AgentSettings, HostResources, SandboxManager, WarmSnapshot
from wrenn.agent.vmm import wait_envd
from wrenn.agent.vmm.qemu import host_tsc_khz
from wrenn.protocol.agent import Accelerator, CreateSandbox

LIMIT = float(os.environ.get("BENCH_LIMIT", "240"))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _row(name: str, values: list[float], unit: str = "s") -> str:
    if not values:
        return f"| {name} | 0 | - | - | - | - |"
    scale = 1000.0 if unit == "ms" else 1.0
    p50, p95, p99 = (_pct(values, q) * scale for q in (50, 95, 99))
    return f"| {name} | {len(values)} | {p50:.0f} | {p95:.0f} | {p99:.0f} | {statistics.mean(values) * scale:.0f} |"


def _sid(prefix: str, n: int) -> str:
    return f"{prefix}{n:0{20 - len(prefix)}d}"


async def bare_launch(
    resources: HostResources,
    image: AgentImage,
    accel: Accelerator,
    work: Path,
    n: int,
    warm: WarmSnapshot | None,
    steps: _Steps | None = None,
    *,
    init: bool = False,
) -> float:
    """Launch the image with a hand-written QEMU command line in a prepared namespace and overlay (their setup is
    not timed) — restoring `warm`, or booting when it is None — and time spawn -> envd /health 204."""
    restore = warm is not None
    owner = _sid("bare", n)
    slot = 900 + n % 50
    run = work / f"bare{n}"
    run.mkdir(parents=True)
    lease = await resources.acquire_network(owner, slot, allow_internet=False)
    try:
        disk = run / "disk.qcow2"
        base, base_format = (warm.disk, "qcow2") if warm is not None else (image.rootfs, image.rootfs_format)
        await asyncio.to_thread(
            subprocess.run,
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", base_format, str(disk)],
            check=True,
        )
        net = lease.vm_network
        assert net.kind == "tap"
        cmdline = f"{image.kernel_cmdline} {lease.kernel_args()}"
        khz = host_tsc_khz()
        if accel is Accelerator.TCG and khz:
            cmdline += f" tsc_early_khz={khz}"
        acpi = "off" if "acpi=off" in cmdline.split() else "on"  # as the image's kernel wants (docs/vmm.md)
        # As the driver reads the snapshot: its manifest names the memory file and says whether the stream holds
        # device state only (no configuration section; RAM is the memory file).
        manifest = json.loads((warm.directory / "snapshot.json").read_text()) if warm is not None else {}
        memory = Path(manifest["memory_file"]) if manifest.get("memory_file") else None
        devices_only = bool(manifest.get("devices_only"))
        argv = [
            *("ip", "netns", "exec", net.netns, "qemu-system-x86_64"),
            *("-M", f"microvm,accel={accel.value},acpi={acpi}" + (",memory-backend=mem" if restore else "")),
            *("-cpu", "max" if accel is Accelerator.TCG else "host", "-smp", "1", "-m", "256M"),
            *("-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"),
            *("-kernel", str(image.kernel), "-append", cmdline),
            *(["-initrd", str(image.initrd)] if image.initrd else []),
            *(["-object", f"memory-backend-file,id=mem,size=256M,mem-path={memory},share=off"] if restore else []),
            *("-drive", f"id=rootfs,file={disk},format=qcow2,if=none,discard=unmap"),
            *("-device", "virtio-blk-device,drive=rootfs"),
            *("-netdev", f"tap,id=net0,ifname={net.tap},script=no,downscript=no"),
            *("-device", f"virtio-net-device,netdev=net0,mac={net.mac}"),
            *("-serial", f"file:{run / 'console.log'}"),
        ]
        if restore:
            argv += ["-qmp", f"unix:{run / 'qmp.sock'}", "-incoming", "defer"]
            if devices_only:
                argv += ["-global", "migration.send-configuration=off"]
        # Like the agent's envd client (made once at agent start), the HTTP client is made before the clock
        # starts: making one costs ~18 ms here (its TLS context), which is no part of a launch.
        health_client = httpx.AsyncClient(timeout=httpx.Timeout(2.0))
        started = time.monotonic()
        qmp = QMPClient("bare")
        if restore:
            # QEMU connects to us (client-mode QMP socket), so there is nothing to poll for.
            await qmp.start_server(str(run / "qmp.sock"))
        proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            if warm is not None:
                await _bare_incoming(qmp, warm.directory / "state", devices_only=devices_only)
            running = time.monotonic()
            if init:
                await _post_init(health_client, lease.envd_address)
            else:
                await wait_envd(lease.envd_address, LIMIT, client=health_client)
            done = time.monotonic()
            if steps is not None and warm is not None:
                probe = "envd /init 204" if init else "envd /health 204"
                steps.times.setdefault(f"bare{' + /init' if init else ''}: spawn -> cont", []).append(running - started)
                steps.times.setdefault(f"bare{' + /init' if init else ''}: cont -> {probe}", []).append(done - running)
            return done - started
        finally:
            await health_client.aclose()
            if restore:
                await qmp.disconnect()
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
    finally:
        await resources.release_network(owner, slot)
        shutil.rmtree(run, ignore_errors=True)


async def _post_init(client: httpx.AsyncClient, address: str) -> None:
    """The readiness a sandbox needs after a restore, done by hand: ``POST /init`` with the clock (the snapshot's
    guest wakes up in the past), retried while the guest does not accept yet — the body the agent sends for a
    create without env vars from a warm template."""
    body = {"timestamp": time.time()}
    async with asyncio.timeout(LIMIT):
        while True:
            try:
                response = await client.post(f"http://{address}/init", json=body, headers={"Connection": "close"})
            except (httpx.ConnectError, httpx.ConnectTimeout):
                await asyncio.sleep(0.05)
                continue
            if response.status_code == 204:
                return
            raise RuntimeError(f"bare /init answered {response.status_code}: {response.text[:300]}")


async def _bare_incoming(qmp: QMPClient, state: Path, *, devices_only: bool) -> None:
    """The minimum QEMU needs for a file-backed-RAM restore: the capabilities before the stream (``x-ignore-shared``
    only for a full stream; a device-state-only one holds no RAM), then ``cont`` (the snapshot was taken paused,
    and the run state migrates with it)."""
    await asyncio.wait_for(qmp.accept(), LIMIT)
    caps = [{"capability": "events", "state": True}]
    if not devices_only:
        caps.append({"capability": "x-ignore-shared", "state": True})
    await qmp.execute("migrate-set-capabilities", {"capabilities": caps})
    with qmp.listener("MIGRATION") as listener:
        await qmp.execute("migrate-incoming", {"uri": f"exec:cat {state}"})
        async for event in listener:
            data = event["data"]
            if isinstance(data, dict) and data.get("status") in {"completed", "failed"}:
                break
    await qmp.execute("cont")


async def wrenn_create(manager: SandboxManager, sandbox_id: str, steps: _Steps | None = None) -> float:
    started = time.monotonic()
    if steps is not None:
        steps.on = True
    try:
        await manager.create(CreateSandbox(sandbox_id=sandbox_id, template="base"))
    finally:
        if steps is not None:
            steps.on = False
    elapsed = time.monotonic() - started
    await manager.destroy(sandbox_id)
    return elapsed


class _Steps:
    """Times of the steps of `manager`'s creates while `on`, by wrapping its collaborators (bench-only: it reaches
    into the manager's private parts, which nothing else may do)."""

    def __init__(self, manager: SandboxManager) -> None:
        self.on = False
        self.times: dict[str, list[float]] = {}
        _instrument(manager, self)


def _instrument(manager: SandboxManager, steps: _Steps) -> None:
    times = steps.times

    def wrap(owner: object, name: str, label: str) -> None:
        inner = getattr(owner, name)

        async def timed(*args: object, **kwargs: object) -> object:
            started = time.monotonic()
            try:
                return await inner(*args, **kwargs)
            finally:
                if steps.on:
                    times.setdefault(label, []).append(time.monotonic() - started)

        setattr(owner, name, timed)

    resources = manager.resources
    wrap(resources, "take_network", "network (prepared slot)")
    wrap(resources, "acquire_network", "network (set up in the create)")
    wrap(resources, "create_disk", "qcow2 layer")
    wrap(resources, "create_cgroup", "cgroup")
    wrap(manager._driver, "restore", "driver.restore (QMP, incoming, cont)")
    wrap(manager._driver, "_check_backing", "driver: backing chain check")
    wrap(manager._driver, "_spawn", "driver: spawn (QMP socket bound, state opened)")
    wrap(manager._driver, "_until_started", "driver: spawn -> QMP answers and VMM placed")
    wrap(manager._driver, "accelerator_report", "driver: accelerator report")
    wrap(manager._envd, "init", "envd /init (the readiness probe)")
    wrap(manager, "_save", "state write (each)")


async def main_async(count: int, cold_count: int, parallel: int, breakdown: bool, pool_size: int | None) -> None:
    image, with_envd = guest_image()
    work = Path(tempfile.mkdtemp(prefix="wab-", dir="/tmp"))
    settings = AgentSettings(
        data_dir=work / "data", envd_ready_limit=LIMIT, resource_prefix="wbench", transit_cidr="10.199.0.0/16"
    )
    if pool_size is not None:
        settings = settings.model_copy(update={"network_pool": pool_size})
    (work / "data").mkdir()
    settings = settings.model_copy(update={"images_file": images_file(image, work / "data")})
    cold_settings = settings.model_copy(update={"data_dir": work / "cold", "warm_templates": False})
    (work / "cold").mkdir()
    cold_settings = cold_settings.model_copy(update={"images_file": images_file(image, work / "cold")})
    wrenn_restore: list[float] = []
    bare: list[float] = []
    bare_init: list[float] = []
    wrenn_cold: list[float] = []
    bare_cold: list[float] = []
    try:
        async with AgentRuntime(settings) as runtime:
            manager = runtime.manager
            first = await wrenn_create(manager, _sid("first", 0))  # boots the template, snapshots, restores
            accel = (await manager.host_info()).accelerator
            warm = await manager.templates.get(image, 1, 256)
            assert warm is not None, "no warm snapshot could be made"
            steps = _Steps(manager) if breakdown else None
            pool = manager.network_pool
            for n in range(count):
                await pool.settled()
                wrenn_restore.append(await wrenn_create(manager, _sid("r", n), steps))
                await pool.settled()
                bare.append(await bare_launch(manager.resources, image, accel, work, n, warm, steps))
                await pool.settled()
                bare_init.append(
                    await bare_launch(manager.resources, image, accel, work, 50 + n, warm, steps, init=True)
                )
            await pool.settled()

            ids = [_sid("p", n) for n in range(parallel)]
            started = time.monotonic()
            await asyncio.gather(*(manager.create(CreateSandbox(sandbox_id=i, template="base")) for i in ids))
            burst = time.monotonic() - started
            pids = [p for i in ids if (p := manager.vmm_pid(i)) is not None]
            await asyncio.sleep(2)  # let the guests go idle before measuring memory
            pss = [pss_kib(pid) for pid in pids]
            await asyncio.gather(*(manager.destroy(i) for i in ids))

        async with AgentRuntime(cold_settings) as runtime:
            pool = runtime.manager.network_pool
            if cold_count:
                # untimed, like the first warm create: a fresh data dir probes the accelerator (15 s when KVM
                # does not work) on its first boot, and the page cache learns the image
                await wrenn_create(runtime.manager, _sid("bfirst", 0))
            for n in range(cold_count):
                await pool.settled()
                wrenn_cold.append(await wrenn_create(runtime.manager, _sid("b", n)))
                await pool.settled()
                bare_cold.append(await bare_launch(runtime.manager.resources, image, accel, work, 100 + n, None))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"host: {platform.node()}, {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, accelerator {accel.value}"
    )
    print(f"guest: {'built base image (envd)' if with_envd else 'tiny busybox test guest'}, 1 vCPU, 256 MiB")
    print(f"first create (template boot + snapshot + restore): {first:.1f} s")
    print()
    print("| create -> envd ready (ms) | n | p50 | p95 | p99 | mean |")
    print("|---|---|---|---|---|---|")
    print(_row(f"Wrenn agent, restore from warm snapshot ({accel.value})", wrenn_restore, "ms"))
    print(_row(f"bare QEMU, restore of the same snapshot ({accel.value})", bare, "ms"))
    print(_row(f"bare QEMU, restore + the same POST /init ({accel.value})", bare_init, "ms"))
    print(_row(f"Wrenn agent, cold boot ({accel.value})", wrenn_cold, "ms"))
    print(_row(f"bare QEMU, cold boot ({accel.value})", bare_cold, "ms"))
    if bare and wrenn_restore:
        over = statistics.median(wrenn_restore) / statistics.median(bare) - 1
        print(f"\nrestore overhead over bare QEMU (p50): {over * 100:+.0f} %")
    if bare_init and wrenn_restore:
        over = statistics.median(wrenn_restore) / statistics.median(bare_init) - 1
        print(f"restore overhead over bare QEMU doing the same /init (p50): {over * 100:+.0f} %")
    if bare_cold and wrenn_cold:
        over = statistics.median(wrenn_cold) / statistics.median(bare_cold) - 1
        print(f"boot overhead over bare QEMU (p50): {over * 100:+.0f} %")
    print(f"\n{parallel} creates in parallel: {burst:.1f} s = {parallel / burst:.2f} creates/s ({accel.value})")
    if pss:
        print(f"idle VMM PSS per sandbox: mean {statistics.mean(pss) / 1024:.0f} MiB, max {max(pss) / 1024:.0f} MiB")
    print(f"network pool: {settings.network_pool} prepared slots (0: off)")
    if steps:
        print("\n| step of a restore create (network, layer, cgroup run together) | calls | median ms |")
        print("|---|---|---|")
        for label, values in steps.times.items():
            print(f"| {label} | {len(values)} | {statistics.median(values) * 1000:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--cold-count", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=10)
    parser.add_argument("--breakdown", action="store_true", help="also time each step of the restore creates")
    parser.add_argument("--pool", type=int, default=None, help="network pool size (default: the agent's default)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    asyncio.run(main_async(args.count, args.cold_count, args.parallel, args.breakdown, args.pool))


if __name__ == "__main__":
    main()
