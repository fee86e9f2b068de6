"""`wrenn sandbox …`: sandboxes from the command line, for people without an SDK.

Talks to a Wrenn (or any E2B-compatible) server: REST for the lifecycle, the sandbox proxy (header routing) for
commands and files. Server and key from ``--api-url``/``--api-key`` or ``WRENN_API_URL``/``WRENN_API_KEY``
(falling back to ``E2B_API_URL``/``E2B_API_KEY``).

    wrenn sandbox create [--template base] [--timeout 300] [--meta k=v]...
    wrenn sandbox list [--meta k=v]...
    wrenn sandbox info ID | kill ID | timeout ID SECONDS
    wrenn sandbox exec ID -- COMMAND...
    wrenn sandbox files read ID PATH | files write ID PATH [LOCAL|-]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import sys
from typing import Any
from urllib.parse import quote, urlencode

import httpx


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser("sandbox", help="create, list, exec in and kill sandboxes")
    parser.add_argument("--api-url", default=os.environ.get("WRENN_API_URL") or os.environ.get("E2B_API_URL"))
    parser.add_argument("--api-key", default=os.environ.get("WRENN_API_KEY") or os.environ.get("E2B_API_KEY"))
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = sub.add_parser("create", help="create a sandbox and print its id")
    create.add_argument("--template", default="base")
    create.add_argument("--timeout", type=int, default=300, help="seconds to live")
    create.add_argument("--meta", action="append", default=[], metavar="K=V")
    create.set_defaults(handler=_create)

    listing = sub.add_parser("list", help="list running sandboxes")
    listing.add_argument("--meta", action="append", default=[], metavar="K=V")
    listing.set_defaults(handler=_list)

    for name, handler, text in (("info", _info, "show a sandbox"), ("kill", _kill, "kill a sandbox")):
        p = sub.add_parser(name, help=text)
        p.add_argument("sandbox_id")
        p.set_defaults(handler=handler)

    timeout = sub.add_parser("timeout", help="set the time to live, in seconds from now")
    timeout.add_argument("sandbox_id")
    timeout.add_argument("seconds", type=int)
    timeout.set_defaults(handler=_timeout)

    exec_ = sub.add_parser("exec", help="run a command (bash -lc) and stream its output")
    exec_.add_argument("sandbox_id")
    exec_.add_argument("command", nargs=argparse.REMAINDER)
    exec_.set_defaults(handler=_exec)

    files = sub.add_parser("files", help="read or write a file")
    files_sub = files.add_subparsers(dest="files_action", required=True)
    read = files_sub.add_parser("read")
    read.add_argument("sandbox_id")
    read.add_argument("path")
    read.set_defaults(handler=_read)
    write = files_sub.add_parser("write")
    write.add_argument("sandbox_id")
    write.add_argument("path")
    write.add_argument("source", nargs="?", default="-", help="local file, or - for stdin")
    write.set_defaults(handler=_write)


def _client(args: argparse.Namespace) -> httpx.Client:
    if not args.api_url or not args.api_key:
        raise SystemExit("set WRENN_API_URL and WRENN_API_KEY (or pass --api-url/--api-key)")
    return httpx.Client(base_url=args.api_url, headers={"X-API-KEY": args.api_key}, timeout=httpx.Timeout(120.0))


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            message = response.json().get("message", response.text)
        except ValueError:
            message = response.text
        raise SystemExit(f"error {response.status_code}: {message}")
    return response


def _meta(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--meta wants K=V, got {pair!r}")
        out[key] = value
    return out


def _create(args: argparse.Namespace) -> int:
    with _client(args) as c:
        body = {"templateID": args.template, "timeout": args.timeout, "metadata": _meta(args.meta), "secure": True}
        print(_check(c.post("/sandboxes", json=body)).json()["sandboxID"])
    return 0


def _list(args: argparse.Namespace) -> int:
    meta = _meta(args.meta)
    params: dict[str, str] = {}
    if meta:
        params["metadata"] = urlencode({quote(k): quote(v) for k, v in meta.items()})
    with _client(args) as c:
        while True:
            page = _check(c.get("/v2/sandboxes", params=params))
            for s in page.json():
                print(f"{s['sandboxID']}  {s['templateID']:<12} ends {s['endAt']}  {json.dumps(s.get('metadata', {}))}")
            token = page.headers.get("X-Next-Token")
            if not token:
                return 0
            params["nextToken"] = token


def _info(args: argparse.Namespace) -> int:
    with _client(args) as c:
        print(json.dumps(_check(c.get(f"/sandboxes/{args.sandbox_id}")).json(), indent=2))
    return 0


def _kill(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _check(c.delete(f"/sandboxes/{args.sandbox_id}"))
    return 0


def _timeout(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _check(c.post(f"/sandboxes/{args.sandbox_id}/timeout", json={"timeout": args.seconds}))
    return 0


def _envd_headers(c: httpx.Client, sandbox_id: str) -> dict[str, str]:
    info = _check(c.get(f"/sandboxes/{sandbox_id}")).json()
    headers = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": "49983"}
    if info.get("envdAccessToken"):
        headers["X-Access-Token"] = info["envdAccessToken"]
    return headers


def _exec(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SystemExit("give a command after --")
    with _client(args) as c:
        headers = {
            **_envd_headers(c, args.sandbox_id),
            "Content-Type": "application/connect+json",
            "Connect-Protocol-Version": "1",
        }
        request = {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", " ".join(command)]}, "stdin": False}
        payload = json.dumps(request).encode()
        body = struct.pack(">BI", 0, len(payload)) + payload
        exit_code = 1
        with c.stream("POST", "/process.Process/Start", content=body, headers=headers, timeout=None) as r:
            if r.status_code >= 400:
                r.read()
                _check(r)
            buffer = b""
            for chunk in r.iter_bytes():
                buffer += chunk
                while len(buffer) >= 5:
                    flags, size = struct.unpack(">BI", buffer[:5])
                    if len(buffer) < 5 + size:
                        break
                    message, buffer = json.loads(buffer[5 : 5 + size] or b"{}"), buffer[5 + size :]
                    if flags & 0x02:
                        if message.get("error"):
                            raise SystemExit(f"error: {message['error'].get('message', message['error'])}")
                        continue
                    event = message.get("event", {})
                    data = event.get("data", {})
                    if "stdout" in data:
                        sys.stdout.buffer.write(base64.b64decode(data["stdout"]))
                        sys.stdout.flush()
                    if "stderr" in data:
                        sys.stderr.buffer.write(base64.b64decode(data["stderr"]))
                        sys.stderr.flush()
                    if "end" in event:
                        exit_code = int(event["end"].get("exitCode", 0))
        return exit_code


def _read(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = _check(c.get("/files", params={"path": args.path}, headers=_envd_headers(c, args.sandbox_id)))
        sys.stdout.buffer.write(r.content)
    return 0


def _write(args: argparse.Namespace) -> int:
    if args.source == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(args.source, "rb") as f:
            data = f.read()
    with _client(args) as c:
        _check(
            c.post(
                "/files",
                params={"path": args.path},
                files={"file": (args.path, data)},
                headers=_envd_headers(c, args.sandbox_id),
            )
        )
    return 0
