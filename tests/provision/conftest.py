"""Fixtures of the provisioning tests: the ephemeral CA from `wrenn.provision.ca.testing`."""

from wrenn.provision.ca.testing import ephemeral_ca

__all__ = ["ephemeral_ca"]
