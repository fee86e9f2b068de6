"""The internal certificate authority: an ECDSA P-256 root that signs host and client leaf certificates.

A CA lives in one directory::

    ca.pem        the root certificate (0644), handed to every host and to the API
    ca.key        the root private key, PKCS#8 PEM (0600)
    revoked.json  revoked serial numbers (hex) and when they were revoked
    crl.pem       the certificate revocation list signed by the root, re-signed on every change and refresh

Leaf profiles:

- **host** certificates (agents): serverAuth + clientAuth, IP and DNS subject alternative names, 7 days; issued at
  registration (from the agent's CSR, or with a fresh key) and issued again on refresh.
- **client** certificates (the API calling agents): clientAuth only, 24 hours, renewed in the background.

Time comes from an injected clock so that tests can mint certificates that are already expired.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wrenn.provision._errors import CAError, CAExists, CANotFound, CertificateRequestError
from wrenn.provision.ca._files import write_private, write_public

__all__ = [
    "CA_LIFETIME",
    "CLIENT_LIFETIME",
    "CRL_LIFETIME",
    "HOST_LIFETIME",
    "CertificateAuthority",
    "Clock",
    "IssuedCertificate",
    "generate_key_and_csr",
    "needs_renewal",
]

Clock = Callable[[], datetime]

CA_LIFETIME = timedelta(days=3650)
HOST_LIFETIME = timedelta(days=7)
CLIENT_LIFETIME = timedelta(hours=24)
CRL_LIFETIME = timedelta(days=7)
# Backdate not_valid_before a little: hosts with a clock slightly behind the CA's still accept a fresh certificate.
_BACKDATE = timedelta(minutes=5)

_CA_CERT = "ca.pem"
_CA_KEY = "ca.key"
_REVOKED = "revoked.json"
_CRL = "crl.pem"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class IssuedCertificate:
    """A freshly signed leaf certificate; ``key_pem`` is ``None`` when it was signed from a CSR."""

    certificate_pem: str
    key_pem: str | None
    serial: int
    not_after: datetime

    def write(self, cert_file: Path, key_file: Path | None = None) -> None:
        """Write the certificate (0644) and, when this object holds it, the private key (0600), atomically."""
        if key_file is not None:
            if self.key_pem is None:
                raise CAError("this certificate was issued from a CSR: its private key never left the requester")
            write_private(key_file, self.key_pem.encode())
        write_public(cert_file, self.certificate_pem.encode())


def generate_key_and_csr(common_name: str) -> tuple[str, str]:
    """A new P-256 key and a CSR for it (the agent side of registration); returns ``(key_pem, csr_pem)``."""
    key = _new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key).decode(), csr.public_bytes(serialization.Encoding.PEM).decode()


def needs_renewal(certificate_pem: str, *, now: datetime, remaining_fraction: float = 1 / 3) -> bool:
    """True when less than ``remaining_fraction`` of the certificate's lifetime is left (or it is already expired)."""
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now <= lifetime * remaining_fraction


def _parse_ips(addresses: Iterable[str | IPAddress]) -> list[IPAddress]:
    out: list[IPAddress] = []
    for address in addresses:
        try:
            out.append(ipaddress.ip_address(address))
        except ValueError as exc:
            raise CAError(f"not an IP address: {address!r}") from exc
    return out


class CertificateAuthority:
    """An ECDSA P-256 root CA kept in a directory; create it with `create`, open it with `load`."""

    def __init__(
        self,
        directory: Path,
        certificate: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        *,
        clock: Clock = _utcnow,
    ) -> None:
        self.directory = directory
        self.certificate = certificate
        self._key = key
        self._clock = clock

    # -- opening ---------------------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        common_name: str = "Wrenn internal CA",
        lifetime: timedelta = CA_LIFETIME,
        clock: Clock = _utcnow,
    ) -> CertificateAuthority:
        """Create a new root in ``directory``; refuses to overwrite an existing one (`CAExists`)."""
        directory = Path(directory)
        if (directory / _CA_KEY).exists() or (directory / _CA_CERT).exists():
            raise CAExists(f"a CA already exists in {directory}")
        now = clock()
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        write_private(directory / _CA_KEY, _key_pem(key))
        write_public(directory / _CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
        ca = cls(directory, cert, key, clock=clock)
        ca._write_revoked({})
        ca.refresh_crl()
        return ca

    @classmethod
    def load(cls, directory: Path, *, clock: Clock = _utcnow) -> CertificateAuthority:
        """Open the CA in ``directory`` (`CANotFound` when it is not there)."""
        directory = Path(directory)
        try:
            cert_pem = (directory / _CA_CERT).read_bytes()
            key_pem = (directory / _CA_KEY).read_bytes()
        except FileNotFoundError as exc:
            raise CANotFound(f"no CA in {directory}") from exc
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except ValueError as exc:
            raise CAError(f"the CA in {directory} cannot be read: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError(f"the CA key in {directory} is not an elliptic-curve key")
        ca = cls(directory, cert, key, clock=clock)
        if not (directory / _CRL).exists():
            ca.refresh_crl()
        return ca

    @classmethod
    def load_or_create(cls, directory: Path, *, clock: Clock = _utcnow) -> CertificateAuthority:
        """Idempotent: open the CA in ``directory``, creating it first when there is none."""
        try:
            return cls.load(directory, clock=clock)
        except CANotFound:
            return cls.create(directory, clock=clock)

    # -- files -----------------------------------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        return self.directory / _CA_CERT

    @property
    def crl_file(self) -> Path:
        return self.directory / _CRL

    @property
    def ca_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def crl_pem(self) -> str:
        return self.crl_file.read_text()

    # -- issuing ---------------------------------------------------------------------------------------------------

    def issue_host(
        self,
        name: str,
        *,
        ip_addresses: Sequence[str | IPAddress] = (),
        dns_names: Sequence[str] = (),
        lifetime: timedelta = HOST_LIFETIME,
    ) -> IssuedCertificate:
        """A host (agent) certificate with a new key: serverAuth + clientAuth, IP and DNS SANs, 7 days by default."""
        key = _new_key()
        cert = self._sign_leaf(name, key.public_key(), _parse_ips(ip_addresses), list(dns_names), lifetime, server=True)
        return self._issued(cert, _key_pem(key).decode())

    def issue_host_from_csr(
        self,
        csr_pem: str,
        *,
        ip_addresses: Sequence[str | IPAddress] = (),
        dns_names: Sequence[str] = (),
        lifetime: timedelta = HOST_LIFETIME,
    ) -> IssuedCertificate:
        """Sign a host's CSR. The names come from the control plane (what it registered), never from the CSR."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise CertificateRequestError(f"not a PEM certificate signing request: {exc}") from exc
        if not csr.is_signature_valid:
            raise CertificateRequestError("the CSR's signature does not verify against its own public key")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise CertificateRequestError("host keys must be ECDSA P-256")
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(cns[0].value) if cns else "wrenn-host"
        cert = self._sign_leaf(name, public, _parse_ips(ip_addresses), list(dns_names), lifetime, server=True)
        return self._issued(cert, None)

    def issue_client(
        self, common_name: str = "wrenn-api", *, lifetime: timedelta = CLIENT_LIFETIME
    ) -> IssuedCertificate:
        """A client certificate (the API calling agents): clientAuth only, 24 hours by default."""
        key = _new_key()
        cert = self._sign_leaf(common_name, key.public_key(), [], [], lifetime, server=False)
        return self._issued(cert, _key_pem(key).decode())

    def _issued(self, cert: x509.Certificate, key_pem: str | None) -> IssuedCertificate:
        return IssuedCertificate(
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            key_pem=key_pem,
            serial=cert.serial_number,
            not_after=cert.not_valid_after_utc,
        )

    def _sign_leaf(
        self,
        common_name: str,
        public: ec.EllipticCurvePublicKey,
        ips: list[IPAddress],
        dns_names: list[str],
        lifetime: timedelta,
        *,
        server: bool,
    ) -> x509.Certificate:
        now = self._clock()
        usages = (
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            if server
            else [ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(min(now + lifetime, self.certificate.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        sans: list[x509.GeneralName] = [x509.IPAddress(ip) for ip in ips]
        sans += [x509.DNSName(name) for name in dns_names]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        elif server:
            raise CAError("a host certificate needs at least one IP address or DNS name")
        return builder.sign(self._key, hashes.SHA256())

    # -- revocation ------------------------------------------------------------------------------------------------

    def _read_revoked(self) -> dict[str, str]:
        path = self.directory / _REVOKED
        if not path.exists():
            return {}
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise CAError(f"{path} is not a JSON object")
        return {str(k): str(v) for k, v in data.items()}

    def _write_revoked(self, revoked: dict[str, str]) -> None:
        write_public(self.directory / _REVOKED, (json.dumps(revoked, indent=2, sort_keys=True) + "\n").encode())

    def revoked_serials(self) -> frozenset[int]:
        return frozenset(int(k, 16) for k in self._read_revoked())

    def is_revoked(self, serial: int) -> bool:
        return serial in self.revoked_serials()

    def revoke(self, serial: int) -> None:
        """Add ``serial`` to the revocation list and re-sign the CRL (idempotent)."""
        revoked = self._read_revoked()
        key = format(serial, "x")
        if key not in revoked:
            revoked[key] = self._clock().isoformat()
            self._write_revoked(revoked)
        self.refresh_crl()

    def refresh_crl(self, *, lifetime: timedelta = CRL_LIFETIME) -> str:
        """Sign a new CRL with every revoked serial, valid for ``lifetime``; returns its PEM."""
        now = self._clock()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + lifetime)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        for serial_hex, when in sorted(self._read_revoked().items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial_hex, 16))
                .revocation_date(datetime.fromisoformat(when))
                .build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        pem = crl.public_bytes(serialization.Encoding.PEM)
        write_public(self.crl_file, pem)
        return pem.decode()

    def refresh_crl_if_due(self, *, remaining_fraction: float = 1 / 2) -> bool:
        """Re-sign the CRL when less than ``remaining_fraction`` of its validity is left, or it is missing or
        unreadable. Peers that check revocation refuse everyone once the CRL has expired, so whoever hands the CRL
        out (the control plane's ``/crl`` route) calls this first. Returns whether it re-signed."""
        try:
            crl = x509.load_pem_x509_crl(self.crl_file.read_bytes())
            next_update = crl.next_update_utc
        except (OSError, ValueError):
            next_update = None
        if next_update is not None:
            lifetime = next_update - crl.last_update_utc
            if next_update - self._clock() > lifetime * remaining_fraction:
                return False
        self.refresh_crl()
        return True

    def verify(self, certificate_pem: str) -> x509.Certificate:
        """Check that this CA signed ``certificate_pem`` (signature only; validity is the TLS stack's job)."""
        cert = x509.load_pem_x509_certificate(certificate_pem.encode())
        try:
            cert.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CAError(f"certificate {cert.serial_number:x} was not issued by this CA: {exc}") from exc
        return cert
