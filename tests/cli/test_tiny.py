"""The default model of `vlmserve serve`: generated once into the cache, never half."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmserve.cli.tiny import default_tiny_model


def test_default_tiny_model_is_generated_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLMSERVE_CACHE", str(tmp_path))
    first = default_tiny_model()
    assert first == tmp_path / "tiny-qwen2_vl" and (first / "config.json").is_file()
    stamp = (first / "config.json").stat().st_mtime_ns
    assert default_tiny_model() == first
    assert (first / "config.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-qwen2_vl"]  # no leftovers
