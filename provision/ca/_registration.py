"""What the control plane hands a host at registration: its certificate (signed from the agent's CSR) and the CA.

The names in the certificate come from the address the agent registered with (``https://10.0.0.5:5007`` gives an
IP SAN, ``https://host-3.example.net:5007`` a DNS SAN), never from the CSR, so an agent cannot obtain a certificate
for another host's name. Without a CA (development) both fields are ``None`` and the agent serves plain HTTP.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from wrenn.provision._errors import CertificateRequestError
from wrenn.provision.ca._authority import CertificateAuthority

__all__ = ["RegistrationCertificates", "certificates_for_registration", "sans_for_address"]


@dataclass(frozen=True)
class RegistrationCertificates:
    certificate_pem: str | None
    ca_pem: str | None


def sans_for_address(address: str) -> tuple[list[str], list[str]]:
    """``(ip_addresses, dns_names)`` for an agent base URL."""
    host = urlsplit(address).hostname
    if not host:
        raise CertificateRequestError(f"no host in the agent address {address!r}")
    try:
        return [str(ipaddress.ip_address(host))], []
    except ValueError:
        return [], [host]


def certificates_for_registration(
    ca: CertificateAuthority | None, *, address: str, csr_pem: str | None
) -> RegistrationCertificates:
    """Sign the agent's CSR for the address it registered (also used on refresh, with the same arguments)."""
    if ca is None:
        return RegistrationCertificates(certificate_pem=None, ca_pem=None)
    if csr_pem is None:
        return RegistrationCertificates(certificate_pem=None, ca_pem=ca.ca_pem)
    ips, names = sans_for_address(address)
    issued = ca.issue_host_from_csr(csr_pem, ip_addresses=ips, dns_names=names)
    return RegistrationCertificates(certificate_pem=issued.certificate_pem, ca_pem=ca.ca_pem)
