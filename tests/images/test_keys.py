"""Cache keys: stable for the same inputs, different when any input that reaches the image changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from wrenn.images import _keys, parse_template
from wrenn.images._keys import image_key, source_key, tree_key

RECIPE = "packages: [git]\nsteps:\n  - RUN true\n  - COPY files /opt/files\ndefaults: {vcpus: 2}\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "files").mkdir()
    (tmp_path / "files/a.txt").write_text("a\n")
    return tmp_path


@pytest.fixture
def envd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in envd source tree, so the test can change envd's sources."""
    envd = tmp_path / "envd-src"
    envd.mkdir()
    (envd / "__init__.py").write_text('"""envd"""\n')
    monkeypatch.setattr(_keys, "envd_source_dir", lambda: envd)
    return envd


def _source(folder: Path, recipe: str = RECIPE, base: str = "", guest: str = "g1") -> str:
    return source_key(parse_template(recipe, name="t"), folder, base_source_key=base, guest_inputs=guest)


def test_source_key_is_stable(folder: Path, envd: Path) -> None:
    first = _source(folder)
    assert first == _source(folder)
    (envd / "__pycache__").mkdir()
    (envd / "__pycache__/x.cpython-311.pyc").write_bytes(b"bytecode")
    assert _source(folder) == first, "bytecode caches are not inputs"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda folder, envd: (folder / "files/a.txt").write_text("b\n"), id="copy-content"),
        pytest.param(lambda folder, envd: (folder / "files/new.txt").write_text("x"), id="copy-new-file"),
        pytest.param(lambda folder, envd: (folder / "files/a.txt").chmod(0o755), id="copy-mode"),
        pytest.param(lambda folder, envd: (envd / "__init__.py").write_text("changed"), id="envd-source"),
        pytest.param(lambda folder, envd: (envd / "_new.py").write_text(""), id="envd-new-module"),
    ],
)
def test_source_key_follows_files(folder: Path, envd: Path, change: object) -> None:
    before = _source(folder)
    assert callable(change)
    change(folder, envd)
    assert _source(folder) != before


@pytest.mark.parametrize(
    ("recipe", "base", "guest"),
    [
        pytest.param(RECIPE.replace("RUN true", "RUN false"), "", "g1", id="step"),
        pytest.param(RECIPE.replace("[git]", "[git, curl]"), "", "g1", id="packages"),
        pytest.param(RECIPE.replace("vcpus: 2", "vcpus: 4"), "", "g1", id="defaults"),
        pytest.param(RECIPE + "kernel: microvm\n", "", "g1", id="kernel"),
        pytest.param(RECIPE, "base-key", "g1", id="base"),
        pytest.param(RECIPE, "", "g2", id="init-or-initramfs"),
    ],
)
def test_source_key_follows_recipe_and_guest(folder: Path, envd: Path, recipe: str, base: str, guest: str) -> None:
    assert _source(folder, recipe, base, guest) != _source(folder)


def test_image_key_follows_outside_inputs() -> None:
    key = image_key("s", kernel_package="k=1", debian_release="d", base_key="")
    assert key == image_key("s", kernel_package="k=1", debian_release="d", base_key="")
    others = {
        image_key("s2", kernel_package="k=1", debian_release="d", base_key=""),
        image_key("s", kernel_package="k=2", debian_release="d", base_key=""),
        image_key("s", kernel_package="k=1", debian_release="d2", base_key=""),
        image_key("s", kernel_package="k=1", debian_release="d", base_key="b"),
    }
    assert key not in others
    assert len(others) == 4


def _tree(folder: Path, recipe: str = RECIPE, release: str = "r1") -> str:
    template = parse_template(recipe, name="t")
    return tree_key(template, folder, base_key="", debian_release=release, mirror="http://m")


def test_tree_key_ignores_what_does_not_change_the_tree(folder: Path, envd: Path) -> None:
    before = _tree(folder)
    (envd / "__init__.py").write_text("changed")
    assert _tree(folder, RECIPE.replace("vcpus: 2", "vcpus: 8") + "kernel: microvm\n") == before


@pytest.mark.parametrize(
    ("recipe", "release"),
    [
        pytest.param(RECIPE.replace("RUN true", "RUN false"), "r1", id="step"),
        pytest.param(RECIPE.replace("[git]", "[curl]"), "r1", id="packages"),
        pytest.param(RECIPE, "r2", id="debian-release"),
    ],
)
def test_tree_key_follows_packages_steps_and_debian(folder: Path, recipe: str, release: str) -> None:
    assert _tree(folder, recipe, release) != _tree(folder)
