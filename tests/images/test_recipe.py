"""Template recipe validation: good recipes parse into the models, bad ones fail naming line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from wrenn.images import (
    CopyStep,
    EnvStep,
    RunStep,
    TemplateError,
    UserStep,
    WorkdirStep,
    load_template,
    parse_template,
    templates_dir,
)
from wrenn.images._recipe import parse_duration

GOOD = """\
base: debian:bookworm
packages: [python3, git]
steps:
  - RUN useradd -m user
  - ENV A=1 B="two words" PATH=/opt/bin:$PATH
  - COPY --chown=user:user files/app /opt/app
  - WORKDIR /home/user
  - USER user
healthcheck: --interval=5s --timeout=1m30s --start-period=500ms --retries=4 CMD curl -f http://localhost:8000/
defaults: {vcpus: 4, memory_mb: 1024, disk_mb: 4096}
"""


def test_good_recipe_parses_into_typed_steps() -> None:
    template = parse_template(GOOD, name="demo")
    assert template.name == "demo"
    assert template.packages == ("python3", "git")
    assert [type(step) for step in template.steps] == [RunStep, EnvStep, CopyStep, WorkdirStep, UserStep]
    env = template.steps[1]
    assert isinstance(env, EnvStep)
    assert env.values == (("A", "1"), ("B", "two words"), ("PATH", "/opt/bin:$PATH"))
    copy = template.steps[2]
    assert isinstance(copy, CopyStep)
    assert (copy.sources, copy.dest, copy.chown) == (("files/app",), "/opt/app", "user:user")
    assert template.healthcheck is not None
    hc = template.healthcheck
    assert (hc.interval, hc.timeout, hc.start_period, hc.retries) == (5.0, 90.0, 0.5, 4)
    assert hc.command == "curl -f http://localhost:8000/"
    assert (template.defaults.vcpus, template.defaults.memory_mb, template.defaults.disk_mb) == (4, 1024, 4096)


def test_defaults_apply_to_a_minimal_recipe() -> None:
    template = parse_template("base: debian:bookworm\n", name="tiny")
    assert template.steps == ()
    assert template.healthcheck is None
    assert template.defaults.vcpus == 2


def test_shipped_base_template_is_valid() -> None:
    template = load_template(templates_dir() / "base")
    assert template.base == "debian:bookworm"
    for package in ("python3", "git", "curl", "ca-certificates", "iproute2", "sudo", "python3-protobuf", "python3-h11"):
        assert package in template.packages
    assert "e2fsprogs" in template.packages
    assert any(isinstance(step, UserStep) and step.user == "user" for step in template.steps)


BAD = [
    pytest.param("base: debian:buster\n", "line 1, field base", "only 'debian:bookworm'", id="other-debian"),
    pytest.param("base: Not_A_Name\n", "line 1, field base", "a template name", id="bad-base-name"),
    pytest.param("base: debian:bookworm\nfoo: 1\n", "line 2, field foo", "unknown field", id="unknown-field"),
    pytest.param("packages: [git, 'Bad Name']\n", "line 1, field packages", "not a Debian package", id="package"),
    pytest.param("steps:\n  - RUN true\n  - FROM x\n", "line 3, field steps.1", "unknown instruction", id="op"),
    pytest.param("steps:\n  - run true\n", "line 2, field steps.0", "in capitals", id="lowercase-op"),
    pytest.param("steps:\n  - RUN\n", "line 2, field steps.0", "RUN needs an argument", id="empty-run"),
    pytest.param("steps:\n  - ENV novalue\n", "line 2, field steps.0", "NAME=value", id="env-pair"),
    pytest.param("steps:\n  - ENV 1A=x\n", "line 2, field steps.0", "NAME=value", id="env-name"),
    pytest.param("steps:\n  - COPY onlyone\n", "line 2, field steps.0", "source and a destination", id="copy-args"),
    pytest.param(
        "steps:\n  - COPY ../x /y\n", "line 2, field steps.0.sources", "inside the template folder", id="copy-up"
    ),
    pytest.param(
        "steps:\n  - COPY /etc/passwd /y\n", "line 2, field steps.0.sources", "inside the template", id="copy-abs"
    ),
    pytest.param("steps:\n  - USER Bad User\n", "line 2, field steps.0.user", "pattern", id="user"),
    pytest.param("healthcheck: --interval=5 CMD true\n", "line 1, field healthcheck", "duration", id="hc-duration"),
    pytest.param(
        "healthcheck: --every=5s CMD true\n", "line 1, field healthcheck", "unknown healthcheck flag", id="hc"
    ),
    pytest.param("healthcheck: --retries=3\n", "line 1, field healthcheck", "CMD <command>", id="hc-no-cmd"),
    pytest.param(
        "healthcheck: --retries=0 CMD true\n", "line 1, field healthcheck.retries", "greater than", id="hc-retries"
    ),
    pytest.param("defaults:\n  vcpus: 0\n", "line 2, field defaults.vcpus", "greater than", id="vcpus"),
    pytest.param("defaults:\n  memory_mb: 64\n", "line 2, field defaults.memory_mb", "greater than", id="memory"),
    pytest.param("defaults:\n  disk: 1\n", "line 2, field defaults.disk", "unknown field", id="defaults-field"),
    pytest.param("base: demo\n", "line 1", "its own base", id="own-base"),
    pytest.param("name: other\n", "line 1, field name", "folder's name", id="name-field"),
    pytest.param("- just\n- a list\n", "line 1", "must be a mapping", id="not-mapping"),
    pytest.param("steps: [\n", "line 2", "not valid YAML", id="yaml-syntax"),
]


@pytest.mark.parametrize(("text", "where", "what"), BAD)
def test_bad_recipe_names_line_field_and_problem(text: str, where: str, what: str) -> None:
    with pytest.raises(TemplateError) as caught:
        parse_template(text, name="demo", path="demo/template.yaml")
    assert caught.value.path == "demo/template.yaml"
    assert any(w == where and what in message for w, message in caught.value.problems), caught.value.problems
    assert "demo/template.yaml" in caught.value.message


def test_copy_source_must_exist_in_the_template_folder(tmp_path: Path) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "template.yaml").write_text("steps:\n  - RUN true\n  - COPY missing.txt /x\n")
    with pytest.raises(TemplateError) as caught:
        load_template(folder)
    assert caught.value.problems == (
        ("line 3, field steps.1", f"COPY source 'missing.txt' does not exist in {folder}"),
    )


def test_missing_template_file_is_a_template_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="cannot read it"):
        load_template(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0), ("1.5s", 1.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "s", "5x", "5s junk", "-5s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_healthcheck_none_means_no_healthcheck() -> None:
    assert parse_template("healthcheck: NONE\n", name="demo").healthcheck is None
