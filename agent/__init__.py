"""Wrenn's host agent: runs sandboxes as microVMs on one KVM host (VMM drivers, network, disks, limits, state)."""
