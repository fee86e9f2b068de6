"""Errors raised by the guest image builder and cache, each also one of Wrenn's error kinds.

    ImageError                  (WrennError, 500) root of every image error
    ├── TemplateError           (Invalid, 400)    a template recipe is missing or invalid; names file, line, field
    ├── ImageNotFound           (NotFound, 404)   no built image for a template; names the command that builds it
    └── BuildError              (Internal, 500)   a build step failed; carries the step, the command and its output

Library errors (`OSError`, `subprocess.CalledProcessError`, `yaml.YAMLError`, pydantic's `ValidationError`) are
translated where they happen with ``raise ... from``.
"""

from __future__ import annotations

from collections.abc import Sequence

from wrenn.protocol.errors import Internal, Invalid, NotFound, WrennError


class ImageError(WrennError):
    """Root of every guest image error."""


class TemplateError(ImageError, Invalid):
    """A template recipe could not be read or validated. `problems` lists ``(where, what)`` pairs."""

    def __init__(self, path: str, problems: Sequence[tuple[str, str]]) -> None:
        lines = "\n".join(f"  {where}: {what}" for where, what in problems)
        super().__init__(f"invalid template {path}:\n{lines}")
        self.path = path
        self.problems = tuple(problems)


class ImageNotFound(ImageError, NotFound):
    """No image has been built for the template (with its current inputs) in the cache."""

    def __init__(self, name: str, cache_dir: str, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"no built guest image for template {name!r} in {cache_dir}{extra}; "
            f"build it with `wrenn image build {name}`"
        )
        self.name = name
        self.cache_dir = cache_dir


class BuildError(ImageError, Internal):
    """A build step failed. `output` is the tail of the failing command's output."""

    def __init__(self, step: str, message: str, command: Sequence[str] = (), output: str = "") -> None:
        text = f"image build failed at {step}: {message}"
        if command:
            text += f"\n  command: {' '.join(command)}"
        if output:
            text += "\n  output (tail):\n" + "\n".join(f"    {line}" for line in output.splitlines()[-20:])
        super().__init__(text)
        self.step = step
        self.command = tuple(command)
        self.output = output
