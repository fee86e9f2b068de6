"""Template recipe files (`images/templates/<name>/template.yaml`): the pydantic models, the parser for the
Dockerfile-like step and healthcheck strings, and loading with errors that name the file, line and field.

A recipe::

    base: debian:bookworm          # debootstrap; or the name of another template to build on
    packages: [python3, git]       # Debian packages added to the base
    steps:                         # run in order inside the image's root (chroot), like a Dockerfile
      - RUN useradd -m -s /bin/bash user
      - ENV PATH=/opt/tool/bin:$PATH     # expanded now, against the image's environment so far
      - COPY --chown=user:user files/app /opt/app
      - WORKDIR /home/user
      - USER user
    healthcheck: --interval=5s --timeout=2s --start-period=1s --retries=3 CMD curl -fsS http://localhost:8000/
    defaults: {vcpus: 2, memory_mb: 512, disk_mb: 2048}
    kernel: debian                 # or microvm (built from linux-source-6.1)
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._errors import TemplateError

DEBIAN_BASE = "debian:bookworm"
TEMPLATE_FILE = "template.yaml"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunStep(_Strict):
    op: Literal["RUN"] = "RUN"
    command: str = Field(min_length=1)


class EnvStep(_Strict):
    op: Literal["ENV"] = "ENV"
    values: tuple[tuple[str, str], ...] = Field(min_length=1)
    """(name, raw value) in order; values are expanded when the step runs."""


class CopyStep(_Strict):
    op: Literal["COPY"] = "COPY"
    sources: tuple[str, ...] = Field(min_length=1)
    """Paths relative to the template folder; they may not leave it."""
    dest: str = Field(min_length=1)
    chown: str | None = None

    @field_validator("sources")
    @classmethod
    def _inside_template(cls, sources: tuple[str, ...]) -> tuple[str, ...]:
        for source in sources:
            path = PurePosixPath(source)
            if path.is_absolute() or ".." in path.parts:
                raise ValueError(f"COPY source {source!r} must be a path inside the template folder")
        return sources


class WorkdirStep(_Strict):
    op: Literal["WORKDIR"] = "WORKDIR"
    path: str = Field(min_length=1)


class UserStep(_Strict):
    op: Literal["USER"] = "USER"
    user: str = Field(pattern=r"^[a-z_][a-z0-9_-]*$")


def _step_from_text(value: Any) -> Any:
    return parse_step(value) if isinstance(value, str) else value


Step = Annotated[
    RunStep | EnvStep | CopyStep | WorkdirStep | UserStep, Field(discriminator="op"), BeforeValidator(_step_from_text)
]


class Healthcheck(_Strict):
    """When the sandbox counts as healthy, with Docker's HEALTHCHECK semantics (seconds)."""

    command: str = Field(min_length=1)
    interval: float = Field(default=30.0, gt=0)
    timeout: float = Field(default=30.0, gt=0)
    start_period: float = Field(default=0.0, ge=0)
    retries: int = Field(default=3, ge=1)


class Defaults(_Strict):
    """Machine size a sandbox gets unless its create request says otherwise."""

    vcpus: int = Field(default=2, ge=1, le=64)
    memory_mb: int = Field(default=512, ge=128, le=262144)
    disk_mb: int = Field(default=2048, ge=256, le=4194304)


class Template(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    base: str = DEBIAN_BASE
    packages: tuple[str, ...] = ()
    steps: tuple[Step, ...] = ()
    healthcheck: Healthcheck | None = None
    defaults: Defaults = Defaults()
    kernel: Literal["debian", "microvm"] = "debian"
    """``debian``: Debian's cloud kernel + initramfs; ``microvm``: built from linux-source-6.1 (see docs/images.md)."""

    @field_validator("base")
    @classmethod
    def _known_base(cls, base: str) -> str:
        if base.startswith("debian:"):
            if base != DEBIAN_BASE:
                raise ValueError(f"only {DEBIAN_BASE!r} is supported as a Debian base, not {base!r}")
        elif not re.match(NAME_PATTERN, base):
            raise ValueError(f"base must be {DEBIAN_BASE!r} or a template name, not {base!r}")
        return base

    @field_validator("packages")
    @classmethod
    def _debian_names(cls, packages: tuple[str, ...]) -> tuple[str, ...]:
        for package in packages:
            if not _PACKAGE.match(package):
                raise ValueError(f"{package!r} is not a Debian package name")
        return packages

    @field_validator("healthcheck", mode="before")
    @classmethod
    def _parse_healthcheck(cls, value: Any) -> Any:
        return parse_healthcheck(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _not_own_base(self) -> Template:
        if self.base == self.name:
            raise ValueError(f"template {self.name!r} cannot be its own base")
        return self


def parse_step(text: str) -> dict[str, Any]:
    """``"RUN echo hi"`` -> ``{"op": "RUN", "command": "echo hi"}``; raises ValueError on a malformed step."""
    op, _, rest = text.strip().partition(" ")
    rest = rest.strip()
    if op not in ("RUN", "ENV", "COPY", "WORKDIR", "USER"):
        raise ValueError(f"unknown instruction {op!r} (use RUN, ENV, COPY, WORKDIR or USER in capitals)")
    if not rest:
        raise ValueError(f"{op} needs an argument")
    if op == "RUN":
        return {"op": op, "command": rest}
    if op == "WORKDIR":
        return {"op": op, "path": rest}
    if op == "USER":
        return {"op": op, "user": rest}
    words = shlex.split(rest)
    if op == "ENV":
        return {"op": op, "values": [_env_pair(word) for word in words]}
    chown = None
    if words and words[0].startswith("--chown="):
        chown = words.pop(0).removeprefix("--chown=")
    if len(words) < 2:
        raise ValueError("COPY needs at least one source and a destination")
    return {"op": op, "sources": words[:-1], "dest": words[-1], "chown": chown}


def _env_pair(word: str) -> tuple[str, str]:
    key, sep, value = word.partition("=")
    if not sep or not _ENV_KEY.match(key):
        raise ValueError(f"ENV wants NAME=value pairs, got {word!r}")
    return key, value


def parse_duration(text: str) -> float:
    """Docker-style duration (``30s``, ``1m30s``, ``500ms``) in seconds."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"{text!r} is not a duration like 30s, 1m30s or 500ms")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def parse_healthcheck(text: str) -> dict[str, Any] | None:
    """``"--interval=5s --retries=3 CMD curl -f http://localhost/"`` -> Healthcheck fields; ``NONE`` -> None."""
    words = shlex.split(text)
    if words == ["NONE"]:
        return None
    fields: dict[str, Any] = {}
    flags = {"--interval": "interval", "--timeout": "timeout", "--start-period": "start_period", "--retries": "retries"}
    while words and words[0].startswith("--"):
        flag, sep, value = words.pop(0).partition("=")
        if flag not in flags or not sep:
            raise ValueError(f"unknown healthcheck flag {flag!r} (use {', '.join(f'{f}=' for f in flags)})")
        fields[flags[flag]] = int(value) if flag == "--retries" else parse_duration(value)
    if not words or words[0] != "CMD" or len(words) < 2:
        raise ValueError("healthcheck must be [flags] CMD <command> or NONE")
    fields["command"] = shlex.join(words[1:])
    return fields


def load_template(folder: Path) -> Template:
    """Read and validate ``folder/template.yaml``; the template's name is the folder's name."""
    path = folder / TEMPLATE_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise TemplateError(str(path), [("file", f"cannot read it: {exc.strerror or exc}")]) from exc
    return parse_template(text, name=folder.name, path=str(path), folder=folder)


def parse_template(text: str, *, name: str, path: str = TEMPLATE_FILE, folder: Path | None = None) -> Template:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "file"
        raise TemplateError(path, [(where, f"not valid YAML: {getattr(exc, 'problem', None) or exc}")]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TemplateError(path, [("line 1", "the file must be a mapping (base, packages, steps, ...)")])
    if "name" in data:
        raise TemplateError(path, [(_where(root, ("name",)), "the name is the folder's name; remove the field")])
    try:
        template = Template.model_validate({**data, "name": name})
    except ValidationError as exc:
        problems = [(_where(root, tuple(error["loc"])), _message(error)) for error in exc.errors()]
        raise TemplateError(path, problems) from exc
    if folder is not None:
        _check_sources(template, folder, root, path)
    return template


def _check_sources(template: Template, folder: Path, root: yaml.Node | None, path: str) -> None:
    problems = []
    for index, step in enumerate(template.steps):
        if isinstance(step, CopyStep):
            for source in step.sources:
                resolved = (folder / source).resolve()
                if not resolved.is_relative_to(folder.resolve()) or not resolved.exists():
                    where = _where(root, ("steps", index))
                    problems.append((where, f"COPY source {source!r} does not exist in {folder}"))
    if problems:
        raise TemplateError(path, problems)


def _message(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    return message


def _where(root: yaml.Node | None, loc: tuple[Any, ...]) -> str:
    """The deepest YAML node `loc` reaches, as ``line N, field a.b.c``."""
    node = root
    reached: list[str] = []
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        node = child
        reached.append(str(part))
    line = f"line {node.start_mark.line + 1}" if node is not None else "file"
    field = ".".join(str(part) for part in loc if part not in ("RUN", "ENV", "COPY", "WORKDIR", "USER"))
    return f"{line}, field {field}" if field else line


def _child(node: yaml.Node | None, part: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value  # type: ignore[no-any-return]
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part]  # type: ignore[no-any-return]
    return None
