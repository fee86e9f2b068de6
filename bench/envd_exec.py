"""envd exec benchmark: round trip of `true` through Process.Start (start event … end event … end-of-stream) over one
keep-alive HTTP/1.1 connection, and envd's idle RSS, on the venv's python and on Debian's python3 (the guest's).

    .venv/bin/python -m bench.envd_exec [--count 300] [--warmup 20]

Variants: `/bin/true` as envd's own user (root here: spawned with vfork), as `user` (through that user's spawner,
envd/_spawner.py, which is `user` already and vforks too), and the e2b SDK's shape `/bin/bash -l -c true` as
`user` (a login shell reads /etc/profile: most of its cost is bash's).
The client is a raw socket with a pre-built request, so the numbers are envd's, not an HTTP library's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import time
from base64 import b64encode
from pathlib import Path

from tests.envd.conftest import GUEST_PYTHON, EnvdProcess, guest_python_available, start_envd

TARGET_P50_MS = 3.0
TARGET_RSS_MIB = 40.0


def _request(port: int, body: dict[str, object], user: str | None) -> bytes:
    payload = json.dumps(body).encode()
    framed = struct.pack(">BI", 0, len(payload)) + payload
    head = [
        "POST /process.Process/Start HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/connect+json",
        "Connect-Protocol-Version: 1",
        f"Content-Length: {len(framed)}",
    ]
    if user:
        head.append("Authorization: Basic " + b64encode(f"{user}:".encode()).decode())
    return ("\r\n".join(head) + "\r\n\r\n").encode() + framed


def _read_stream(sock: socket.socket, buffer: bytearray) -> bytes:
    """Read one chunked response; return the body (envelopes). Leaves leftover bytes in `buffer`."""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    buffer[:] = rest
    body = bytearray()
    while True:
        while b"\r\n" not in buffer:
            buffer += sock.recv(65536)
        line, _, rest = bytes(buffer).partition(b"\r\n")
        size = int(line, 16)
        while len(rest) < size + 2:
            rest += sock.recv(65536)
        buffer[:] = rest[size + 2 :]
        if size == 0:
            return bytes(body)
        body += rest[:size]


def _exec_once(sock: socket.socket, request: bytes, buffer: bytearray) -> float:
    started = time.perf_counter()
    sock.sendall(request)
    body = _read_stream(sock, buffer)
    elapsed = time.perf_counter() - started
    if b"exit status 0" not in body:
        raise RuntimeError(f"unexpected stream: {body!r}")
    return elapsed


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _ensure_user() -> bool:
    try:
        import pwd

        pwd.getpwnam("user")
    except KeyError:
        if os.geteuid() != 0:
            return False
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", "user"], check=False, capture_output=True)
    return True


def _bench(envd: EnvdProcess, count: int, warmup: int, has_user: bool) -> list[tuple[str, list[float]]]:
    variants: list[tuple[str, dict[str, object], str | None]] = [
        ("/bin/true as envd's user (root)", {"process": {"cmd": "/bin/true"}, "stdin": False}, "root"),
    ]
    if has_user:
        variants += [
            ("/bin/true as `user`", {"process": {"cmd": "/bin/true"}, "stdin": False}, "user"),
            (
                "bash -l -c true as `user` (SDK shape)",
                {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "true"]}},
                "user",
            ),
        ]
    results = []
    with socket.create_connection(("127.0.0.1", envd.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        for name, body, user in variants:
            request = _request(envd.port, body, user)
            for _ in range(warmup):
                _exec_once(sock, request, buffer)
            samples = [_exec_once(sock, request, buffer) for _ in range(count if "bash" not in name else count // 3)]
            results.append((name, samples))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    has_user = _ensure_user()
    flavours = ["host"] + (["guest"] if guest_python_available() else [])
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, kernel {platform.release()}; no VM (envd on the host)"
    )
    print("| interpreter | variant | n | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    rss_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for flavour in flavours:
            envd = start_envd(Path(tmp), flavour=flavour)
            interp = f"{sys.executable} (venv)" if flavour == "host" else f"{GUEST_PYTHON} (Debian)"
            try:
                time.sleep(0.5)  # settle: idle means no request in flight
                idle = _rss_mib(envd.proc.pid)
                for name, samples in _bench(envd, args.count, args.warmup, has_user):
                    p50, p95, p99 = (1000 * _percentile(samples, q) for q in (0.5, 0.95, 0.99))
                    print(f"| {interp} | {name} | {len(samples)} | {p50:.2f} | {p95:.2f} | {p99:.2f} |")
                after = _rss_mib(envd.proc.pid)
                rss_rows.append((interp, idle, after))
            finally:
                envd.stop()
    print()
    print("| interpreter | idle RSS MiB (fresh) | RSS MiB after the runs |")
    print("|---|---|---|")
    for interp, idle, after in rss_rows:
        print(f"| {interp} | {idle:.1f} | {after:.1f} |")
    print(f"\ntargets: exec p50 <= {TARGET_P50_MS} ms, idle RSS <= {TARGET_RSS_MIB} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
