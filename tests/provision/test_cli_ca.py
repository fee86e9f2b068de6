"""``wrenn provision ca …``: the idempotent commands the ca role relies on (first word = ok/changed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wrenn.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["provision", "ca", *argv])
    return code, capsys.readouterr().out


def test_init_then_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, "init", "--dir", str(tmp_path / "ca"))[1].startswith("created")
    assert _run(capsys, "init", "--dir", str(tmp_path / "ca"))[1].startswith("exists")


def test_issue_host_keeps_a_valid_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = str(tmp_path / "ca")
    _run(capsys, "init", "--dir", ca)
    args = ["issue-host", "--dir", ca, "--name", "h1", "--ip", "10.0.0.1", "--cert", str(tmp_path / "h.pem")]
    args += ["--key", str(tmp_path / "h.key")]
    code, out = _run(capsys, *args)
    assert code == 0
    assert out.startswith("issued")
    assert _run(capsys, *args)[1].startswith("valid")
    # A different address means a different certificate.
    assert _run(capsys, *[a if a != "10.0.0.1" else "10.0.0.2" for a in args])[1].startswith("issued")
    # Revoked: issued again.
    assert _run(capsys, "revoke", "--dir", ca, str(tmp_path / "h.pem"))[1].startswith("revoked")
    assert _run(capsys, *[a if a != "10.0.0.1" else "10.0.0.2" for a in args])[1].startswith("issued")


def test_issue_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = str(tmp_path / "ca")
    _run(capsys, "init", "--dir", ca)
    args = [
        "issue-client",
        "--dir",
        ca,
        "--name",
        "api",
        "--cert",
        str(tmp_path / "c.pem"),
        "--key",
        str(tmp_path / "c.key"),
    ]
    assert _run(capsys, *args)[1].startswith("issued")
    assert _run(capsys, *args)[1].startswith("valid")


def test_issue_without_ca_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "provision",
            "ca",
            "issue-client",
            "--dir",
            str(tmp_path / "none"),
            "--name",
            "x",
            "--cert",
            str(tmp_path / "c.pem"),
            "--key",
            str(tmp_path / "c.key"),
        ]
    )
    assert code == 1
