"""User-relative path resolution for the filesystem service and file transfer.

E2B clients send paths the way a shell user types them: absolute (``/etc/hosts``), home-relative (``~``,
``~/notes.txt``) or relative (``data/x.csv``), the last resolved against the sandbox's default working directory
when ``/init`` set one, else against the user's home. The result is always an absolute, normalised path; symlinks
are left alone (the kernel follows them later, with the user's own rights).
"""

from __future__ import annotations

import posixpath


class PathError(ValueError):
    """A path that cannot be resolved (empty where one is required, ``~user`` forms, NUL bytes)."""


def resolve(path: str, *, home: str, workdir: str | None = None) -> str:
    """Return the absolute, normalised form of ``path`` for a user whose home is ``home``.

    ``~`` and ``~/…`` expand to ``home``; ``~name`` is refused (it would name another user's home, which the
    request's user did not ask to act as). Relative paths join ``workdir`` if given, else ``home``. An empty path
    means the base directory itself, as in E2B's envd.
    """
    if "\x00" in path:
        raise PathError("path contains a NUL byte")
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    elif path.startswith("~"):
        raise PathError(f"cannot expand {path.split('/', 1)[0]!r}: only '~' (the user's home) is supported")
    if not path.startswith("/"):
        base = workdir if workdir else home
        if not base.startswith("/"):
            raise PathError(f"base directory {base!r} is not absolute")
        path = posixpath.join(base, path)
    normalised = posixpath.normpath(path)
    # normpath keeps a leading "//" (POSIX leaves its meaning to the implementation); Linux treats it as "/".
    if normalised.startswith("//"):
        normalised = "/" + normalised.lstrip("/")
    return normalised
