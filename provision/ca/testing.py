"""An ephemeral CA for TLS tests: ``from wrenn.provision.ca.testing import ephemeral_ca`` in a conftest.

The fixture gives an `EphemeralCA`: a real CA in a temporary directory, with helpers that write a host's or a
client's certificate files and return the `TLSFiles` to build contexts from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from wrenn.provision.ca._authority import CertificateAuthority
from wrenn.provision.ca._tls import TLSFiles

__all__ = ["EphemeralCA", "ephemeral_ca"]


@dataclass
class EphemeralCA:
    ca: CertificateAuthority
    directory: Path

    def host_files(self, name: str = "agent", ip_addresses: Sequence[str] = ("127.0.0.1",)) -> TLSFiles:
        """Issue a host certificate and write it next to the CA; the files check peers against the CRL."""
        issued = self.ca.issue_host(name, ip_addresses=ip_addresses, dns_names=["localhost"])
        cert, key = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        issued.write(cert, key)
        return TLSFiles(ca_file=self.ca.ca_file, cert_file=cert, key_file=key, crl_file=self.ca.crl_file)

    def client_files(self, name: str = "wrenn-api") -> TLSFiles:
        """Issue a client certificate and write it next to the CA."""
        issued = self.ca.issue_client(name)
        cert, key = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        issued.write(cert, key)
        return TLSFiles(ca_file=self.ca.ca_file, cert_file=cert, key_file=key)


@pytest.fixture
def ephemeral_ca(tmp_path_factory: pytest.TempPathFactory) -> EphemeralCA:
    directory = tmp_path_factory.mktemp("ca")
    return EphemeralCA(ca=CertificateAuthority.create(directory / "root"), directory=directory)
