"""The root file system: debootstrap (or the base template's tree), the platform files every image carries (envd,
the init, image config), the recipe's steps run inside the tree, and the ext4 image made from the folder with
``mkfs.ext4 -d`` (nothing is ever mounted on the host).

Every command inside the tree runs as ``unshare --mount --propagation private`` + ``chroot``: the /proc, /sys and
/dev mounts a step needs live in a private mount namespace and vanish with it, so a failed or killed build can
never leave mounts behind on the host.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from ._errors import BuildError
from ._kernel import GUEST_INIT_PATH
from ._keys import envd_source_dir
from ._recipe import CopyStep, EnvStep, RunStep, Step, Template, UserStep, WorkdirStep
from ._run import Progress, run

ENVD_DIR = "opt/wrenn/wrenn_envd"
IMAGE_CONFIG = "etc/wrenn/image.json"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_VAR = re.compile(r"\\\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_IN_TREE = """set -e
mount -t proc proc "$1/proc"
mount -t sysfs sys "$1/sys"
mount --rbind /dev "$1/dev"
root=$1; shift
exec chroot "$root" "$@"
"""


class ImageState:
    """What the steps have set so far: environment (ENV), working directory and user."""

    def __init__(self, env: Mapping[str, str] | None = None, workdir: str = "/", user: str = "root") -> None:
        self.env: dict[str, str] = dict(env or {"PATH": BASE_PATH, "LANG": "C.UTF-8"})
        self.workdir = workdir
        self.user = user


def expand(value: str, env: Mapping[str, str]) -> str:
    """``$VAR``, ``${VAR}`` and ``${VAR:-default}`` against `env`; ``\\$`` is a literal dollar sign."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "\\$":
            return "$"
        name = match.group(1) or match.group(3)
        found = env.get(name, "")
        return found if found or match.group(2) is None else match.group(2)

    return _VAR.sub(one, value)


def debootstrap(tree: Path, template: Template, *, mirror: str, deb_cache: Path, progress: Progress) -> None:
    deb_cache.mkdir(parents=True, exist_ok=True)
    argv = ["debootstrap", "--variant=minbase", f"--cache-dir={deb_cache}"]
    if template.packages:
        argv.append("--include=" + ",".join(template.packages))
    argv += ["bookworm", str(tree), mirror]
    run(argv, step="debootstrap", progress=progress)


def unpack_base(tree: Path, base_tree: Path, template: Template, *, progress: Progress) -> ImageState:
    """Start from the base template's saved package tree (debugfs' rdump would lose setuid bits), then add the
    template's packages."""
    state = load_tree(tree, base_tree)
    if state is None:
        raise BuildError("unpack-base", f"the base's package tree {base_tree} is gone; rebuild the base with --force")
    if template.packages:
        with _network_in(tree):
            script = "apt-get update -q && apt-get install -y -q --no-install-recommends " + shlex.join(
                template.packages
            )
            in_tree(tree, ["/bin/sh", "-c", script], ImageState(), step="packages", progress=progress)
    return state


def in_tree(tree: Path, argv: list[str], state: ImageState, *, step: str, progress: Progress) -> None:
    """Run `argv` inside the tree as `state.user` in `state.workdir` with `state.env` (plus HOME/USER)."""
    home = _passwd(tree).get(state.user, ("", "", "/"))[2]
    env = {**state.env, "HOME": home, "USER": state.user, "LOGNAME": state.user, "DEBIAN_FRONTEND": "noninteractive"}
    user = (
        ["setpriv", f"--reuid={state.user}", f"--regid={state.user}", "--init-groups"] if state.user != "root" else []
    )
    command = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *user]
    command += ["/bin/sh", "-c", 'cd "$0" && exec "$@"', state.workdir, *argv]
    host = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", _IN_TREE, "in-tree", str(tree)]
    run([*host, *command], step=step, progress=progress)


def save_tree(tree: Path, archive: Path, state: ImageState) -> None:
    """Keep the package tree (owners, modes, xattrs) as a tar next to the state its steps left; atomic."""
    partial = archive.with_name(f"{archive.name}.{os.getpid()}.partial")
    try:
        run(["tar", "--numeric-owner", "--xattrs", "-C", str(tree), "-cpf", str(partial), "."], step="save-tree")
        config = {"env": state.env, "user": state.user, "workdir": state.workdir}
        archive.with_suffix(".json").write_text(json.dumps(config))
        os.replace(partial, archive)
    finally:
        partial.unlink(missing_ok=True)
    prune_trees(archive.parent, keep={archive.name})


def prune_trees(folder: Path, keep: set[str]) -> None:
    """Remove saved trees in `folder` that no image there refers to (other than `keep`)."""
    for manifest in folder.glob("*/manifest.json"):
        try:
            keep.add(str(json.loads(manifest.read_text()).get("tree", "")))
        except (OSError, ValueError):
            continue
    for old in folder.glob(".tree-*.tar"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)


def load_tree(tree: Path, archive: Path) -> ImageState | None:
    """Unpack a saved package tree; None when there is none (or it is unreadable)."""
    try:
        config = json.loads(archive.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if not archive.is_file():
        return None
    tree.mkdir(parents=True)
    run(["tar", "--numeric-owner", "--xattrs", "-C", str(tree), "-xpf", str(archive)], step="load-tree")
    return ImageState(config["env"], config["workdir"], config["user"])


def install_platform(tree: Path, hostname: str = "wrenn") -> None:
    """envd as a package under /opt/wrenn, the init, hostname, and no host DNS left behind."""
    envd = tree / ENVD_DIR
    if envd.exists():
        shutil.rmtree(envd)
    envd.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(envd_source_dir(), envd, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    init = tree / GUEST_INIT_PATH.lstrip("/")
    init.parent.mkdir(parents=True, exist_ok=True)
    init.write_bytes(guest_init_source())
    init.chmod(0o755)
    (tree / "etc/hostname").write_text(f"{hostname}\n")
    (tree / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost\n")


def guest_init_source() -> bytes:
    return (Path(__file__).parent / "_guest_init.py").read_bytes()


def run_steps(tree: Path, folder: Path, steps: tuple[Step, ...], state: ImageState, *, progress: Progress) -> None:
    with _network_in(tree):
        for number, step in enumerate(steps, start=1):
            label = f"step {number}/{len(steps)} {step.op}"
            if isinstance(step, RunStep):
                progress(label, step.command)
                in_tree(tree, ["/bin/sh", "-c", step.command], state, step=label, progress=progress)
            elif isinstance(step, EnvStep):
                for name, raw in step.values:
                    state.env[name] = expand(raw, {**state.env, "HOME": _home(tree, state.user)})
                    progress(label, f"{name}={state.env[name]}")
            elif isinstance(step, WorkdirStep):
                state.workdir = str(PurePosixPath(state.workdir, expand(step.path, state.env)))
                progress(label, state.workdir)
                # like BuildKit: a WORKDIR the step creates belongs to the current USER
                create = '[ -d "$0" ] || { mkdir -p "$0" && chown "$1": "$0"; }'
                argv = ["/bin/sh", "-c", create, state.workdir, state.user]
                in_tree(tree, argv, ImageState(state.env), step=label, progress=progress)
            elif isinstance(step, UserStep):
                if step.user not in _passwd(tree):
                    raise BuildError(label, f"USER {step.user}: no such user in the image (add it with RUN useradd)")
                state.user = step.user
                progress(label, step.user)
            elif isinstance(step, CopyStep):
                _copy(tree, folder, step, state, label=label, progress=progress)


def _copy(tree: Path, folder: Path, step: CopyStep, state: ImageState, *, label: str, progress: Progress) -> None:
    """Stage the sources in the tree's /tmp, then copy inside the chroot so symlinks resolve inside the image."""
    staging = tree / "tmp/.wrenn-copy"
    if staging.is_symlink() or not (tree / "tmp").is_dir() or (tree / "tmp").is_symlink():
        raise BuildError(label, "the image's /tmp must be a plain directory")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        dest = str(PurePosixPath(state.workdir, step.dest))
        into_dir = len(step.sources) > 1 or step.dest.endswith("/")
        script = ["set -e"]
        for index, source in enumerate(step.sources):
            origin = folder / source
            staged = staging / str(index)
            if origin.is_dir():
                shutil.copytree(origin, staged, symlinks=True)
                script.append(f"mkdir -p {shlex.quote(dest)} && cp -a /tmp/.wrenn-copy/{index}/. {shlex.quote(dest)}/")
            else:
                staged.mkdir()
                shutil.copy2(origin, staged / origin.name)
                target = f"{dest}/{origin.name}" if into_dir else dest
                script.append(f"mkdir -p {shlex.quote(str(PurePosixPath(target).parent))}")
                script.append(f"cp -a /tmp/.wrenn-copy/{index}/{shlex.quote(origin.name)} {shlex.quote(target)}")
            if step.chown:
                script.append(f"chown -R {shlex.quote(step.chown)} {shlex.quote(dest)}")
        progress(label, f"{' '.join(step.sources)} -> {dest}")
        in_tree(tree, ["/bin/sh", "-c", "\n".join(script)], ImageState(state.env), step=label, progress=progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class _network_in:  # noqa: N801 - reads as a with-statement phrase
    """DNS for the build's own package downloads: the host's resolv.conf while steps run, none afterwards."""

    def __init__(self, tree: Path) -> None:
        self.resolv = tree / "etc/resolv.conf"

    def __enter__(self) -> None:
        if self.resolv.is_symlink():
            self.resolv.unlink()
        shutil.copy("/etc/resolv.conf", self.resolv)

    def __exit__(self, *exc: object) -> None:
        self.resolv.unlink(missing_ok=True)
        self.resolv.write_text("# filled in at boot from wrenn.dns= on the kernel command line\n")


def finish(tree: Path, state: ImageState, *, progress: Progress) -> None:
    """Write the image config the init reads, drop package caches, precompile envd for a faster first start."""
    config = {"env": state.env, "user": state.user, "workdir": state.workdir}
    (tree / IMAGE_CONFIG).parent.mkdir(parents=True, exist_ok=True)
    (tree / IMAGE_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    in_tree(tree, ["python3", "-m", "compileall", "-q", "/opt/wrenn"], ImageState(), step="finish", progress=progress)
    shutil.rmtree(tree / "var/cache/apt/archives", ignore_errors=True)
    (tree / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    for cache in (tree / "var/cache/apt").glob("*.bin"):
        cache.unlink()
    lists = tree / "var/lib/apt/lists"
    for entry in lists.glob("*") if lists.is_dir() else []:
        if entry.is_file():
            entry.unlink()
    (tree / "etc/machine-id").write_text("")


def make_ext4(tree: Path, image: Path, *, progress: Progress) -> int:
    """``mkfs.ext4 -d``: a sparse raw image with 25 % + 128 MiB free; returns its size in bytes."""
    used = int(run(["du", "-s", "-B1", "-x", str(tree)], step="mkfs").split()[0])
    mib = 1024 * 1024
    size = -(-(used * 5 // 4 + 128 * mib) // (16 * mib)) * 16 * mib
    progress("mkfs", f"{used / mib:.0f} MiB of files into a {size // mib} MiB ext4 image")
    options = ["-q", "-F", "-L", "wrenn-root", "-m", "0", "-i", "8192", "-E", "root_owner=0:0"]
    run(["mkfs.ext4", *options, "-d", str(tree), str(image), f"{size // 1024}k"], step="mkfs")
    return size


def _passwd(tree: Path) -> dict[str, tuple[str, str, str]]:
    """name -> (uid, gid, home) from the tree's /etc/passwd."""
    users = {}
    for line in (tree / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 6:
            users[fields[0]] = (fields[2], fields[3], fields[5])
    return users


def _home(tree: Path, user: str) -> str:
    return _passwd(tree).get(user, ("", "", "/"))[2]


def remove_tree(tree: Path) -> None:
    if tree.exists():
        shutil.rmtree(tree)
