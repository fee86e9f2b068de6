"""A fake Firecracker API server on a Unix socket, faithful to the published API (swagger ``firecracker.yaml``).

It checks each request as Firecracker does — method + path known, JSON body with the required fields, no unknown
fields, field types and enums, path ids matching body ids — and the ordering rules: pre-boot-only endpoints are
refused after InstanceStart, InstanceStart needs a boot source, ``PATCH /vm`` and SendCtrlAltDel need a started
VM, a snapshot is created only while paused and loaded only into a fresh, unconfigured process. It answers 204
on success and 400 ``{"fault_message": ...}`` otherwise, and records every call.

Run as a program it impersonates the ``firecracker`` binary (``--api-sock PATH --id ID``), appends each call as a
JSON line to ``PATH.calls``, exits when the guest "reboots" (SendCtrlAltDel), and fails the requests named in
``FAKE_FIRECRACKER_FAIL`` (``"PUT /drives/rootfs=message;..."``) so the driver's error paths can be driven.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True)
class Spec:
    """One body field: its JSON type(s) and, for strings, the allowed values."""

    types: tuple[type, ...]
    enum: frozenset[str] | None = None


def _s(*values: str) -> Spec:
    return Spec((str,), frozenset(values) if values else None)


_INT, _BOOL, _OBJ, _LIST = Spec((int,)), Spec((bool,)), Spec((dict,)), Spec((list,))


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # "{id}" matches one path segment
    required: dict[str, Spec] = field(default_factory=dict)
    optional: dict[str, Spec] = field(default_factory=dict)
    phase: str = "any"  # "pre": before InstanceStart only, "post": after it only
    id_field: str | None = None  # body field that must equal the {id} segment

    def match(self, method: str, path: str) -> str | None:
        """The {id} segment (or "") when this endpoint serves `method path`, else None."""
        if method != self.method:
            return None
        pattern = "^" + re.escape(self.path).replace(re.escape("{id}"), "([^/]+)") + "$"
        found = re.match(pattern, path)
        if found is None:
            return None
        return found.group(1) if found.groups() else ""


_RATE = {"rate_limiter": _OBJ}
ENDPOINTS = (
    Endpoint("GET", "/"),
    Endpoint("GET", "/machine-config"),
    Endpoint(
        "PUT",
        "/machine-config",
        required={"vcpu_count": _INT, "mem_size_mib": _INT},
        optional={
            "smt": _BOOL,
            "track_dirty_pages": _BOOL,
            "cpu_template": _s("C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"),
            "huge_pages": _s("None", "Transparent", "2M"),
        },
        phase="pre",
    ),
    Endpoint(
        "PUT",
        "/boot-source",
        required={"kernel_image_path": _s()},
        optional={"boot_args": _s(), "initrd_path": _s()},
        phase="pre",
    ),
    Endpoint(
        "PUT",
        "/drives/{id}",
        required={"drive_id": _s(), "is_root_device": _BOOL},
        optional={
            "partuuid": _s(),
            "cache_type": _s("Unsafe", "Writeback"),
            "is_read_only": _BOOL,
            "path_on_host": _s(),
            "io_engine": _s("Sync", "Async"),
            "socket": _s(),
            **_RATE,
        },
        phase="pre",
        id_field="drive_id",
    ),
    Endpoint(
        "PATCH",
        "/drives/{id}",
        required={"drive_id": _s()},
        optional={"path_on_host": _s(), **_RATE},
        phase="post",
        id_field="drive_id",
    ),
    Endpoint(
        "PUT",
        "/network-interfaces/{id}",
        required={"iface_id": _s(), "host_dev_name": _s()},
        optional={"guest_mac": _s(), "mtu": _INT, "rx_rate_limiter": _OBJ, "tx_rate_limiter": _OBJ},
        phase="pre",
        id_field="iface_id",
    ),
    Endpoint(
        "PUT",
        "/vsock",
        required={"guest_cid": _INT, "uds_path": _s()},
        optional={"vsock_id": _s()},
        phase="pre",
    ),
    Endpoint("PUT", "/mmds", optional={}, phase="any"),
    Endpoint(
        "PUT",
        "/logger",
        optional={
            "level": _s("Error", "Warning", "Info", "Debug", "Trace", "Off"),
            "log_path": _s(),
            "show_level": _BOOL,
            "show_log_origin": _BOOL,
            "module": _s(),
        },
        phase="any",  # the swagger does not mark the logger pre-boot only
    ),
    Endpoint("PUT", "/actions", required={"action_type": _s("FlushMetrics", "InstanceStart", "SendCtrlAltDel")}),
    Endpoint("PATCH", "/vm", required={"state": _s("Paused", "Resumed")}, phase="post"),
    Endpoint(
        "PUT",
        "/snapshot/create",
        required={"mem_file_path": _s(), "snapshot_path": _s()},
        optional={"snapshot_type": _s("Full", "Diff")},
        phase="post",
    ),
    Endpoint(
        "PUT",
        "/snapshot/load",
        required={"snapshot_path": _s()},
        optional={
            "enable_diff_snapshots": _BOOL,
            "track_dirty_pages": _BOOL,
            "mem_file_path": _s(),
            "mem_backend": _OBJ,
            "resume_vm": _BOOL,
            "network_overrides": _LIST,
            "vsock_override": _OBJ,
            "clock_realtime": _BOOL,
        },
        phase="pre",
    ),
)


class Fault(Exception):
    """A request Firecracker would refuse with 400."""


@dataclass
class Call:
    method: str
    path: str
    body: JSON | None
    status: int


@dataclass
class FakeFirecracker:
    """The API state machine; `serve(socket_path)` exposes it over HTTP/1.1 on a Unix socket."""

    vm_id: str = "anonymous-instance"
    state: str = "Not started"  # InstanceInfo.state: "Not started", "Running", "Paused"
    config: dict[str, JSON] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    fail: dict[str, str] = field(default_factory=dict)  # "PUT /drives/rootfs" -> fault message
    reboot_requested: bool = False
    rebooted: asyncio.Event = field(default_factory=asyncio.Event)  # set once the reboot's 204 has been sent
    _server: asyncio.Server | None = None

    # -- the API ------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, body: JSON | None) -> tuple[int, JSON | None]:
        try:
            status, reply = self._dispatch(method, path, body)
        except Fault as fault:
            status, reply = 400, {"fault_message": str(fault)}
        self.calls.append(Call(method, path, body, status))
        return status, reply

    def _dispatch(self, method: str, path: str, body: JSON | None) -> tuple[int, JSON | None]:
        if f"{method} {path}" in self.fail:
            raise Fault(self.fail[f"{method} {path}"])
        for endpoint in ENDPOINTS:
            ident = endpoint.match(method, path)
            if ident is not None:
                break
        else:
            raise Fault(f"Invalid request method and/or path: {method} {path}.")
        if method == "GET":
            return self._get(path)
        if not isinstance(body, dict):
            raise Fault("The body of the request is empty, not valid JSON, or not a JSON object.")
        _validate(endpoint, ident, body)
        started = self.state != "Not started"
        if endpoint.phase == "pre" and started:
            raise Fault("The requested operation is not supported after starting the microVM.")
        if endpoint.phase == "post" and not started:
            raise Fault("The requested operation is not supported before starting the microVM.")
        self._apply(path, body)
        return 204, None

    def _get(self, path: str) -> tuple[int, JSON]:
        if path == "/":
            return 200, {"app_name": "Firecracker", "id": self.vm_id, "state": self.state, "vmm_version": "fake"}
        return 200, self.config.get("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "smt": False})

    def _apply(self, path: str, body: JSON) -> None:
        if path == "/actions":
            self._action(str(body["action_type"]))
        elif path == "/vm":
            self.state = "Paused" if body["state"] == "Paused" else "Running"
        elif path == "/snapshot/create":
            if self.state != "Paused":
                raise Fault("Cannot create a snapshot while the microVM is running: pause it first.")
            Path(body["snapshot_path"]).write_text(json.dumps(self.config))
            Path(body["mem_file_path"]).write_bytes(b"\0" * 4096)
        elif path == "/snapshot/load":
            self._load(body)
        else:
            self.config[path] = body

    def _action(self, action: str) -> None:
        if action == "InstanceStart":
            if self.state != "Not started":
                raise Fault("The microVM is already running.")
            if "/boot-source" not in self.config:
                raise Fault("Cannot start microvm without kernel configuration.")
            self.state = "Running"
        elif action == "SendCtrlAltDel":
            if self.state == "Not started":
                raise Fault("The requested operation is not supported before starting the microVM.")
            self.reboot_requested = True

    def _load(self, body: JSON) -> None:
        if self.config:
            raise Fault("Loading a microVM snapshot not allowed after configuring boot-specific resources.")
        if ("mem_backend" in body) == ("mem_file_path" in body):
            raise Fault("Exactly one of mem_backend or mem_file_path must be present.")
        backend = body.get("mem_backend")
        if backend is not None and (
            set(backend) != {"backend_type", "backend_path"} or backend["backend_type"] not in {"File", "Uffd"}
        ):
            raise Fault(f"Invalid mem_backend: {backend}")
        if not Path(body["snapshot_path"]).is_file():
            raise Fault(f"Cannot open snapshot file {body['snapshot_path']}: No such file or directory")
        self.state = "Running" if body.get("resume_vm") else "Paused"

    # -- HTTP over the Unix socket -------------------------------------------------------------------------
    async def serve(self, socket_path: Path) -> None:
        self._server = await asyncio.start_unix_server(self._connection, path=str(socket_path))

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = None
                status, reply = self.handle(method, target, body)
                payload = json.dumps(reply).encode() if reply is not None else b""
                reason = {200: "OK", 204: "No Content", 400: "Bad Request"}[status]
                head_out = f"HTTP/1.1 {status} {reason}\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n"
                if payload:
                    head_out += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                writer.write(head_out.encode() + b"\r\n" + payload)
                await writer.drain()
                if self.reboot_requested:
                    self.rebooted.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _validate(endpoint: Endpoint, ident: str, body: JSON) -> None:
    known = {**endpoint.required, **endpoint.optional}
    for name in endpoint.required:
        if name not in body:
            raise Fault(f"An error occurred when deserializing the json body of a request: missing field `{name}`.")
    for name, value in body.items():
        if endpoint.path != "/mmds" and name not in known:
            raise Fault(f"An error occurred when deserializing the json body of a request: unknown field `{name}`.")
        spec = known.get(name)
        if spec is None:
            continue
        is_bool = isinstance(value, bool)
        if not isinstance(value, spec.types) or (is_bool and bool not in spec.types):
            raise Fault(f"An error occurred when deserializing the json body of a request: invalid type for `{name}`.")
        if spec.enum is not None and value not in spec.enum:
            raise Fault(f"An error occurred when deserializing the json body of a request: unknown variant `{value}`.")
    if endpoint.id_field is not None and body[endpoint.id_field] != ident:
        raise Fault(f"The id from the path does not match the id from the body: {ident} != {body[endpoint.id_field]}")
    if endpoint.path == "/machine-config" and not 1 <= body["vcpu_count"] <= 32:
        raise Fault("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")


def _parse_failures(spec: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, spec.split(";")):
        request, _, message = item.partition("=")
        out[request.strip()] = message
    return out


async def _run(api_sock: Path, vm_id: str) -> None:
    fake = FakeFirecracker(vm_id=vm_id, fail=_parse_failures(os.environ.get("FAKE_FIRECRACKER_FAIL", "")))
    calls_log = Path(f"{api_sock}.calls")
    original = fake.handle

    def logged(method: str, path: str, body: JSON | None) -> tuple[int, JSON | None]:
        status, reply = original(method, path, body)
        with calls_log.open("a") as f:
            f.write(json.dumps({"method": method, "path": path, "body": body, "status": status}) + "\n")
        return status, reply

    fake.handle = logged  # type: ignore[method-assign]
    await fake.serve(api_sock)
    try:
        await fake.rebooted.wait()
    finally:
        await fake.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="firecracker")
    parser.add_argument("--api-sock", type=Path, required=True)
    parser.add_argument("--id", default="anonymous-instance")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_run(args.api_sock, args.id))
    finally:
        args.api_sock.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
