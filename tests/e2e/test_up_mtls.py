"""`wrenn up` with an internal CA (``WRENN_CA_DIR``): its in-process agent gets a certificate at registration and
the control plane drives it over mutual TLS on loopback — the official SDK runs a command in a real microVM; the
agent's port refuses a client without a certificate; a restart on the same data dir keeps the https address."""

from __future__ import annotations

import secrets
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox

from tests.e2e.conftest import Up, free_port, running_up, skip_reason
from wrenn.provision.ca import CertificateAuthority

pytestmark = [pytest.mark.vm, pytest.mark.sdk, pytest.mark.slow, pytest.mark.root]


def _hosts(up: Up) -> list[dict[str, str]]:
    with httpx.Client(base_url=up.url, headers={"Authorization": f"Bearer {up.admin_session()}"}) as c:
        return list(c.get("/v1/hosts").json())


def test_wrenn_up_with_a_ca_drives_its_agent_over_mutual_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    if (reason := skip_reason()) is not None:
        pytest.skip(reason)
    data_dir = Path(tempfile.mkdtemp(prefix="wrenn-e2e-mtls-", dir="/tmp"))
    ca = CertificateAuthority.create(data_dir / "ca")
    env = {
        "WRENN_CA_DIR": str(ca.directory),
        "WRENN_AGENT_RESOURCE_PREFIX": f"wm{secrets.token_hex(2)}",
        "WRENN_AGENT_TRANSIT_CIDR": f"10.{150 + secrets.randbelow(40)}.0.0/16",
    }
    port = free_port()
    try:
        with running_up(data_dir, port, "wrenn-e2e-mtls.log", env) as up:
            (host,) = _hosts(up)
            assert host["address"].startswith("https://127.0.0.1:")
            tls = data_dir / "agent" / "tls"
            verified = subprocess.run(
                ["openssl", "verify", "-CAfile", str(ca.ca_file), str(tls / "host.pem")],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert verified.returncode == 0, verified.stdout + verified.stderr
            no_cert = ssl.create_default_context(cafile=str(ca.ca_file))
            with httpx.Client(verify=no_cert, timeout=10) as raw, pytest.raises(httpx.TransportError):
                raw.get(f"{host['address']}/v1/health")

            for key, value in up.env().items():
                monkeypatch.setenv(key, value)
            sbx = Sandbox.create("base", timeout=300)  # the control plane's create call goes over mTLS
            try:
                assert sbx.commands.run("echo over mtls").stdout.strip() == "over mtls"
            finally:
                assert sbx.kill()
        with running_up(data_dir, port, "wrenn-e2e-mtls-2.log", env) as again:
            (host_again,) = _hosts(again)
            assert host_again["id"] == host["id"]
            assert host_again["address"].startswith("https://127.0.0.1:")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
