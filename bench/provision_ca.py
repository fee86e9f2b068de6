"""Internal CA and mutual TLS: what a certificate and a handshake cost.

    .venv/bin/python -m bench.provision_ca [--count 200]

Times, in this process, against a CA in a temporary directory:

* ``issue host``   — a 7-day host certificate with a fresh P-256 key (what ``wrenn provision ca issue-host`` does);
* ``sign CSR``     — a host certificate from an agent's CSR (what registration does);
* ``revoke+CRL``   — add a serial and re-sign the CRL (grows with the list; the list here grows to --count);
* ``mTLS connect`` — TCP connect + TLS 1.3 handshake with client certificate over loopback to an asyncio server
                     whose context dispatches per connection (`ReloadingServerContext`: file check + CRL);
* ``ctx rebuild``  — building a server context from files (what happens once after a certificate/CRL change).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from wrenn.provision.ca import (
    CertificateAuthority,
    ReloadingServerContext,
    TLSFiles,
    client_context,
    generate_key_and_csr,
    server_context,
)


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _row(name: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    p50, p95, p99 = statistics.median(ms), _pct(ms, 0.95), _pct(ms, 0.99)
    return f"| {name:<13} | {len(ms):>5} | {p50:>8.2f} | {p95:>8.2f} | {p99:>8.2f} |"


def _time(count: int, fn: Callable[[], object]) -> list[float]:
    out = []
    for _ in range(count):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


async def _handshakes(count: int, files: TLSFiles, client: TLSFiles) -> list[float]:
    tls = ReloadingServerContext(files)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"k")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls.context)
    port = server.sockets[0].getsockname()[1]
    ctx = client_context(client)
    samples = []
    try:
        for _ in range(count):
            t = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
            await reader.read(1)
            samples.append(time.perf_counter() - t)
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ca = CertificateAuthority.create(d / "ca")
        _, csr = generate_key_and_csr("agent")
        issued = [ca.issue_client()]
        rows = [
            _row("issue host", _time(args.count, lambda: ca.issue_host("h", ip_addresses=["10.0.0.5"]))),
            _row("sign CSR", _time(args.count, lambda: ca.issue_host_from_csr(csr, ip_addresses=["10.0.0.5"]))),
        ]
        serials = iter(range(1, args.count + 1))
        rows.append(_row("revoke+CRL", _time(args.count, lambda: ca.revoke(next(serials)))))
        host = ca.issue_host("agent", ip_addresses=["127.0.0.1"])
        host.write(d / "h.pem", d / "h.key")
        issued[0].write(d / "c.pem", d / "c.key")
        files = TLSFiles(ca.ca_file, d / "h.pem", d / "h.key", ca.crl_file)
        client = TLSFiles(ca.ca_file, d / "c.pem", d / "c.key")
        rows.append(_row("mTLS connect", asyncio.run(_handshakes(args.count, files, client))))
        rows.append(_row("ctx rebuild", _time(args.count, lambda: server_context(files))))
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}")
    print("| operation     | count |  p50 ms  |  p95 ms  |  p99 ms  |")
    print("|---------------|-------|----------|----------|----------|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
