"""The agent's side of the control-plane contract: register once with a one-time token, then heartbeat.

``POST {api}/v1/hosts/register`` (RegisterHost -> RegisteredHost) happens only when the data dir holds no identity;
the identity (``host_id``, ``host_secret``, heartbeat interval, and the certificate/CA when the control plane runs a
CA) is written to ``<data>/host.json`` (mode 0600), so a restarted agent never registers again. Then
``POST {api}/v1/hosts/{host_id}/heartbeat`` with ``Authorization: Bearer <host_secret>`` and the current `HostInfo`
every ``heartbeat_interval_s``. Failures are logged and retried; a 401 on register is fatal (a used or expired
token will not get better).

With ``tls`` set (the agent has no certificate files of its own) registration sends ``csr_pem`` for a fresh key;
when the control plane runs a CA it answers with the host certificate, and key, certificate and CA are written to
``tls`` (`wrenn.agent.tls`) before the identity. `renew_certificate` and `fetch_crl` are the two calls the agent's
`HostCertificateKeeper` makes later, authenticated with the host secret.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from wrenn.agent._tasks import cancel_and_wait
from wrenn.protocol.agent import HostInfo
from wrenn.protocol.errors import Unauthenticated, Unavailable, WrennError, error_for_status
from wrenn.protocol.hosts import HostCertificate, HostCrl, RegisteredHost, RegisterHost, RenewHostCertificate
from wrenn.provision.ca import generate_key_and_csr

if TYPE_CHECKING:
    from wrenn.agent.tls import HostTlsFiles

_log = structlog.get_logger(__name__)

IDENTITY_FILE = "host.json"
RETRY_S = 5.0


class HostIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host_id: str
    host_secret: str
    heartbeat_interval_s: int
    api_url: str
    certificate_pem: str | None = None
    ca_pem: str | None = None


def load_identity(data_dir: Path) -> HostIdentity | None:
    try:
        return HostIdentity.model_validate_json((data_dir / IDENTITY_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as exc:
        _log.error("unreadable host identity; not registering again", error=str(exc))
        raise


def save_identity(data_dir: Path, identity: HostIdentity) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / IDENTITY_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(identity.model_dump_json(indent=2))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class Registration:
    """Registers (if needed) and runs the heartbeat loop. An async context manager; the loop is its one task."""

    def __init__(
        self,
        *,
        data_dir: Path,
        api_url: str,
        token: str | None,
        address: str,
        name: str | None,
        host_info: Callable[[], Awaitable[HostInfo]],
        client: httpx.AsyncClient | None = None,
        verify: str | bool = True,
        tls: HostTlsFiles | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._api_url = api_url.rstrip("/")
        self._token = token
        self._address = address
        self.name = name or socket.gethostname()
        self._host_info = host_info
        self._tls = tls
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(15.0), verify=verify)
        self._task: asyncio.Task[None] | None = None
        self.identity: HostIdentity | None = None
        self.heartbeats = 0

    async def __aenter__(self) -> Registration:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def start(self) -> HostIdentity:
        """Load or obtain the identity, then start heartbeating."""
        self.identity = await asyncio.to_thread(load_identity, self._data_dir)
        if self.identity is None:
            self.identity = await self._register()
            await asyncio.to_thread(save_identity, self._data_dir, self.identity)
            _log.info("registered with the control plane", host_id=self.identity.host_id, api=self._api_url)
        self._task = asyncio.create_task(self._heartbeats(self.identity), name="wrenn-agent-heartbeat")
        return self.identity

    async def aclose(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self._client.aclose()

    async def _register(self) -> HostIdentity:
        if not self._token:
            raise Unauthenticated("not registered yet and no registration token configured")
        info = await self._host_info()
        key_pem: str | None = None
        csr_pem: str | None = None
        if self._tls is not None:
            key_pem, csr_pem = await asyncio.to_thread(generate_key_and_csr, self.name)
        body = RegisterHost(token=self._token, address=self._address, name=self.name, info=info, csr_pem=csr_pem)
        while True:
            try:
                response = await self._client.post(
                    f"{self._api_url}/v1/hosts/register", json=body.model_dump(mode="json")
                )
            except httpx.TransportError as exc:
                _log.warning("control plane unreachable; retrying registration", error=str(exc), retry_s=RETRY_S)
                await asyncio.sleep(RETRY_S)
                continue
            if response.status_code == 201:
                registered = RegisteredHost.model_validate_json(response.content)
                if self._tls is not None and key_pem is not None and registered.certificate_pem is not None:
                    assert registered.ca_pem is not None
                    await asyncio.to_thread(
                        self._tls.write_registration,
                        key_pem=key_pem,
                        certificate_pem=registered.certificate_pem,
                        ca_pem=registered.ca_pem,
                    )
                return HostIdentity(api_url=self._api_url, **registered.model_dump())
            error = _error(response)
            if response.status_code >= 500:
                _log.warning("registration failed; retrying", error=error.message, retry_s=RETRY_S)
                await asyncio.sleep(RETRY_S)
                continue
            raise error

    def _host_headers(self) -> tuple[str, dict[str, str]]:
        if self.identity is None:
            raise Unavailable("not registered with the control plane")
        return self.identity.host_id, {"Authorization": f"Bearer {self.identity.host_secret}"}

    async def renew_certificate(self, csr_pem: str) -> HostCertificate:
        """A new host certificate for ``csr_pem`` (``POST /v1/hosts/{id}/certificate``)."""
        host_id, headers = self._host_headers()
        body = RenewHostCertificate(csr_pem=csr_pem).model_dump(mode="json")
        response = await self._client.post(
            f"{self._api_url}/v1/hosts/{host_id}/certificate", json=body, headers=headers
        )
        if response.status_code != 201:
            raise _error(response)
        return HostCertificate.model_validate_json(response.content)

    async def fetch_crl(self) -> str:
        """The CA's current revocation list (``GET /v1/hosts/{id}/crl``)."""
        host_id, headers = self._host_headers()
        response = await self._client.get(f"{self._api_url}/v1/hosts/{host_id}/crl", headers=headers)
        if response.status_code != 200:
            raise _error(response)
        return HostCrl.model_validate_json(response.content).crl_pem

    async def _heartbeats(self, identity: HostIdentity) -> None:
        url = f"{self._api_url}/v1/hosts/{identity.host_id}/heartbeat"
        headers = {"Authorization": f"Bearer {identity.host_secret}"}
        interval = max(1, identity.heartbeat_interval_s)
        while True:
            try:
                info = (await self._host_info()).model_copy(update={"host_id": identity.host_id})
                response = await self._client.post(url, json=info.model_dump(mode="json"), headers=headers)
                if response.status_code == 204:
                    self.heartbeats += 1
                else:
                    _log.warning("heartbeat refused", status=response.status_code, error=_error(response).message)
            except (httpx.HTTPError, Unavailable) as exc:
                _log.warning("heartbeat failed", error=str(exc))
            await asyncio.sleep(interval)


def _error(response: httpx.Response) -> WrennError:
    try:
        message = str(response.json().get("message", response.text))
    except ValueError:
        message = response.text[:200]
    return error_for_status(response.status_code, message or f"HTTP {response.status_code}")
