"""`wrenn sandbox …` against the real API + proxy (fake agent, real envd processes)."""

from __future__ import annotations

import io
import re

import pytest

from tests.api.sandboxes.conftest import Stack
from wrenn.cli import main

pytestmark = [pytest.mark.postgres]

_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


def _cli_only(text: str) -> str:
    """What the CLI printed, without the in-process server's structlog lines (same stdout in this test)."""
    return "".join(line for line in text.splitlines(keepends=True) if not _LOG_LINE.match(line))


def test_cli_create_list_exec_files_kill(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WRENN_API_URL", stack.url)
    monkeypatch.setenv("WRENN_API_KEY", stack.api_key)
    assert main(["sandbox", "create", "--meta", "via=cli"]) == 0
    sandbox_id = _cli_only(capsys.readouterr().out).strip()
    assert len(sandbox_id) == 20
    try:
        assert main(["sandbox", "list", "--meta", "via=cli"]) == 0
        assert sandbox_id in _cli_only(capsys.readouterr().out)
        assert main(["sandbox", "exec", sandbox_id, "--", "echo", "out;", "echo", "err", ">&2;", "exit", "3"]) == 3
        captured = capsys.readouterr()
        assert _cli_only(captured.out) == "out\n"
        assert _cli_only(captured.err) == "err\n"
        monkeypatch.setattr("sys.stdin", type("S", (), {"buffer": io.BytesIO(b"cli bytes")})())
        assert main(["sandbox", "files", "write", sandbox_id, f"/tmp/wrenn-cli-test-{sandbox_id}.txt"]) == 0
        assert main(["sandbox", "files", "read", sandbox_id, f"/tmp/wrenn-cli-test-{sandbox_id}.txt"]) == 0
        assert _cli_only(capsys.readouterr().out) == "cli bytes"
    finally:
        assert main(["sandbox", "kill", sandbox_id]) == 0
    with pytest.raises(SystemExit, match="404"):
        main(["sandbox", "info", sandbox_id])
