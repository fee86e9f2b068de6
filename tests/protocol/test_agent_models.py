from __future__ import annotations

import pydantic
import pytest

from wrenn.protocol.agent import CreateSandbox


def test_create_sandbox_defaults() -> None:
    spec = CreateSandbox(sandbox_id="a" * 20, template="base")
    assert (spec.vcpus, spec.memory_mb, spec.allow_internet) == (1, 256, False)


@pytest.mark.parametrize(
    "bad",
    [
        {"sandbox_id": "has-dash-not-allowed1", "template": "base"},
        {"sandbox_id": "A" * 20, "template": "base"},
        {"sandbox_id": "a" * 20, "template": ""},
        {"sandbox_id": "a" * 20, "template": "base", "vcpus": 0},
        {"sandbox_id": "a" * 20, "template": "base", "memory_mb": 64},
        {"sandbox_id": "a" * 20, "template": "base", "surprise": 1},
    ],
)
def test_create_sandbox_rejects_bad_input(bad: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        CreateSandbox.model_validate(bad)
