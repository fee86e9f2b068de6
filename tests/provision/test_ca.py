"""The internal CA: files and permissions, certificate profiles, `openssl verify`, CSR signing, revocation."""

from __future__ import annotations

import ipaddress
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from wrenn.provision.ca import (
    CAError,
    CAExists,
    CANotFound,
    CertificateAuthority,
    CertificateRequestError,
    certificates_for_registration,
    generate_key_and_csr,
    needs_renewal,
    sans_for_address,
)
from wrenn.provision.ca.testing import EphemeralCA

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl_verify(ca: CertificateAuthority, cert_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca.ca_file), *extra, str(cert_file)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_create_writes_root_with_private_key_0600(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700
    public = ca.certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True
    assert ca.crl_file.exists()


def test_create_refuses_to_overwrite_and_load_reads_back(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    with pytest.raises(CAExists):
        CertificateAuthority.create(tmp_path / "ca")
    again = CertificateAuthority.load(tmp_path / "ca")
    assert again.certificate.serial_number == ca.certificate.serial_number
    assert CertificateAuthority.load_or_create(tmp_path / "ca").ca_pem == ca.ca_pem


def test_load_of_missing_ca_raises(tmp_path: Path) -> None:
    with pytest.raises(CANotFound):
        CertificateAuthority.load(tmp_path / "nowhere")


def test_host_certificate_profile(ephemeral_ca: EphemeralCA) -> None:
    issued = ephemeral_ca.ca.issue_host("host-1", ip_addresses=["10.0.0.5", "fd00::5"], dns_names=["host-1.wrenn"])
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("fd00::5"),
    ]
    assert san.get_values_for_type(x509.DNSName) == ["host-1.wrenn"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=7) <= lifetime <= timedelta(days=7, minutes=10)
    assert issued.serial == cert.serial_number


def test_client_certificate_is_24h_client_auth_only(ephemeral_ca: EphemeralCA) -> None:
    issued = ephemeral_ca.ca.issue_client()
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(hours=24) <= lifetime <= timedelta(hours=24, minutes=10)


def test_host_certificate_without_names_is_refused(ephemeral_ca: EphemeralCA) -> None:
    with pytest.raises(CAError, match="at least one"):
        ephemeral_ca.ca.issue_host("nameless")


def test_written_key_is_0600(ephemeral_ca: EphemeralCA, tmp_path: Path) -> None:
    files = ephemeral_ca.host_files("h")
    assert stat.S_IMODE(files.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.cert_file.stat().st_mode) == 0o644


@needs_openssl
def test_openssl_verify_accepts_host_and_client_certificates(ephemeral_ca: EphemeralCA) -> None:
    host = ephemeral_ca.host_files("h")
    client = ephemeral_ca.client_files("api")
    for files, purpose in ((host, "sslserver"), (client, "sslclient")):
        result = _openssl_verify(ephemeral_ca.ca, files.cert_file, "-purpose", purpose)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith(": OK")


@needs_openssl
def test_openssl_verify_rejects_a_foreign_ca(ephemeral_ca: EphemeralCA, tmp_path: Path) -> None:
    foreign = CertificateAuthority.create(tmp_path / "foreign")
    issued = foreign.issue_host("evil", ip_addresses=["127.0.0.1"])
    issued.write(tmp_path / "evil.pem", tmp_path / "evil.key")
    result = _openssl_verify(ephemeral_ca.ca, tmp_path / "evil.pem")
    assert result.returncode != 0


@needs_openssl
def test_openssl_verify_with_crl_check_rejects_revoked(ephemeral_ca: EphemeralCA) -> None:
    files = ephemeral_ca.host_files("h")
    serial = x509.load_pem_x509_certificate(files.cert_file.read_bytes()).serial_number
    ok = _openssl_verify(ephemeral_ca.ca, files.cert_file, "-crl_check", "-CRLfile", str(ephemeral_ca.ca.crl_file))
    assert ok.returncode == 0, ok.stderr
    ephemeral_ca.ca.revoke(serial)
    assert ephemeral_ca.ca.is_revoked(serial)
    bad = _openssl_verify(ephemeral_ca.ca, files.cert_file, "-crl_check", "-CRLfile", str(ephemeral_ca.ca.crl_file))
    assert bad.returncode != 0
    assert "revoked" in (bad.stdout + bad.stderr)


@needs_openssl
def test_openssl_verify_rejects_expired(tmp_path: Path) -> None:
    past = datetime.now(UTC) - timedelta(days=30)
    CertificateAuthority.create(tmp_path / "ca", clock=lambda: past)
    old = CertificateAuthority.load(tmp_path / "ca", clock=lambda: past)
    old.issue_client("old").write(tmp_path / "old.pem", tmp_path / "old.key")
    result = _openssl_verify(old, tmp_path / "old.pem")
    assert result.returncode != 0
    assert "expired" in (result.stdout + result.stderr)


def test_revoke_is_idempotent_and_lands_in_the_crl(ephemeral_ca: EphemeralCA) -> None:
    issued = ephemeral_ca.ca.issue_client()
    ephemeral_ca.ca.revoke(issued.serial)
    ephemeral_ca.ca.revoke(issued.serial)
    crl = x509.load_pem_x509_crl(ephemeral_ca.ca.crl_pem.encode())
    assert crl.is_signature_valid(ephemeral_ca.ca.certificate.public_key())  # type: ignore[arg-type]
    assert [r.serial_number for r in crl] == [issued.serial]


def test_csr_is_signed_with_names_from_the_registered_address(ephemeral_ca: EphemeralCA) -> None:
    _key, csr = generate_key_and_csr("agent-7")
    certs = certificates_for_registration(ephemeral_ca.ca, address="https://10.1.2.3:5007", csr_pem=csr)
    assert certs.ca_pem == ephemeral_ca.ca.ca_pem
    assert certs.certificate_pem is not None
    cert = ephemeral_ca.ca.verify(certs.certificate_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]


def test_registration_without_a_ca_is_plain_http() -> None:
    certs = certificates_for_registration(None, address="http://127.0.0.1:5007", csr_pem=None)
    assert certs.certificate_pem is None
    assert certs.ca_pem is None


@pytest.mark.parametrize(
    ("address", "ips", "names"),
    [
        ("https://10.0.0.5:5007", ["10.0.0.5"], []),
        ("https://[fd00::1]:5007", ["fd00::1"], []),
        ("https://host-3.example.net:5007", [], ["host-3.example.net"]),
    ],
)
def test_sans_for_address(address: str, ips: list[str], names: list[str]) -> None:
    assert sans_for_address(address) == (ips, names)


def test_garbage_csr_is_refused(ephemeral_ca: EphemeralCA) -> None:
    with pytest.raises(CertificateRequestError):
        ephemeral_ca.ca.issue_host_from_csr("not a csr", ip_addresses=["10.0.0.1"])


def test_certificate_from_another_ca_does_not_verify(ephemeral_ca: EphemeralCA, tmp_path: Path) -> None:
    foreign = CertificateAuthority.create(tmp_path / "foreign").issue_client()
    with pytest.raises(CAError):
        ephemeral_ca.ca.verify(foreign.certificate_pem)


@pytest.mark.parametrize(
    ("elapsed", "due"),
    [(timedelta(hours=1), False), (timedelta(hours=15), False), (timedelta(hours=17), True), (timedelta(days=2), True)],
)
def test_needs_renewal_at_a_third_of_the_lifetime(ephemeral_ca: EphemeralCA, elapsed: timedelta, due: bool) -> None:
    issued = ephemeral_ca.ca.issue_client()
    assert needs_renewal(issued.certificate_pem, now=datetime.now(UTC) + elapsed) is due
