"""The image cache: find_image matches on the repository inputs, newest first; builds of one key serialize."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from wrenn.images import GuestImage, ImageNotFound, find_image, list_images, prune_images, source_key_of
from wrenn.images._cache import build_dir, image_dir, key_lock
from wrenn.images._manifest import write_manifest
from wrenn.images._mirror import host_mirror
from wrenn.images._recipe import Defaults
from wrenn.images._rootfs import expand


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    folder = tmp_path / "templates/demo"
    folder.mkdir(parents=True)
    (folder / "template.yaml").write_text("packages: [git]\n")
    return tmp_path / "templates"


def _fake_image(cache: Path, name: str, key: str, source: str, built_at: datetime) -> GuestImage:
    directory = image_dir(cache, name, key)
    directory.mkdir(parents=True)
    for file in ("vmlinuz", "initrd.gz", "rootfs.ext4"):
        (directory / file).write_bytes(b"x")
    image = GuestImage(
        name=name,
        key=key,
        source_key=source,
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.gz",
        rootfs=directory / "rootfs.ext4",
        kernel_cmdline="console=ttyS0",
        defaults=Defaults(),
        size_bytes=1,
        allocated_bytes=1,
        build_seconds=1.0,
        built_at=built_at,
        kernel_package="k=1",
        debian_release="d",
    )
    write_manifest(directory, image)
    return image


def test_find_image_returns_newest_match_with_absolute_paths(tmp_path: Path, templates: Path) -> None:
    cache = tmp_path / "cache"
    source = source_key_of("demo", templates)
    now = datetime.now(UTC)
    _fake_image(cache, "demo", "a" * 64, source, now - timedelta(hours=1))
    newest = _fake_image(cache, "demo", "b" * 64, source, now)
    _fake_image(cache, "demo", "c" * 64, "other-sources", now + timedelta(hours=1))
    found = find_image("demo", cache_dir=cache, templates=templates)
    assert found.key == newest.key
    assert found.rootfs == image_dir(cache, "demo", "b" * 64) / "rootfs.ext4"
    assert found.rootfs.is_absolute()
    assert found.rootfs.exists()
    assert '"rootfs": "rootfs.ext4"' in (found.rootfs.parent / "manifest.json").read_text()
    assert [image.key[0] for image in list_images(cache)] == ["c", "b", "a"]


def test_find_image_names_the_build_command(tmp_path: Path, templates: Path) -> None:
    with pytest.raises(ImageNotFound, match=r"`wrenn image build demo`") as caught:
        find_image("demo", cache_dir=tmp_path / "empty", templates=templates)
    assert "inputs have changed" not in caught.value.message


def test_find_image_says_when_inputs_changed(tmp_path: Path, templates: Path) -> None:
    cache = tmp_path / "cache"
    _fake_image(cache, "demo", "a" * 64, source_key_of("demo", templates), datetime.now(UTC))
    (templates / "demo/template.yaml").write_text("packages: [git, curl]\n")
    with pytest.raises(ImageNotFound, match="inputs have changed"):
        find_image("demo", cache_dir=cache, templates=templates)


def test_env_var_selects_the_cache(tmp_path: Path, templates: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    _fake_image(cache, "demo", "a" * 64, source_key_of("demo", templates), datetime.now(UTC))
    monkeypatch.setenv("WRENN_IMAGE_CACHE", str(cache))
    assert find_image("demo", templates=templates).key == "a" * 64


def test_builds_of_one_key_serialize_and_clear_stale_folders(tmp_path: Path) -> None:
    stale = tmp_path / "demo" / ".tmp-kkkkkkkkkkkkkkkk-99999999"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("half a build")
    order: list[str] = []
    first_in = threading.Event()

    def second() -> None:
        first_in.wait()
        with key_lock(tmp_path, "demo", "k" * 64):
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with key_lock(tmp_path, "demo", "k" * 64):
        assert not stale.exists(), "a dead builder's folder is removed once the lock is held"
        first_in.set()
        thread.join(timeout=0.5)
        assert thread.is_alive(), "the second build must wait for the lock"
        order.append("first")
    thread.join(timeout=30)
    assert order == ["first", "second"]
    assert build_dir(tmp_path, "demo", "k" * 64).name.startswith(".tmp-kkkkkkkkkkkkkkkk-")


@pytest.mark.parametrize(
    ("value", "expanded"),
    [
        ("$PATH:/x", "/bin:/x"),
        ("${PATH}/y", "/bin/y"),
        ("${MISSING:-fallback}", "fallback"),
        ("${PATH:-fallback}", "/bin"),
        ("$MISSING", ""),
        ("\\$PATH", "$PATH"),
        ("plain", "plain"),
    ],
)
def test_env_expansion_against_the_image_environment(value: str, expanded: str) -> None:
    assert expand(value, {"PATH": "/bin"}) == expanded


def test_mirror_comes_from_the_hosts_apt_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WRENN_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/other.sources").write_text(
        "Types: deb\nURIs: http://example.invalid/security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example.invalid/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main contrib\n"
    )
    assert host_mirror(tmp_path) == "http://mirror.example.invalid/debian"
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://one-line.example.invalid/debian bookworm main\n")
    assert host_mirror(tmp_path) == "http://one-line.example.invalid/debian"
    monkeypatch.setenv("WRENN_DEBIAN_MIRROR", "http://override.example.invalid/debian/")
    assert host_mirror(tmp_path) == "http://override.example.invalid/debian"


def test_prune_keeps_the_newest_and_any_image_in_use(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    now = datetime.now(UTC)
    old = _fake_image(cache, "demo", "a" * 64, "s", now - timedelta(hours=2))
    held = _fake_image(cache, "demo", "b" * 64, "s", now - timedelta(hours=1))
    newest = _fake_image(cache, "demo", "c" * 64, "s", now)
    (cache / "demo/.tree-0000000000000000.tar").write_bytes(b"unreferenced tree")
    with open(held.rootfs, "rb"):  # stands in for a VMM that has its base image open
        removed = prune_images(cache, keep=1)
    assert removed == [old.rootfs.parent]
    assert held.rootfs.exists()
    assert newest.rootfs.exists()
    assert not (cache / "demo/.tree-0000000000000000.tar").exists()
