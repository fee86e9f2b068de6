"""Test harness shared by every tier: asyncio debug mode and privilege/VM markers that skip with a reason."""

from __future__ import annotations

import os
import shutil

import pytest


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONASYNCIODEBUG", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    is_root = os.geteuid() == 0
    has_qemu = shutil.which("qemu-system-x86_64") is not None
    for item in items:
        if "root" in item.keywords and not is_root:
            item.add_marker(pytest.mark.skip(reason="needs root (network namespaces, cgroups, TAP)"))
        if "vm" in item.keywords and not (is_root and has_qemu):
            item.add_marker(pytest.mark.skip(reason="needs root and qemu-system-x86_64 to boot microVMs"))
