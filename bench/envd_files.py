"""envd file transfer throughput: 1 GiB up and down through ``/files`` vs a raw loopback copy, same run.

* envd upload: ``POST /files`` (application/octet-stream) into a file on disk, envd writing it as the request's
  user; sent by ``curl -T`` and by httpx (streamed from the file in 1 MiB chunks, as the e2b SDK streams).
* envd download: ``GET /files`` (``Accept-Encoding: identity``), read and discarded by curl and by httpx. Two
  clients because on 2 cores the client's own CPU (httpx parses chunked bodies in Python) competes with envd's.
* raw upload / download: the same bytes over a plain loopback TCP socket between two threads of this process
  (``socket.sendfile`` on one side, ``recv_into`` + file write or discard on the other): the ceiling for one stream.

Runs are interleaved (raw, envd, raw, envd …) so load changes hit both. Prints p50/p95/p99 of MiB/s per variant
and the envd/raw ratio of the medians, plus envd's peak RSS.

    .venv/bin/python -m bench.envd_files [--runs 5] [--size-mib 1024] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

CHUNK = 1024 * 1024


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _start_envd(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = workdir / "port"
    log = open(workdir / "envd.log", "wb")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen(
        [sys.executable, "-m", "wrenn.envd", "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError((workdir / "envd.log").read_text())
        time.sleep(0.02)
    return proc, f"http://127.0.0.1:{port_file.read_text()}"


def _make_source(path: Path, size: int) -> None:
    block = bytearray(os.urandom(CHUNK))
    with open(path, "wb") as f:
        for i in range(size // CHUNK):
            block[0] = i & 0xFF
            f.write(block)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def raw_upload(source: Path, target: Path) -> float:
    """Seconds to push ``source`` over loopback TCP into ``target`` (receiver writes the file)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def receive() -> None:
            conn, _ = server.accept()
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            with conn, open(target, "wb") as out:
                while n := conn.recv_into(buf):
                    out.write(view[:n])

        thread = threading.Thread(target=receive)
        start = time.perf_counter()
        thread.start()
        with socket.create_connection(("127.0.0.1", port)) as conn, open(source, "rb") as f:
            conn.sendfile(f)
        thread.join()
        return time.perf_counter() - start


def raw_download(source: Path) -> float:
    """Seconds to pull ``source`` over loopback TCP (sender sendfile()s, receiver discards)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def send() -> None:
            conn, _ = server.accept()
            with conn, open(source, "rb") as f:
                conn.sendfile(f)

        thread = threading.Thread(target=send)
        start = time.perf_counter()
        thread.start()
        buf = bytearray(CHUNK)
        with socket.create_connection(("127.0.0.1", port)) as conn:
            while conn.recv_into(buf):
                pass
        thread.join()
        return time.perf_counter() - start


def envd_upload(http: httpx.Client, source: Path, target: Path) -> float:
    start = time.perf_counter()
    response = http.post(
        "/files",
        params={"path": str(target), "username": "root"},
        content=_file_chunks(source),
        headers={"Content-Type": "application/octet-stream"},
    )
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return elapsed


def envd_download(http: httpx.Client, source: Path, size: int) -> float:
    start = time.perf_counter()
    total = 0
    with http.stream(
        "GET", "/files", params={"path": str(source), "username": "root"}, headers={"Accept-Encoding": "identity"}
    ) as response:
        response.raise_for_status()
        for chunk in response.iter_raw(CHUNK):
            total += len(chunk)
    elapsed = time.perf_counter() - start
    if total != size:
        raise RuntimeError(f"downloaded {total} bytes, expected {size}")
    return elapsed


def curl_upload(url: str, source: Path, target: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            "curl",
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
            str(source),
            f"{url}/files?path={target}&username=root",
        ],
        check=True,
    )
    return time.perf_counter() - start


def curl_download(url: str, source: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            "curl",
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "-H",
            "Accept-Encoding: identity",
            f"{url}/files?path={source}&username=root",
        ],
        check=True,
    )
    return time.perf_counter() - start


def _vmhwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", default="/var/tmp", help="where the files go (a real disk, not tmpfs)")
    args = parser.parse_args()
    size = args.size_mib * CHUNK
    mib = size / CHUNK

    workdir = Path(tempfile.mkdtemp(prefix="envd-files-bench-", dir=args.dir))
    source, target = workdir / "source.bin", workdir / "target.bin"
    _make_source(source, size)
    proc, url = _start_envd(workdir)
    names = ["raw upload", "envd upload (curl)", "envd upload (httpx)"]
    names += ["raw download", "envd download (curl)", "envd download (httpx)"]
    results: dict[str, list[float]] = {name: [] for name in names}
    try:
        with httpx.Client(base_url=url, timeout=600) as http:
            envd_upload(http, source, target)  # warm-up (page cache, thread pools)
            for _ in range(args.runs):
                results["raw upload"].append(mib / raw_upload(source, target))
                results["envd upload (curl)"].append(mib / curl_upload(url, source, target))
                results["envd upload (httpx)"].append(mib / envd_upload(http, source, target))
                results["raw download"].append(mib / raw_download(source))
                results["envd download (curl)"].append(mib / curl_download(url, source))
                results["envd download (httpx)"].append(mib / envd_download(http, source, size))
        peak = _vmhwm_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()

    print(
        f"envd /files throughput, {args.size_mib} MiB x {args.runs} runs, {platform.machine()}, {os.cpu_count()} cores"
    )
    print()
    print("| variant | n | p50 MiB/s | p95 MiB/s | p99 MiB/s | mean MiB/s |")
    print("|---|---|---|---|---|---|")
    for name, values in results.items():
        # throughput: the slow tail is the low end, so p95/p99 are taken from the bottom
        p50, p95, p99 = statistics.median(values), _pct(values, 5), _pct(values, 1)
        print(f"| {name} | {len(values)} | {p50:.0f} | {p95:.0f} | {p99:.0f} | {statistics.mean(values):.0f} |")
    print()
    for direction in ("upload", "download"):
        raw = statistics.median(results[f"raw {direction}"])
        for client in ("curl", "httpx"):
            ratio = statistics.median(results[f"envd {direction} ({client})"]) / raw
            print(f"envd/raw {direction}, {client} client (medians): {ratio * 100:.0f} %")
    print(f"envd peak RSS (VmHWM): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
