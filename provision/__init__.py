"""The provisioning toolkit: internal CA, SSH onboarding, wrappers around Ansible and Pulumi.

- `wrenn.provision.ca`: the internal certificate authority and the mutual-TLS contexts (hot-swapped certificates).
- `wrenn.provision.onboard`: ``wrenn provision host`` — remote fact check over SSH, registration token, the
  onboarding playbook, waiting for the agent to report in.
- Errors: one root, `ProvisionError` (tree in `wrenn.provision._errors`).
"""

from __future__ import annotations

from wrenn.provision._errors import (
    CAError,
    CAExists,
    CANotFound,
    CertificateRequestError,
    HostFactsError,
    PlaybookError,
    ProvisionError,
    RegistrationTimeout,
    RemoteHostError,
    SSHConnectError,
)

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
