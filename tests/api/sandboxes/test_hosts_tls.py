"""With an internal CA configured, registration returns the agent's certificate (signed from its CSR, names from
its registered address) and the API calls agents with a client certificate the CA issued."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography import x509

from tests.api.sandboxes.conftest import Stack, ThreadServer
from wrenn.api.sandboxes import create_public_app
from wrenn.api.settings import Settings
from wrenn.provision.ca import CertificateAuthority, generate_key_and_csr

pytestmark = [pytest.mark.postgres]


def _register(url: str, token: str, stack: Stack, csr: str | None) -> httpx.Response:
    body = {
        "token": token,
        "address": "https://127.0.0.1:5999",
        "name": "tls-host",
        "info": stack.agent.host_info().model_dump(mode="json"),
        "csr_pem": csr,
    }
    return httpx.post(f"{url}/v1/hosts/register", json=body)


def test_registration_issues_the_agent_certificate(stack: Stack, tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    data_dir = tmp_path / "data"
    settings = Settings(database_url=stack.database_url, ca_dir=tmp_path / "ca", data_dir=data_dir, job_workers=0)
    api = ThreadServer(create_public_app(settings))
    api.start()
    try:
        # the API got itself a client certificate from the CA for calling agents
        client_cert = x509.load_pem_x509_certificate((data_dir / "api-client.pem").read_bytes())
        assert client_cert.issuer == ca.certificate.subject
        with httpx.Client(base_url=api.url) as c:
            login = c.post("/v1/auth/login", json={"email": "admin@wrenn.local", "password": stack.admin_password})
            session = {"Authorization": f"Bearer {login.json()['token']}"}
            token = c.post("/v1/hosts/tokens", json={}, headers=session).json()["token"]
        bad = _register(api.url, token, stack, "-----BEGIN CERTIFICATE REQUEST-----\nnope\n")
        assert bad.status_code == 400
        _key, csr = generate_key_and_csr("tls-host")
        good = _register(api.url, token, stack, csr)  # the refused CSR did not burn the token
        assert good.status_code == 201, good.text
        body = good.json()
        assert body["ca_pem"] == ca.ca_pem
        cert = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
        assert cert.issuer == ca.certificate.subject
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
        httpx.post(
            f"{api.url}/v1/hosts/{body['host_id']}/heartbeat",
            json=stack.agent.host_info().model_dump(mode="json"),
            headers={"Authorization": f"Bearer {body['host_secret']}"},
        ).raise_for_status()
    finally:
        api.stop()
        # keep the test host out of the other tests' placement
        with psycopg.connect(stack.database_url) as conn:
            conn.execute("UPDATE hosts SET state = 'removed' WHERE name = 'tls-host'")
