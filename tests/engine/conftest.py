"""Fixtures for the engine tests that run on both architectures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def folder(arch: str, request: pytest.FixtureRequest) -> Path:
    """The tiny checkpoint of `arch`."""
    return Path(request.getfixturevalue(f"tiny_{arch}"))
