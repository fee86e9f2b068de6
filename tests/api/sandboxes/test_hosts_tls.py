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


def _session(api_url: str, stack: Stack) -> dict[str, str]:
    login = httpx.post(
        f"{api_url}/v1/auth/login", json={"email": "admin@wrenn.local", "password": stack.admin_password}
    )
    return {"Authorization": f"Bearer {login.json()['token']}"}


def test_renewal_and_crl_routes(stack: Stack, tmp_path: Path) -> None:
    """A host that got a certificate is recorded at https://, renews with a new CSR (names still from its registered
    address, whatever the CSR asks for) and fetches the CRL; both need the host secret."""
    ca = CertificateAuthority.create(tmp_path / "ca")
    settings = Settings(
        database_url=stack.database_url, ca_dir=tmp_path / "ca", data_dir=tmp_path / "data", job_workers=0
    )
    api = ThreadServer(create_public_app(settings))
    api.start()
    try:
        session = _session(api.url, stack)
        token = httpx.post(f"{api.url}/v1/hosts/tokens", json={}, headers=session).json()["token"]
        _key, csr = generate_key_and_csr("tls-host")
        body = {
            "token": token,
            "address": "http://127.0.0.1:5998",  # the agent does not know yet that it will serve TLS
            "name": "tls-host",
            "info": stack.agent.host_info().model_dump(mode="json"),
            "csr_pem": csr,
        }
        registered = httpx.post(f"{api.url}/v1/hosts/register", json=body).json()
        host_id, secret = registered["host_id"], registered["host_secret"]
        hosts = httpx.get(f"{api.url}/v1/hosts", headers=session).json()
        assert [h["address"] for h in hosts if h["id"] == host_id] == ["https://127.0.0.1:5998"]

        auth = {"Authorization": f"Bearer {secret}"}
        _key2, csr2 = generate_key_and_csr("evil.example.com")
        url = f"{api.url}/v1/hosts/{host_id}/certificate"
        renewed = httpx.post(url, json={"csr_pem": csr2}, headers=auth)
        assert renewed.status_code == 201, renewed.text
        cert = x509.load_pem_x509_certificate(renewed.json()["certificate_pem"].encode())
        first = x509.load_pem_x509_certificate(registered["certificate_pem"].encode())
        assert cert.serial_number != first.serial_number
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
        assert sans.get_values_for_type(x509.DNSName) == []
        assert renewed.json()["ca_pem"] == ca.ca_pem
        assert renewed.json()["crl_pem"] == ca.crl_pem
        assert httpx.post(url, json={"csr_pem": csr2}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(url, json={"csr_pem": csr2}).status_code == 401
        assert httpx.post(url, json={"csr_pem": "not a csr"}, headers=auth).status_code == 400

        ca.revoke(first.serial_number)
        crl = httpx.get(f"{api.url}/v1/hosts/{host_id}/crl", headers=auth)
        assert crl.status_code == 200, crl.text
        revoked = x509.load_pem_x509_crl(crl.json()["crl_pem"].encode())
        assert revoked.get_revoked_certificate_by_serial_number(first.serial_number) is not None
        assert httpx.get(f"{api.url}/v1/hosts/{host_id}/crl").status_code == 401
    finally:
        api.stop()
        with psycopg.connect(stack.database_url) as conn:
            conn.execute("UPDATE hosts SET state = 'removed' WHERE name = 'tls-host'")


def test_without_a_ca_hosts_stay_on_plain_http(stack: Stack) -> None:
    """No CA: a CSR is ignored, the address is kept as sent, and renewal/CRL answer 409."""
    session = _session(stack.url, stack)
    token = httpx.post(f"{stack.url}/v1/hosts/tokens", json={}, headers=session).json()["token"]
    _key, csr = generate_key_and_csr("plain-host")
    body = {
        "token": token,
        "address": "http://127.0.0.1:5997",
        "name": "plain-host",
        "info": stack.agent.host_info().model_dump(mode="json"),
        "csr_pem": csr,
    }
    try:
        registered = httpx.post(f"{stack.url}/v1/hosts/register", json=body).json()
        assert registered["certificate_pem"] is None
        assert registered["ca_pem"] is None
        hosts = httpx.get(f"{stack.url}/v1/hosts", headers=session).json()
        assert [h["address"] for h in hosts if h["id"] == registered["host_id"]] == ["http://127.0.0.1:5997"]
        auth = {"Authorization": f"Bearer {registered['host_secret']}"}
        base = f"{stack.url}/v1/hosts/{registered['host_id']}"
        assert httpx.post(f"{base}/certificate", json={"csr_pem": csr}, headers=auth).status_code == 409
        assert httpx.get(f"{base}/crl", headers=auth).status_code == 409
    finally:
        with psycopg.connect(stack.database_url) as conn:
            conn.execute("UPDATE hosts SET state = 'removed' WHERE name = 'plain-host'")


def test_a_client_certificate_of_another_ca_is_replaced_at_start(stack: Stack, tmp_path: Path) -> None:
    """A still-valid api-client.pem signed by a previous CA (same subject name) would be refused by every agent."""
    data_dir = tmp_path / "data"
    old = CertificateAuthority.create(tmp_path / "old-ca")
    old.issue_client("wrenn-api").write(data_dir / "api-client.pem", data_dir / "api-client.key")
    ca = CertificateAuthority.create(tmp_path / "ca")
    settings = Settings(database_url=stack.database_url, ca_dir=tmp_path / "ca", data_dir=data_dir, job_workers=0)
    api = ThreadServer(create_public_app(settings))
    api.start()
    try:
        ca.verify((data_dir / "api-client.pem").read_text())  # raises CAError when it is still the old one
    finally:
        api.stop()
