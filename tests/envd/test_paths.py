"""User-relative path resolution: the table of what clients send and where it lands."""

from __future__ import annotations

import pytest

from wrenn.envd._paths import PathError, resolve

HOME = "/home/user"


@pytest.mark.parametrize(
    ("path", "workdir", "expected"),
    [
        ("/etc/hosts", None, "/etc/hosts"),
        ("/etc/../etc/./hosts", None, "/etc/hosts"),
        ("//double//slashes/", None, "/double/slashes"),
        ("~", None, HOME),
        ("~/notes.txt", None, f"{HOME}/notes.txt"),
        ("~/../other", None, "/home/other"),
        ("data/x.csv", None, f"{HOME}/data/x.csv"),
        ("data/x.csv", "/work", "/work/data/x.csv"),
        ("../up", "/work/dir", "/work/up"),
        ("", None, HOME),
        ("", "/work", "/work"),
        ("../../../../..", None, "/"),
        ("~/x", "/work", f"{HOME}/x"),
    ],
)
def test_resolve(path: str, workdir: str | None, expected: str) -> None:
    assert resolve(path, home=HOME, workdir=workdir) == expected


@pytest.mark.parametrize("path", ["~root/x", "~other", "a\x00b"])
def test_resolve_refuses(path: str) -> None:
    with pytest.raises(PathError):
        resolve(path, home=HOME)


def test_relative_base_must_be_absolute() -> None:
    with pytest.raises(PathError):
        resolve("x", home="relative/home")
