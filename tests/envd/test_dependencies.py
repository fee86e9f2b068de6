"""envd ships into every guest: its imports stay within the standard library plus an explicit allow-list, and it
only imports itself relatively (the image copies the folder under another package name)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ENVD = Path(__file__).resolve().parents[2] / "envd"
ALLOWED_THIRD_PARTY = {"google.protobuf", "h11"}
MODULES = sorted(ENVD.glob("*.py"))


def _allowed(name: str) -> bool:
    top = name.split(".")[0]
    if top in sys.stdlib_module_names:
        return True
    return any(name == allowed or name.startswith(allowed + ".") for allowed in ALLOWED_THIRD_PARTY)


def _imports(path: Path) -> list[tuple[int, str, int]]:
    """(line, module name, relative level) of every import in the file."""
    found: list[tuple[int, str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", node.level))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
                found.append((node.lineno, arg.value, 0))
    return found


def test_there_are_modules_to_check() -> None:
    assert {"_http.py", "_connect.py", "_proto.py", "_process.py"} <= {p.name for p in MODULES}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_imports_are_stdlib_allow_list_or_relative(path: Path) -> None:
    bad = [
        f"{path.name}:{line} imports {name}"
        for line, name, level in _imports(path)
        if level == 0 and not _allowed(name)
    ]
    assert not bad, "envd may only import the standard library, " + ", ".join(sorted(ALLOWED_THIRD_PARTY))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_never_imports_wrenn(path: Path) -> None:
    assert not [name for _, name, level in _imports(path) if level == 0 and name.split(".")[0] in {"wrenn", "envd"}]


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import requests\nfrom wrenn.api import x\nfrom . import _http\nimport json\n")
    names = [(name, level) for _, name, level in _imports(sample)]
    assert [n for n, level in names if level == 0 and not _allowed(n)] == ["requests", "wrenn.api"]
