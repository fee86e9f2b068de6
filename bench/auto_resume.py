"""Auto-resume and drain through a real `wrenn up` (real agent, real VMs; TCG here): what a client of a paused
sandbox waits for when its first request wakes it, next to an explicit ``connect`` resume, and what draining adds to
a pause.

    .venv/bin/python -m bench.auto_resume [--cycles 5]

One sandbox created with ``autoResume`` runs ``python3 -m http.server 8080``; each cycle pauses it and then either
sends one GET through the proxy (``E2b-Sandbox-Port: 8080``; timed until the page arrives) or resumes it with
``connect`` and then sends the GET (timed together). Pauses are timed idle and with a 1 s request in flight (the
drain waits for it). Uses the e2e harness (`tests.e2e.conftest.running_up`) with a private resource prefix and
transit network, so it never collides with another `wrenn up` on the machine. Needs root, QEMU and the base image.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from e2b import Sandbox

from tests.e2e.conftest import free_port, running_up, skip_reason

PORT = 8080
SLOW_SERVER = (
    'python3 -c "import http.server,time\n'
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        time.sleep(1); self.send_response(200); self.send_header('Content-Length','4'); self.end_headers();"
    " self.wfile.write(b'slow')\n"
    "http.server.ThreadingHTTPServer(('0.0.0.0', 8081), H).serve_forever()\""
)


def _row(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    return f"| {name} | {len(ms)} | {statistics.median(ms):.0f} | {ms[-1]:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=5)
    args = parser.parse_args()
    reason = skip_reason()
    if reason:
        raise SystemExit(reason)
    data_dir = Path(tempfile.mkdtemp(prefix="wrenn-bench-resume-"))
    env = {
        "WRENN_AGENT_RESOURCE_PREFIX": f"wb{secrets.token_hex(2)}",
        "WRENN_AGENT_TRANSIT_CIDR": f"10.{150 + secrets.randbelow(40)}.0.0/16",
    }
    results: dict[str, list[float]] = {"pause, idle": [], "pause, 1 s request in flight": []}
    results |= {"auto-resume: first GET through the proxy": [], "connect (resume) + GET": []}
    try:
        with running_up(data_dir, free_port(), "wrenn-bench-auto-resume.log", env) as up:
            os.environ.update(up.env())
            api = httpx.Client(base_url=up.url, headers={"X-API-KEY": up.api_key}, timeout=300)
            sbx = Sandbox.create("base", timeout=600, lifecycle={"on_timeout": "pause", "auto_resume": True})
            sandbox_id = sbx.sandbox_id
            route = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(PORT)}
            for command in (f"python3 -m http.server {PORT} --directory /tmp", SLOW_SERVER):
                sbx.commands.run(command, background=True)
            deadline = time.monotonic() + 60
            while httpx.get(f"{up.url}/", headers=route, timeout=30).status_code != 200:
                assert time.monotonic() < deadline, "the guest server never answered"
                time.sleep(0.25)
            for cycle in range(args.cycles):
                started = time.monotonic()
                assert api.post(f"/sandboxes/{sandbox_id}/pause").status_code == 204
                results["pause, idle"].append(time.monotonic() - started)
                started = time.monotonic()
                if cycle % 2 == 0:
                    assert httpx.get(f"{up.url}/", headers=route, timeout=300).status_code == 200
                    results["auto-resume: first GET through the proxy"].append(time.monotonic() - started)
                else:
                    assert api.post(f"/sandboxes/{sandbox_id}/connect", json={"timeout": 600}).status_code == 201
                    assert httpx.get(f"{up.url}/", headers=route, timeout=300).status_code == 200
                    results["connect (resume) + GET"].append(time.monotonic() - started)
                slow_route = route | {"E2b-Sandbox-Port": "8081"}
                slow = threading.Thread(target=httpx.get, args=(f"{up.url}/",), kwargs={"headers": slow_route})
                slow.start()
                time.sleep(0.3)  # let the slow request reach the guest (the server answers after 1 s)
                started = time.monotonic()
                assert api.post(f"/sandboxes/{sandbox_id}/pause").status_code == 204
                results["pause, 1 s request in flight"].append(time.monotonic() - started)
                slow.join()
                assert api.post(f"/sandboxes/{sandbox_id}/connect", json={"timeout": 600}).status_code == 201
            sbx.kill()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    load = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| step | n | p50 ms | max ms |\n|---|---|---|---|")
    for name, samples in results.items():
        if samples:
            print(_row(name, samples))


if __name__ == "__main__":
    main()
