"""A second "host" for onboarding tests: a network namespace the test creates, running Debian's openssh-server.

The namespace gets a veth pair on a /30 of its own (``10.250.N.0/30``: the host side .1 in the root namespace,
the namespace side .2); sshd listens on .2 only, with a host key and an authorized client key made for the test.
Everything is removed on exit (sshd by its pidfile, then the namespace, which takes the veth pair with it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

SSHD = "/usr/sbin/sshd"


@dataclass
class SSHHost:
    netns: str
    address: str
    gateway: str
    identity: Path
    known_hosts: Path


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _kill_all_in(netns: str) -> None:
    """SIGKILL every process inside network namespace `netns` (``ip netns pids``) and wait until none is left."""
    for _ in range(100):
        listed = subprocess.run(["ip", "netns", "pids", netns], check=False, capture_output=True, text=True)
        pids = [int(p) for p in listed.stdout.split()]
        if not pids:
            return
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)  # SIGKILL is asynchronous: look again until the kernel has taken them
    raise RuntimeError(f"processes in {netns} did not end: {pids}")


def _keypair(private: Path) -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode()


def _free_subnet() -> int:
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    for _ in range(50):
        n = secrets.randbelow(250) + 1
        if f"10.250.{n}." not in used:
            return n
    raise RuntimeError("no free 10.250.N.0/30 for the test namespace")


def _wait_for_port(netns: str, pidfile: Path, limit_s: float = 15) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if pidfile.exists():
            listening = subprocess.run(
                ["ip", "netns", "exec", netns, "ss", "-Htln", "sport = :22"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            if listening.strip():
                return
        time.sleep(0.05)  # sshd has no readiness notification without systemd; poll its listening socket
    raise TimeoutError("sshd did not start listening")


@contextmanager
def ssh_host(workdir: Path) -> Iterator[SSHHost]:
    if shutil.which("ip") is None or not Path(SSHD).exists():
        raise FileNotFoundError("needs iproute2 and openssh-server (scripts/debian-packages.txt)")
    workdir.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(3)
    netns, host_if, ns_if = f"wpssh{tag}", f"wps{tag}h", f"wps{tag}n"
    n = _free_subnet()
    gateway, address = f"10.250.{n}.1", f"10.250.{n}.2"
    identity = workdir / "id_ed25519"
    authorized = workdir / "authorized_keys"
    authorized.write_text(_keypair(identity) + "\n")
    host_key = workdir / "ssh_host_ed25519_key"
    host_public = _keypair(host_key)
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(f"{address} {host_public}\n")
    pidfile = workdir / "sshd.pid"
    config = workdir / "sshd_config"
    config.write_text(
        f"ListenAddress {address}\nPort 22\nHostKey {host_key}\nPidFile {pidfile}\n"
        f"AuthorizedKeysFile {authorized}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    _ip("netns", "add", netns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", netns)
        _ip("addr", "add", f"{gateway}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", netns, "addr", "add", f"{address}/30", "dev", ns_if)
        _ip("-n", netns, "link", "set", ns_if, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        # nsenter --net, not `ip netns exec`: the latter also remounts /sys for the namespace, which hides the
        # cgroup hierarchies the agent needs — a real host has its own /sys with them mounted.
        subprocess.run(
            ["nsenter", f"--net=/run/netns/{netns}", SSHD, "-f", str(config)], check=True, capture_output=True
        )
        _wait_for_port(netns, pidfile)
        yield SSHHost(netns=netns, address=address, gateway=gateway, identity=identity, known_hosts=known_hosts)
    finally:
        if pidfile.exists():
            with suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text().strip()), 15)
        # The sessions sshd forked for the test's connections (ansible keeps its connections open) outlive the
        # listener, and once the link is gone no FIN ever reaches them: end every process left in the namespace.
        try:
            _kill_all_in(netns)
        finally:
            subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
