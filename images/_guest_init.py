#!/usr/bin/python3 -IS
"""wrenn-init: PID 1 inside every guest (installed as /sbin/wrenn-init; standard library only, Debian python3).

Mounts the API file systems, sets the hostname, configures lo and eth0 from the kernel command line
(``wrenn.ip=ADDR/PREFIX``, ``wrenn.gw=GW``, ``wrenn.dns=IP[,IP]``, ``wrenn.hostname=NAME``; defaults
169.254.0.21/30 via 169.254.0.22), grows the root file system when the disk is larger than it, starts envd as
root, reaps every orphan, and restarts envd when it dies — after three quick deaths in a row it powers the
machine off cleanly. SIGTERM/SIGUSR2 power off, SIGINT (ctrl-alt-del, Firecracker's stop) reboots, which ends the
VMM (``reboot=t`` with ``-no-reboot``). Messages go to the console, prefixed ``wrenn-init:`` with the uptime.

This file is part of the image, not of the host: it never imports Wrenn.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time

DEFAULT_ADDRESS = "169.254.0.21/30"
DEFAULT_GATEWAY = "169.254.0.22"
ENVD_PACKAGE_DIR = "/opt/wrenn"
IMAGE_CONFIG = "/etc/wrenn/image.json"
ENVD_LOG = "/var/log/wrenn-envd.log"
QUICK_DEATH_SECONDS = 10.0
MAX_QUICK_DEATHS = 3
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_RDONLY, _MS_REMOUNT = 2, 4, 8, 1, 32
_RB_POWER_OFF, _RB_AUTOBOOT, _RB_DISABLE_CAD = 0x4321FEDC, 0x01234567, 0
_MOUNTS = (
    ("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, ""),
    ("devtmpfs", "/dev", "devtmpfs", _MS_NOSUID, "mode=0755"),
    ("devpts", "/dev/pts", "devpts", _MS_NOSUID | _MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"),
    ("tmpfs", "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777"),  # noqa: S108 - mounting it, not using it
    ("tmpfs", "/run", "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777"),  # noqa: S108
)

_libc = ctypes.CDLL(None, use_errno=True)


def log(message: str) -> None:
    try:
        with open("/proc/uptime") as uptime:
            now = uptime.read().split()[0]
    except OSError:
        now = "?"
    sys.stderr.write(f"wrenn-init: [{now}] {message}\n")
    sys.stderr.flush()


def mount_all() -> None:
    for source, target, fstype, flags, data in _MOUNTS:
        os.makedirs(target, exist_ok=True)
        if _mounted(target):
            continue
        if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
            log(f"mount {target}: {os.strerror(ctypes.get_errno())}")
    for link, target in (("/dev/fd", "/proc/self/fd"), ("/dev/ptmx", "pts/ptmx")):
        if not os.path.lexists(link):
            os.symlink(target, link)


def _mounted(target: str) -> bool:
    try:
        with open("/proc/self/mounts") as mounts:
            return any(line.split()[1] == target for line in mounts)
    except OSError:
        return False


def kernel_args() -> dict[str, str]:
    with open("/proc/cmdline") as cmdline:
        words = cmdline.read().split()
    return {key: value for key, sep, value in (word.partition("=") for word in words) if sep}


def configure_network(args: dict[str, str]) -> None:
    address = args.get("wrenn.ip", DEFAULT_ADDRESS)
    gateway = args.get("wrenn.gw", DEFAULT_GATEWAY)
    batch = f"link set lo up\naddr add {address} dev eth0\nlink set eth0 up\nroute add default via {gateway}\n"
    done = subprocess.run(["ip", "-batch", "-"], input=batch, text=True, capture_output=True, check=False)
    if done.returncode != 0:
        log(f"network setup failed: {done.stderr.strip()}")
    dns = [server for server in args.get("wrenn.dns", "").split(",") if server]
    if dns:
        with open("/etc/resolv.conf", "w") as resolv:
            resolv.writelines(f"nameserver {server}\n" for server in dns)


def set_hostname(args: dict[str, str]) -> None:
    name = args.get("wrenn.hostname", "")
    if not name:
        try:
            with open("/etc/hostname") as hostname:
                name = hostname.read().strip()
        except OSError:
            name = "wrenn"
    socket.sethostname(name or "wrenn")


def grow_root(args: dict[str, str]) -> subprocess.Popen[bytes] | None:
    """resize2fs the root device in the background (no-op when the disk is not larger); reaped by the main loop."""
    device = args.get("wrenn.root", "/dev/vda")
    try:
        return subprocess.Popen(
            ["resize2fs", device], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    except OSError as exc:
        log(f"resize2fs: {exc}")
        return None


def image_config() -> dict[str, object]:
    try:
        with open(IMAGE_CONFIG) as config:
            loaded = json.load(config)
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def envd_environment(config: dict[str, object]) -> dict[str, str]:
    env = {"PATH": BASE_PATH, "HOME": "/root", "LANG": "C.UTF-8", "PYTHONPATH": ENVD_PACKAGE_DIR}
    extra = config.get("env")
    if isinstance(extra, dict):
        env.update({str(key): str(value) for key, value in extra.items()})
    env["PYTHONPATH"] = ENVD_PACKAGE_DIR
    return env


def start_envd(env: dict[str, str]) -> int:
    log_file = os.open(ENVD_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        process = subprocess.Popen(
            ["/usr/bin/python3", "-m", "wrenn_envd", "--set-clock", "--forward-localhost"],
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    finally:
        os.close(log_file)
    log(f"envd started (pid {process.pid})")
    return process.pid


class Shutdown(Exception):
    def __init__(self, how: int, why: str) -> None:
        super().__init__(why)
        self.how = how


def _on_signal(signum: int, _frame: object) -> None:
    how = _RB_AUTOBOOT if signum == signal.SIGINT else _RB_POWER_OFF
    raise Shutdown(how, f"signal {signal.Signals(signum).name}")


def supervise(env: dict[str, str]) -> Shutdown:
    """Reap every child; restart envd until it dies quickly MAX_QUICK_DEATHS times in a row."""
    envd = start_envd(env)
    started = time.monotonic()
    quick_deaths = 0
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            signal.pause()  # no children at all: only a signal can move us on
            continue
        if pid != envd:
            continue
        code = os.waitstatus_to_exitcode(status)
        lived = time.monotonic() - started
        quick_deaths = quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 1
        log(f"envd exited with {code} after {lived:.1f} s (quick deaths in a row: {quick_deaths})")
        if quick_deaths >= MAX_QUICK_DEATHS:
            return Shutdown(_RB_POWER_OFF, "envd keeps dying")
        envd = start_envd(env)
        started = time.monotonic()


def shut_down(how: int, why: str) -> None:
    """Stop everything, sync, remount / read-only, then power off (or reboot: without ACPI a power-off would only
    halt the CPU, while a reboot ends the VMM, which runs with -no-reboot)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log(f"shutting down: {why}")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, sig)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    time.sleep(0.05)
            except ChildProcessError:
                break
    os.sync()
    if _libc.mount(b"none", b"/", None, _MS_REMOUNT | _MS_RDONLY, None) != 0:
        log(f"remount / read-only: {os.strerror(ctypes.get_errno())}")
    if how == _RB_POWER_OFF and not os.path.isdir("/sys/firmware/acpi"):
        how = _RB_AUTOBOOT
    _libc.reboot(how)
    log(f"reboot(2) failed: {os.strerror(ctypes.get_errno())}")


def main() -> None:
    if os.getpid() != 1:
        sys.exit("wrenn-init must run as PID 1")
    os.environ["PATH"] = BASE_PATH  # the kernel starts init without PATH (busybox's switch_root passes one)
    os.umask(0o022)  # the kernel starts init with 0000; envd and its processes inherit this (files 0644, as E2B's)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGUSR2, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    _libc.reboot(_RB_DISABLE_CAD)  # ctrl-alt-del becomes SIGINT to us instead of an immediate reboot
    try:
        mount_all()
        log("mounted")
        args = kernel_args()
        set_hostname(args)
        configure_network(args)
        log("network up")
        grow_root(args)
        outcome = supervise(envd_environment(image_config()))
    except Shutdown as shutdown:
        outcome = shutdown
    except Exception as exc:  # noqa: BLE001 - PID 1 must not die: a dead init panics the kernel
        outcome = Shutdown(_RB_POWER_OFF, f"init failed: {exc!r}")
    shut_down(outcome.how, str(outcome))
    while True:  # reboot(2) does not return; if it ever does, PID 1 must still not exit
        signal.pause()


if __name__ == "__main__":
    main()
