"""The internal certificate authority and the TLS plumbing of mutual TLS between the API and the host agents.

- `CertificateAuthority`: an ECDSA P-256 root in a directory (``ca.pem``, ``ca.key`` 0600, ``crl.pem``); issues host
  certificates (IP/DNS SANs, 7 days) and the API's client certificate (24 hours); revokes serials into a CRL.
- `certificates_for_registration`: what ``POST /v1/hosts/register`` returns in ``certificate_pem``/``ca_pem``
  (both ``None`` when no CA is configured: plain HTTP, development only).
- `ReloadingServerContext` (agents) and `ReloadingClientContext` (the API's httpx client) swap certificates and CRLs
  without a restart; `CertificateRenewer` renews a certificate in the background and calls the reload.
- `wrenn.provision.ca.testing.ephemeral_ca`: a pytest fixture for other packages' TLS tests.

Wiring in the control plane::

    ca = CertificateAuthority.load_or_create(settings.ca_dir)          # only when a CA is configured
    files = TLSFiles(ca.ca_file, data_dir / "api.pem", data_dir / "api.key", ca.crl_file)
    async def issue() -> IssuedCertificate: return ca.issue_client("wrenn-api")
    renewer = CertificateRenewer(issue=issue, cert_file=files.cert_file, key_file=files.key_file, clock=clock)
    async with renewer:                                                # writes a valid cert before returning
        tls = ReloadingClientContext(files)
        renewer.on_renewed = lambda _: tls.reload()
        client = httpx.AsyncClient(verify=tls.context)
"""

from __future__ import annotations

from wrenn.provision._errors import CAError, CAExists, CANotFound, CertificateRequestError
from wrenn.provision.ca._authority import (
    CA_LIFETIME,
    CLIENT_LIFETIME,
    CRL_LIFETIME,
    HOST_LIFETIME,
    CertificateAuthority,
    Clock,
    IssuedCertificate,
    generate_key_and_csr,
    needs_renewal,
)
from wrenn.provision.ca._registration import (
    RegistrationCertificates,
    certificates_for_registration,
    sans_for_address,
)
from wrenn.provision.ca._renewal import CertificateRenewer
from wrenn.provision.ca._tls import (
    ReloadingClientContext,
    ReloadingServerContext,
    TLSFiles,
    client_context,
    server_context,
)

__all__ = [
    "CA_LIFETIME",
    "CLIENT_LIFETIME",
    "CRL_LIFETIME",
    "HOST_LIFETIME",
    "CAError",
    "CAExists",
    "CANotFound",
    "CertificateAuthority",
    "CertificateRenewer",
    "CertificateRequestError",
    "Clock",
    "IssuedCertificate",
    "RegistrationCertificates",
    "ReloadingClientContext",
    "ReloadingServerContext",
    "TLSFiles",
    "certificates_for_registration",
    "client_context",
    "generate_key_and_csr",
    "needs_renewal",
    "sans_for_address",
    "server_context",
]
