"""The agent's side of envd: readiness (``GET /health`` 204, or ``/init`` itself), ``POST /init`` (env vars, access
token, clock) and ``POST /sync`` (the guest's dirty pages to its disk, before a pause that keeps only the disk).

envd is reached over the sandbox's own network at its host-reachable address. ``/init`` matters after a restore
from a warm snapshot: the guest's clock stopped when the snapshot was taken and its env/token are the template's.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import structlog

from wrenn.agent.vmm import wait_envd
from wrenn.protocol.errors import Unavailable

_log = structlog.get_logger(__name__)

INIT_ATTEMPTS = 3
READY_INTERVAL = 0.05
"""Seconds between readiness attempts (as `wait_envd` polls ``/health``)."""


class EnvdClient:
    """One pooled HTTP client for all sandboxes' envd. An async context manager."""

    def __init__(self, timeout: float = 30.0) -> None:
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout))
        # While probing, a connect that hangs (a SYN sent before the guest's link was up) is given up quickly and
        # tried again, as `wait_envd` does; the answer itself may take as long as any request.
        self._probe_timeout = httpx.Timeout(timeout, connect=2.0)

    async def __aenter__(self) -> EnvdClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def wait_ready(self, address: str, limit: float) -> None:
        try:
            await wait_envd(address, limit)
        except TimeoutError as exc:
            raise Unavailable(f"envd at {address} did not become healthy within {limit:.0f} s") from exc

    async def init(
        self,
        address: str,
        *,
        env_vars: dict[str, str] | None,
        access_token: str | None,
        current_token: str | None = None,
        ready_limit: float | None = None,
    ) -> None:
        """``POST /init``. A guest without the endpoint (404: a development guest, not envd) is accepted with a
        warning; any other failure fails the create. `current_token` is the token the guest's envd already holds (a
        restore from a sandbox's snapshot): envd lets only its holder change settings. `env_vars` None sends none:
        the guest keeps the ones it has (the caller knows they are the wanted ones).

        With `ready_limit`, ``/init`` is also the readiness probe, so its first answer is the init's and no
        ``/health`` round trip comes first (after a restore envd was listening when the snapshot was taken; after a
        boot it starts some time after the VMM): attempts that never reached envd (connection refused, or a connect
        that timed out because the guest's link was not up yet) are repeated every `READY_INTERVAL` seconds until
        `ready_limit` seconds have passed."""
        # The clock as a number (envd takes RFC 3339 strings too, as E2B's sends): a restored guest's first request
        # is this one, and under TCG parsing a date string there costs milliseconds of first-time translation.
        body: dict[str, object] = {"timestamp": time.time()}
        if env_vars is not None:
            body["envVars"] = env_vars
        if access_token is not None:
            body["accessToken"] = access_token
        # A fresh connection each time: clones reuse guest addresses, and a pooled keep-alive connection to an
        # earlier sandbox at the same address would be stale. /init is idempotent, so a transport error is retried.
        headers = {"Connection": "close"}
        if current_token:
            headers["X-Access-Token"] = current_token
        url = f"http://{address}/init"
        if ready_limit is None:
            response = await self._post_init(url, address, body, headers, probe=False)
        else:
            try:
                async with asyncio.timeout(ready_limit):
                    response = await self._post_init(url, address, body, headers, probe=True)
            except TimeoutError as exc:
                raise Unavailable(f"envd at {address} did not answer POST /init within {ready_limit:g} s") from exc
        if response.status_code == 404:
            _log.warning("guest has no envd /init; env vars and access token not set", address=address)
            return
        if response.status_code >= 300:
            raise Unavailable(f"envd at {address}: POST /init answered {response.status_code}: {response.text[:200]}")

    async def _post_init(
        self, url: str, address: str, body: dict[str, object], headers: dict[str, str], *, probe: bool
    ) -> httpx.Response:
        failures = 0
        while True:
            try:
                if probe:
                    return await self._client.post(url, json=body, headers=headers, timeout=self._probe_timeout)
                return await self._client.post(url, json=body, headers=headers)
            except httpx.TransportError as exc:
                if probe and isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    await asyncio.sleep(READY_INTERVAL)  # never reached envd: not up yet, ask again
                    continue
                failures += 1  # otherwise the request may have reached envd: a bounded number of repeats
                if failures >= INIT_ATTEMPTS:
                    raise Unavailable(f"envd at {address}: POST /init failed: {exc!r}") from exc
                await asyncio.sleep(0.05 * failures)

    async def sync(self, address: str, *, access_token: str | None, limit: float) -> bool:
        """``POST /sync``: True once the guest flushed its page cache to disk; False (logged) when it could not be
        asked — an envd without the route, an error, no answer within `limit` s — and the caller goes on as after
        a power cut."""
        headers = {"Connection": "close"}
        if access_token:
            headers["X-Access-Token"] = access_token
        try:
            response = await self._client.post(f"http://{address}/sync", headers=headers, timeout=limit)
        except httpx.HTTPError as exc:
            _log.warning("envd did not sync the guest's disk", address=address, error=repr(exc))
            return False
        if response.status_code != 204:
            _log.warning("envd did not sync the guest's disk", address=address, status=response.status_code)
            return False
        return True
