"""Errors of the sandbox cgroups, each also one of Wrenn's error kinds (`wrenn.protocol.errors`).

    CgroupError             (WrennError, 500)   root of every cgroup error
    ├── CgroupUnavailable   (Unavailable, 503)  no usable cgroup hierarchy (no v2 controllers, no v1 mounts)
    └── CgroupWriteFailed   (Unavailable, 503)  a cgroup file could not be written or the group not removed

``OSError`` from the cgroup filesystem is translated where it happens with ``raise ... from``.
"""

from __future__ import annotations

from wrenn.protocol.errors import Unavailable, WrennError


class CgroupError(WrennError):
    """Root of every cgroup error."""


class CgroupUnavailable(CgroupError, Unavailable):
    """The host has neither cgroup v2 with the needed controllers nor the v1 hierarchies."""


class CgroupWriteFailed(CgroupError, Unavailable):
    """Writing a cgroup file, moving a pid or removing a group failed."""
