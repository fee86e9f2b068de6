"""Errors of the provisioning toolkit, one root for the whole package.

    ProvisionError
    ├── CAError                    the internal certificate authority
    │   ├── CANotFound             no CA at the given directory
    │   ├── CAExists               refusing to overwrite an existing CA
    │   └── CertificateRequestError  a CSR that is malformed or not signed by its own key
    ├── RemoteHostError            SSH onboarding
    │   ├── SSHConnectError        the host cannot be reached or refuses the key
    │   └── HostFactsError         the host does not meet the requirements (OS, arch, cgroups)
    ├── PlaybookError              ansible-playbook exited non-zero
    └── RegistrationTimeout        the agent did not report in to the control plane in time

Library errors (OpenSSL via `cryptography`, paramiko, subprocess) are translated at the boundary with ``raise … from``.
"""

from __future__ import annotations

__all__ = [
    "CAError",
    "CAExists",
    "CANotFound",
    "CertificateRequestError",
    "HostFactsError",
    "PlaybookError",
    "ProvisionError",
    "RegistrationTimeout",
    "RemoteHostError",
    "SSHConnectError",
]


class ProvisionError(Exception):
    """Root of every error raised by `wrenn.provision`."""


class CAError(ProvisionError):
    """The internal certificate authority could not do what was asked."""


class CANotFound(CAError):
    """There is no CA (certificate and key) in the directory."""


class CAExists(CAError):
    """A CA already exists where a new one was to be created."""


class CertificateRequestError(CAError):
    """A certificate signing request is malformed or its signature does not verify."""


class RemoteHostError(ProvisionError):
    """Something went wrong on, or on the way to, a host being onboarded."""


class SSHConnectError(RemoteHostError):
    """The SSH connection could not be established or authenticated."""


class HostFactsError(RemoteHostError):
    """The remote host does not meet Wrenn's requirements; ``problems`` lists each one."""

    def __init__(self, host: str, problems: list[str]) -> None:
        super().__init__(f"{host}: " + "; ".join(problems))
        self.host = host
        self.problems = problems


class PlaybookError(ProvisionError):
    """``ansible-playbook`` exited with a non-zero status; the tail of its output is kept."""

    def __init__(self, playbook: str, returncode: int, output: str) -> None:
        super().__init__(f"{playbook} failed with exit status {returncode}:\n{output[-4000:]}")
        self.playbook = playbook
        self.returncode = returncode
        self.output = output


class RegistrationTimeout(ProvisionError):
    """The onboarded agent did not register with the control plane before the deadline."""
