"""Linux users for envd: resolving `Authorization: Basic` names and the default user, and a child's environment.

A process runs as the selected user with that user's uid, gid and supplementary groups, HOME/USER/LOGNAME, the
sandbox env vars from /init, then the request's env vars (later ones win).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass

FALLBACK_USER = "user"  # the account every Wrenn/E2B guest image has


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    groups: tuple[int, ...]

    @classmethod
    def from_pwd(cls, entry: pwd.struct_passwd) -> User:
        try:
            groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        except OSError:
            groups = (entry.pw_gid,)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir or "/", groups)


class UnknownUser(LookupError):
    """No such Linux user."""


def lookup(name: str) -> User:
    try:
        return User.from_pwd(pwd.getpwnam(name))
    except KeyError as exc:
        raise UnknownUser(name) from exc


def default_user_name(configured: str | None) -> str:
    """The /init default user, else `user` when it exists and envd may switch to it, else envd's own user."""
    if configured:
        return configured
    me = pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(FALLBACK_USER)
        except KeyError:
            return me
        return FALLBACK_USER
    return me


def child_env(user: User, sandbox_env: Mapping[str, str], request_env: Mapping[str, str]) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
    }
    env.update(sandbox_env)
    env.update(request_env)
    return env
