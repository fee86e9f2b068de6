"""Recipe steps run for real inside a copy of the built `base` package tree (root, no network): RUN as the
current USER in WORKDIR, ENV expanded against the image, COPY with --chown, and nothing left mounted."""

from __future__ import annotations

from pathlib import Path

import pytest

from wrenn.images import ImageNotFound, find_image, parse_template
from wrenn.images._rootfs import ImageState, load_tree, run_steps

pytestmark = [pytest.mark.root, pytest.mark.slow]

RECIPE = """\
steps:
  - USER root
  - RUN mkdir -p /opt/demo && id -un > /opt/demo/root-was
  - ENV DEMO_PATH=/opt/demo/bin:$PATH GREETING=${UNSET:-hello}
  - COPY --chown=user:user files/ /opt/demo/files
  - COPY note.txt /etc/demo-note
  - USER user
  - WORKDIR /home/user/work
  - RUN id -un > whoami && pwd > where && echo "$GREETING $HOME" > env-seen
  - RUN touch /opt/demo/denied 2>/dev/null; echo $? > denied-status
"""


@pytest.fixture(scope="module")
def base_tree_archive() -> Path:
    try:
        image = find_image("base")
    except ImageNotFound as exc:
        pytest.skip(exc.message)
    archive = image.rootfs.parent.parent / image.tree
    if not image.tree or not archive.is_file():
        pytest.skip(f"the base image's package tree {archive} is gone; `wrenn image build base --force`")
    return archive


def _mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(path) in line]


def test_steps_run_in_the_tree(tmp_path: Path, base_tree_archive: Path) -> None:
    folder = tmp_path / "demo"
    (folder / "files/sub").mkdir(parents=True)
    (folder / "files/sub/a.txt").write_text("a\n")
    (folder / "note.txt").write_text("note\n")
    template = parse_template(RECIPE, name="demo")
    tree = tmp_path / "tree"
    state = load_tree(tree, base_tree_archive)
    assert state is not None
    state = ImageState(state.env, "/", "root")
    progress: list[tuple[str, str]] = []
    run_steps(tree, folder, template.steps, state, progress=lambda step, line: progress.append((step, line)))

    assert (tree / "opt/demo/root-was").read_text() == "root\n"
    assert state.env["DEMO_PATH"].startswith("/opt/demo/bin:/usr/local/sbin:")
    assert state.env["GREETING"] == "hello"
    assert (state.user, state.workdir) == ("user", "/home/user/work")
    work = tree / "home/user/work"
    assert (work / "whoami").read_text() == "user\n"
    assert (work / "where").read_text() == "/home/user/work\n"
    assert (work / "env-seen").read_text() == "hello /home/user\n"
    assert (work / "denied-status").read_text() != "0\n", "USER user must not write into root's /opt"
    copied = tree / "opt/demo/files/sub/a.txt"
    assert copied.read_text() == "a\n"
    user_uid = int(
        next(line for line in (tree / "etc/passwd").read_text().splitlines() if line.startswith("user:")).split(":")[2]
    )
    assert copied.stat().st_uid == user_uid
    assert (tree / "etc/demo-note").stat().st_uid == 0
    assert any(step.startswith("step 9/9 RUN") for step, _ in progress)
    assert _mounts_under(tree) == [], "steps mount only inside their private mount namespace"
    assert not (tree / "tmp/.wrenn-copy").exists()
