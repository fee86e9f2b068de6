"""Building a template into a cached guest image, and finding built images.

One build goes through `BuildState`: RESOLVING (template chain, source key, Debian mirror date, kernel package
-> image key; a cached image with that key ends the build here) -> ROOTFS (debootstrap, or the base template's
tree) -> STEPS (platform files, the recipe's steps) -> FILESYSTEM (ext4 image) -> KERNEL (kernel + initramfs) ->
DONE, or FAILED with the build folder removed.
"""

from __future__ import annotations

import enum
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from . import _cache, _kernel, _keys, _microvm_kernel, _mirror, _rootfs
from ._errors import BuildError, ImageError, TemplateError
from ._manifest import GuestImage, write_manifest
from ._recipe import DEBIAN_BASE, NAME_PATTERN, Template, load_template
from ._run import Progress, quiet

ROOT_CMDLINE = "wrenn.root=/dev/vda"


class BuildState(enum.StrEnum):
    RESOLVING = "resolving"
    ROOTFS = "rootfs"
    STEPS = "steps"
    FILESYSTEM = "filesystem"
    KERNEL = "kernel"
    DONE = "done"
    FAILED = "failed"


def templates_dir() -> Path:
    """The templates shipped in the repository (``images/templates``)."""
    return Path(__file__).parent / "templates"


def template_folder(name: str, templates: Path | None = None) -> Path:
    """A template name (looked up in `templates`) or a path to a template folder."""
    if "/" in name:
        return Path(name).resolve()
    import re

    if not re.match(NAME_PATTERN, name):
        raise TemplateError(name, [("name", f"{name!r} is not a template name")])
    return (templates or templates_dir()) / name


def load(name: str, templates: Path | None = None) -> tuple[Template, Path]:
    folder = template_folder(name, templates)
    return load_template(folder), folder


def source_key_of(name: str, templates: Path | None = None, _chain: tuple[str, ...] = ()) -> str:
    """The offline part of the key, following the base chain (cycles are a template error)."""
    template, folder = load(name, templates)
    if template.name in _chain:
        raise TemplateError(str(folder), [("base", f"base chain loops: {' -> '.join((*_chain, template.name))}")])
    base_key = ""
    if template.base != DEBIAN_BASE:
        base_key = source_key_of(template.base, templates, (*_chain, template.name))
    # The command lines are inputs too: a changed one must not hide behind a cached manifest.
    cmdlines = f"{_microvm_kernel.CMDLINE}\n{ROOT_CMDLINE}\n{_kernel.GUEST_INIT_PATH}".encode()
    guest = _kernel.guest_inputs_digest(_rootfs.guest_init_source() + cmdlines)
    return _keys.source_key(template, folder, base_source_key=base_key, guest_inputs=guest)


def find_image(name: str, cache_dir: Path | None = None, templates: Path | None = None) -> GuestImage:
    """The newest built image of template `name` whose repository inputs are unchanged; no network.

    Raises `ImageNotFound` (naming ``wrenn image build <name>``) when there is none."""
    root = _cache.cache_root(cache_dir)
    template, _ = load(name, templates)
    return _cache.newest_matching(root, template.name, source_key_of(name, templates))


def list_images(cache_dir: Path | None = None) -> list[GuestImage]:
    return _cache.all_images(_cache.cache_root(cache_dir))


def prune_images(cache_dir: Path | None = None, keep: int = 1) -> list[Path]:
    """Remove all but the `keep` newest images per template (never one a running VMM has open)."""
    return _cache.prune(_cache.cache_root(cache_dir), keep)


def build_image(
    name: str,
    *,
    cache_dir: Path | None = None,
    templates: Path | None = None,
    force: bool = False,
    progress: Progress = quiet,
) -> GuestImage:
    """Build template `name` (and its base templates) unless an image with the same inputs is cached."""
    root = _cache.cache_root(cache_dir)
    template, folder = load(name, templates)
    progress(BuildState.RESOLVING, f"template {template.name} from {folder}")
    source = source_key_of(name, templates)
    base = None
    if template.base != DEBIAN_BASE:
        base = build_image(template.base, cache_dir=root, templates=templates, force=False, progress=progress)
    mirror = _mirror.host_mirror()
    try:
        release = _mirror.release_date(mirror)
    except BuildError as exc:
        if force:
            raise
        progress(BuildState.RESOLVING, f"{exc.message}; looking for a cached image with the same sources")
        return _cache.newest_matching(root, template.name, source)
    kernel = _microvm_kernel.kernel_name() if template.kernel == "microvm" else str(_kernel.resolve_kernel_package())
    key = _keys.image_key(source, kernel_package=kernel, debian_release=release, base_key=base.key if base else "")
    progress(BuildState.RESOLVING, f"key {key[:16]} (mirror {mirror}, Release {release}, kernel {kernel})")
    if not force and (found := _cache.cached(root, template.name, key)) is not None:
        progress(BuildState.DONE, f"cached: {found.rootfs.parent}")
        return found
    with _cache.key_lock(root, template.name, key):
        if not force and (found := _cache.cached(root, template.name, key)) is not None:
            progress(BuildState.DONE, f"built meanwhile by another build: {found.rootfs.parent}")
            return found
        work = _cache.build_dir(root, template.name, key)
        started = time.monotonic()
        try:
            image = _build(
                template, folder, work, key=key, source=source, base=base, mirror=mirror, release=release,
                kernel=kernel, store=root / ".kernels", deb_cache=root / ".debs", progress=progress, started=started,
            )  # fmt: skip
            final = _cache.image_dir(root, template.name, key)
            if final.exists():
                retired = final.with_name(f".old-{final.name}-{os.getpid()}")
                final.rename(retired)
                shutil.rmtree(retired)
            work.rename(final)
        except BaseException as exc:
            shutil.rmtree(work, ignore_errors=True)
            if isinstance(exc, OSError):
                raise BuildError("build", f"{exc.strerror or exc} ({exc.filename or ''})") from exc
            if isinstance(exc, ImageError | KeyboardInterrupt):
                progress(BuildState.FAILED, str(exc).splitlines()[0])
            raise
    built = _cache.cached(root, template.name, key)
    if built is None:
        raise BuildError("build", f"{final} has no readable manifest after the build")
    progress(BuildState.DONE, f"{final} in {image.build_seconds:.0f} s, rootfs {image.size_bytes >> 20} MiB")
    return built


def _build(
    template: Template,
    folder: Path,
    work: Path,
    *,
    key: str,
    source: str,
    base: GuestImage | None,
    mirror: str,
    release: str,
    kernel: str,
    store: Path,
    deb_cache: Path,
    progress: Progress,
    started: float,
) -> GuestImage:
    work.mkdir(parents=True)
    tree = work / "tree"
    tree_key = _keys.tree_key(
        template, folder, base_key=base.key if base else "", debian_release=release, mirror=mirror
    )
    archive = work.parent / f".tree-{tree_key[:16]}.tar"
    state = _rootfs.load_tree(tree, archive)
    if state is not None:
        progress(BuildState.ROOTFS, f"reusing the package tree {archive.name} (recipe and Debian unchanged)")
    else:
        if base is None:
            progress(BuildState.ROOTFS, f"debootstrap bookworm from {mirror}")
            _rootfs.debootstrap(tree, template, mirror=mirror, deb_cache=deb_cache, progress=progress)
            state = _rootfs.ImageState()
        else:
            progress(BuildState.ROOTFS, f"starting from {base.name} ({base.key[:16]})")
            state = _rootfs.unpack_base(tree, base.rootfs.parent.parent / base.tree, template, progress=progress)
        _rootfs.run_steps(tree, folder, template.steps, state, progress=progress)
        progress(BuildState.STEPS, f"saving the package tree as {archive.name}")
        _rootfs.save_tree(tree, archive, state)
    progress(BuildState.STEPS, "installing envd and the init")
    _rootfs.install_platform(tree)
    _rootfs.finish(tree, state, progress=progress)
    progress(BuildState.FILESYSTEM, "mkfs.ext4 -d")
    rootfs = work / "rootfs.ext4"
    size = _rootfs.make_ext4(tree, rootfs, progress=progress)
    _rootfs.remove_tree(tree)
    if template.kernel == "microvm":
        progress(BuildState.KERNEL, f"kernel {kernel} (built once from {_microvm_kernel.SOURCE_PACKAGE})")
        kernel_dir = _microvm_kernel.build_microvm_kernel(store, progress)
        vmlinux, initrd = work / "vmlinux", None
        shutil.copy(kernel_dir / "vmlinux", vmlinux)
        cmdline = f"{_microvm_kernel.CMDLINE} init={_kernel.GUEST_INIT_PATH} {ROOT_CMDLINE}"
    else:
        progress(BuildState.KERNEL, f"kernel {kernel} and initramfs")
        kernel_dir = _kernel.fetch_kernel(_kernel.KernelPackage.parse(kernel), store, progress)
        vmlinux, initrd = work / "vmlinuz", work / "initrd.gz"
        shutil.copy(kernel_dir / "vmlinuz", vmlinux)
        _kernel.build_initramfs(kernel_dir, initrd)
        cmdline = f"{_kernel.BASE_CMDLINE} {ROOT_CMDLINE}"
    image = GuestImage(
        name=template.name,
        key=key,
        source_key=source,
        kernel=vmlinux,
        initrd=initrd,
        rootfs=rootfs,
        kernel_cmdline=cmdline,
        defaults=template.defaults,
        env=state.env,
        user=state.user,
        workdir=state.workdir,
        healthcheck=template.healthcheck,
        size_bytes=size,
        allocated_bytes=rootfs.stat().st_blocks * 512,
        build_seconds=round(time.monotonic() - started, 1),
        built_at=datetime.now(UTC),
        kernel_package=kernel,
        debian_release=release,
        tree=archive.name,
    )
    write_manifest(work, image)
    return image
