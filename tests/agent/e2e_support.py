"""Support for the host agent's end-to-end tests: the guest image, a real agent (in process or as a `wrenn agent`
subprocess), envd calls made the way the e2b SDK makes them, and a census of host resources for leak checks."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.agent.vmm.guest import build_tiny_guest
from wrenn.agent import AgentImage, StaticImages
from wrenn.agent._processes import processes_mentioning


def guest_image() -> tuple[AgentImage, bool]:
    """The built `base` image (with envd) when there is one, else the VMM tests' tiny guest; and whether the
    guest runs the real envd."""
    try:
        from wrenn.images import find_image

        image = find_image("base")
    except Exception:  # noqa: BLE001 - not built (or the builder is broken): fall back to the tiny guest
        image = None
    if image is not None:
        return (
            AgentImage(
                template="base",
                kernel=Path(image.kernel),
                initrd=Path(image.initrd) if image.initrd else None,
                rootfs=Path(image.rootfs),
                kernel_cmdline=str(image.kernel_cmdline),
                key=str(image.key),
            ),
            True,
        )
    tiny = build_tiny_guest()
    digest = hashlib.sha256(tiny.initrd.read_bytes() if tiny.initrd else b"").hexdigest()[:16]
    return (
        AgentImage(
            template="base",
            kernel=tiny.kernel,
            initrd=tiny.initrd,
            rootfs=tiny.rootfs,
            kernel_cmdline=tiny.kernel_cmdline,
            key=f"tiny-{digest}",
        ),
        False,
    )


def images_file(image: AgentImage, directory: Path) -> Path:
    path = directory / "images.json"
    StaticImages({image.template: image}).to_file(path)
    return path


# ---- envd, spoken like the e2b SDK ----------------------------------------------------------------------------


def _envelope(message: dict[str, object], flags: int = 0) -> bytes:
    data = json.dumps(message).encode()
    return struct.pack(">BI", flags, len(data)) + data


def _envelopes(body: bytes) -> list[tuple[int, dict[str, object]]]:
    out = []
    offset = 0
    while offset < len(body):
        flags, length = struct.unpack(">BI", body[offset : offset + 5])
        out.append((flags, json.loads(body[offset + 5 : offset + 5 + length] or b"{}")))
        offset += 5 + length
    return out


def _headers(token: str | None) -> dict[str, str]:
    headers = {"Authorization": "Basic " + base64.b64encode(b"user:").decode()}
    if token:
        headers["X-Access-Token"] = token
    return headers


async def run_command(address: str, cmd: str, args: list[str], token: str | None = None) -> tuple[str, int]:
    """``process.Process/Start`` as a Connect server stream (JSON codec); returns (stdout, exit code)."""
    headers = _headers(token) | {"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"}
    body = _envelope({"process": {"cmd": cmd, "args": args}})
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(f"http://{address}/process.Process/Start", content=body, headers=headers)
    assert response.status_code == 200, response.text
    stdout = b""
    exit_code: int | None = None
    for flags, message in _envelopes(response.content):
        if flags & 0x02:
            assert "error" not in message, message
            continue
        event = message.get("event")
        assert isinstance(event, dict)
        data = event.get("data")
        if isinstance(data, dict) and "stdout" in data:
            stdout += base64.b64decode(str(data["stdout"]))
        end = event.get("end")
        if isinstance(end, dict):
            exit_code = int(end.get("exitCode", 0))
    assert exit_code is not None, "no end event"
    return stdout.decode(), exit_code


async def write_file(address: str, path: str, content: bytes, token: str | None = None) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(
            f"http://{address}/files",
            params={"path": path, "username": "user"},
            files={"file": (path, content)},
            headers=_headers(token),
        )
    assert response.status_code == 200, response.text
    assert response.json()[0]["path"] == path


async def read_file(address: str, path: str, token: str | None = None) -> bytes:
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.get(
            f"http://{address}/files", params={"path": path, "username": "user"}, headers=_headers(token)
        )
    assert response.status_code == 200, response.text
    return response.content


async def envd_health(address: str) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(f"http://{address}/health")).status_code


# ---- leak census ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Census:
    """Host resources that Wrenn creates, counted by name. Equal censuses before and after = nothing leaked."""

    namespaces: frozenset[str]
    links: frozenset[str]
    nft_tables: frozenset[str]
    cgroups: frozenset[str]
    processes: int
    sandbox_files: int

    def diff(self, other: Census) -> dict[str, object]:
        out: dict[str, object] = {}
        for name in ("namespaces", "links", "nft_tables", "cgroups"):
            before, after = getattr(self, name), getattr(other, name)
            if before != after:
                out[name] = {"new": sorted(after - before), "gone": sorted(before - after)}
        for name in ("processes", "sandbox_files"):
            if getattr(self, name) != getattr(other, name):
                out[name] = (getattr(self, name), getattr(other, name))
        return out


def census(data_dir: Path, prefix: str) -> Census:
    """Namespaces, host links, root-namespace nft tables and cgroups named with the agent's resource `prefix`,
    processes mentioning `data_dir`, and files under its ``sandboxes/``."""
    wrenn = re.compile(rf"^{re.escape(prefix)}")
    ns = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout
    namespaces = frozenset(line.split()[0] for line in ns.splitlines() if line and wrenn.match(line.split()[0]))
    links_out = subprocess.run(["ip", "-o", "link", "show"], check=True, capture_output=True, text=True).stdout
    links = frozenset(
        name
        for line in links_out.splitlines()
        if (name := line.split(":")[1].strip().split("@")[0]) and wrenn.match(name)
    )
    tables_out = subprocess.run(["nft", "list", "tables"], check=True, capture_output=True, text=True).stdout
    tables = frozenset(t for line in tables_out.splitlines() if wrenn.match(t := line.split()[-1]))
    cgroups: set[str] = set()
    for controller in Path("/sys/fs/cgroup").iterdir():
        if not controller.is_dir():
            continue
        for path in controller.glob(f"{prefix}*/*"):
            if path.is_dir():
                cgroups.add(str(path))
    files = sum(len(f) for _, _, f in os.walk(data_dir / "sandboxes"))
    return Census(
        namespaces=namespaces,
        links=links,
        nft_tables=tables,
        cgroups=frozenset(cgroups),
        processes=len(processes_mentioning(str(data_dir) + "/")),
        sandbox_files=files,
    )
