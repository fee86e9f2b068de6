"""The provisioning toolkit: internal CA, SSH onboarding, wrappers around Ansible and Pulumi."""
