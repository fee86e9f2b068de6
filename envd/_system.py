"""Plain HTTP routes of envd besides /files: /health, /init, /envs, /metrics, and Wrenn's /sync.

/health and /init are exempt from the access token (as E2B's envd), /envs, /metrics and /sync need it once it is
set. ``POST /sync`` (not E2B's) writes the guest's dirty pages to its disks and answers 204 once they are there: the
host agent calls it before a pause that keeps only the disk, so what was written is not lost with the RAM.
/init may replace a token only when the caller proves it knows the current one (or sends the same one again, as
the orchestrator does after a snapshot restore).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from typing import Any

from ._http import HttpError, Request, Response, Router
from ._state import Settings, State
from ._users import UnknownUser, lookup

_log = logging.getLogger("envd.system")

CLOCK_SKEW_SECONDS = 0.05


def register(router: Router, state: State, settings: Settings) -> None:
    async def health(request: Request) -> Response:
        return Response(204)

    async def init(request: Request) -> Response:
        body = await request.read(1024 * 1024)
        try:
            data = _decode(body)
        except ValueError as exc:
            raise HttpError(400, f"invalid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise HttpError(400, "body must be a JSON object")
        timestamp = _apply_init(request, data, state, settings)
        response = Response(204)
        if timestamp is not None:
            # Set once the answer is on its way (milliseconds of the first /init after a restore under TCG):
            # still before envd reads any other request, so nothing after this /init sees the old clock.
            response.after_sent = lambda: _sync_clock(timestamp, settings)
        return response

    async def envs(request: Request) -> Response:
        return Response.json(state.env_vars)

    async def metrics(request: Request) -> Response:
        return Response.json(await read_metrics())

    async def sync(request: Request) -> Response:
        await asyncio.to_thread(os.sync)
        return Response(204)

    router.route("GET", "/health", health, auth=False)
    router.route("POST", "/sync", sync)
    router.route("POST", "/init", init, auth=False)
    router.route("GET", "/envs", envs)
    router.route("GET", "/metrics", metrics)


_DECODER = json.JSONDecoder()


def _decode(body: bytes) -> Any:
    """The JSON document in `body` ({} when blank). `raw_decode` on the stripped text is `json.loads` without its two
    regular-expression passes over the whitespace around the document: the first request after a snapshot restore
    is /init, and under TCG every C path a request takes for the first time is translated then (the regex engine
    cost ~10 ms of it here)."""
    text = body.decode().strip(" \t\n\r")
    if not text:
        return {}
    value, end = _DECODER.raw_decode(text)
    if end != len(text):
        raise ValueError(f"extra data at character {end}")
    return value


def _apply_init(request: Request, data: dict[str, Any], state: State, settings: Settings) -> object:
    """Check and apply /init's settings (all checked before any is applied: a rejected request changes nothing);
    returns its timestamp, for `_sync_clock`.

    Written with the plainest operations on purpose: /init is the first request after a snapshot restore, when
    under TCG every C path taken for the first time is translated (a generator with ``all()`` over an empty
    ``envVars`` cost ~15 ms here)."""
    token = data.get("accessToken")
    if token is not None and not isinstance(token, str):
        raise HttpError(400, "accessToken must be a string")
    if state.access_token is not None:
        given = request.headers.get("x-access-token") or token or ""
        if not hmac.compare_digest(given.encode(), state.access_token.encode()):
            raise HttpError(401, "unauthorized access: /init needs the current access token to change settings")
    env_vars = data.get("envVars")
    if env_vars is not None and not _is_str_map(env_vars):
        raise HttpError(400, "envVars must map strings to strings")
    user = data.get("defaultUser")
    if user:
        if not isinstance(user, str):
            raise HttpError(400, "defaultUser must be a string")
        try:
            lookup(user)
        except UnknownUser as exc:
            raise HttpError(400, f"defaultUser {user!r} does not exist") from exc
    workdir = data.get("defaultWorkdir")
    if workdir is not None and not isinstance(workdir, str):
        raise HttpError(400, "defaultWorkdir must be a string")
    if token:
        state.access_token = token
    if env_vars is not None:
        state.env_vars = dict(env_vars) if env_vars else {}
    if user:
        state.default_user = user
    if workdir:
        state.default_workdir = workdir
    return data.get("timestamp")


def _is_str_map(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    for key, item in value.items():  # noqa: SIM110 - a loop, not all() over a generator: see `_apply_init`
        if not isinstance(key, str) or not isinstance(item, str):
            return False
    return True


def _parse_timestamp(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(
        value, bool
    ):  # a tuple: `int | float` makes a union object per call
        return float(value)
    if isinstance(value, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _sync_clock(value: Any, settings: Settings) -> None:
    """Set the guest clock from the host's (a restored snapshot wakes up in the past); never fail the request."""
    wanted = _parse_timestamp(value)
    if wanted is None:
        _log.warning("init: ignoring unparsable timestamp %r", value)
        return
    skew = wanted - time.time()
    if abs(skew) < CLOCK_SKEW_SECONDS:
        return
    if not settings.set_clock:
        _log.info("init: clock is %.3f s off; not setting it (envd runs without --set-clock)", skew)
        return
    try:
        time.clock_settime(time.CLOCK_REALTIME, wanted)
    except OSError as exc:
        _log.warning("init: cannot set the clock (%s); continuing %.3f s off", exc, skew)


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values[:8]), idle


def _meminfo() -> dict[str, int]:
    mem: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            mem[key] = int(rest.split()[0]) * 1024
    return mem


async def read_metrics() -> dict[str, Any]:
    """CPU (over a 100 ms window), memory and root-disk usage, named like E2B envd's /metrics."""
    total1, idle1 = _cpu_times()
    await asyncio.sleep(0.1)
    total2, idle2 = _cpu_times()
    busy = (total2 - total1) - (idle2 - idle1)
    cpu_pct = round(100.0 * busy / (total2 - total1), 2) if total2 > total1 else 0.0
    mem = _meminfo()
    mem_total = mem.get("MemTotal", 0)
    mem_available = mem.get("MemAvailable", mem.get("MemFree", 0))
    mem_cache = mem.get("Cached", 0) + mem.get("Buffers", 0)
    disk = os.statvfs("/")
    disk_total = disk.f_blocks * disk.f_frsize
    disk_used = (disk.f_blocks - disk.f_bfree) * disk.f_frsize
    mem_used = mem_total - mem_available
    return {
        "ts": int(time.time()),
        "cpu_count": os.cpu_count() or 1,
        "cpu_used_pct": cpu_pct,
        "mem_total": mem_total,
        "mem_used": mem_used,
        "mem_cache": mem_cache,
        "mem_total_mib": mem_total // (1024 * 1024),
        "mem_used_mib": mem_used // (1024 * 1024),
        "disk_total": disk_total,
        "disk_used": disk_used,
    }
