"""Running the build's host commands: output streamed to the progress callback, failures turned into BuildError
with the command and the tail of its output."""

from __future__ import annotations

import collections
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ._errors import BuildError

Progress = Callable[[str, str], None]
"""``progress(step, message)``: one line of build progress."""


def quiet(step: str, message: str) -> None:
    del step, message


def run(
    argv: Sequence[str],
    *,
    step: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    input_text: str | None = None,
) -> str:
    """Run `argv`; with `progress`, every output line is passed on as it comes. Returns the output."""
    tail: collections.deque[str] = collections.deque(maxlen=200)
    try:
        with subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        ) as process:
            if input_text is not None:
                assert process.stdin is not None
                process.stdin.write(input_text)
                process.stdin.close()
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                if progress is not None and line.strip():
                    progress(step, line)
            code = process.wait()
    except OSError as exc:
        raise BuildError(step, f"cannot run {argv[0]}: {exc.strerror or exc}", argv) from exc
    output = "\n".join(tail)
    if code != 0:
        raise BuildError(step, f"{argv[0]} exited with status {code}", argv, output)
    return output
