"""The in-process engine host: a load is weights -> KV cache -> engine thread -> warm-up,
each step logged with its time; a model whose warm-up fails is closed, never served; an
unload gives the memory back (CUDA too, on a machine with one)."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import pytest
import torch

from vlmserve.config import EngineConfig
from vlmserve.engine.engine import LLMEngine
from vlmserve.registry import LocalEngineHost, ModelInfo, ModelSpec


async def test_a_load_is_logged_step_by_step_and_measured(
    tiny_qwen2_vl: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ready: list[tuple[LLMEngine, ModelInfo]] = []
    host = LocalEngineHost(
        EngineConfig("unset", kv_cache_memory_bytes=8 << 20),
        on_ready=lambda engine, info: ready.append((engine, info)),
    )
    caplog.set_level(logging.INFO, logger="vlmserve.registry")
    loaded = await host.load(ModelSpec("m", str(tiny_qwen2_vl), max_model_len=256))
    try:
        [(engine, info)] = ready
        assert loaded.handle.info is info and info.name == "m" and info.max_model_len == 256
        assert loaded.handle.engine.alive and loaded.handle.engine.engine is engine
        assert loaded.memory_bytes == engine.memory_bytes() > 8 << 20
        assert 0 < loaded.load_seconds < 120
        assert not engine.requests  # the warm-up finished and left nothing behind
        steps = [r.getMessage() for r in caplog.records if r.name == "vlmserve.registry.host"]
        for needle in ("loading ", "weights loaded in ", "KV cache of ", "warm-up generation in ",
                       "ready in "):  # fmt: skip
            assert any(needle in line for line in steps), (needle, steps)
    finally:
        await host.unload(loaded.handle)
        host.close()
    assert engine.closed and not loaded.handle.engine.alive
    assert any("unloaded in " in r.getMessage() for r in caplog.records)


async def test_a_failed_warm_up_closes_the_engine(
    tiny_qwen2_vl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[LLMEngine] = []
    real_step = LLMEngine.step

    def broken_step(self: LLMEngine) -> object:
        built.append(self)
        raise RuntimeError("the forward pass failed")

    monkeypatch.setattr(LLMEngine, "step", broken_step)
    host = LocalEngineHost(EngineConfig("unset", kv_cache_memory_bytes=8 << 20))
    with pytest.raises(RuntimeError, match="the engine failed while running this request"):
        await host.load(ModelSpec("m", str(tiny_qwen2_vl), max_model_len=256))
    monkeypatch.setattr(LLMEngine, "step", real_step)
    host.close()
    assert built and all(engine.closed for engine in built)


@pytest.mark.gpu
async def test_an_unload_empties_the_cuda_cache(tiny_qwen2_vl: Path) -> None:
    host = LocalEngineHost(EngineConfig("unset", device="cuda", kv_cache_memory_bytes=256 << 20))
    loaded = await host.load(ModelSpec("m", str(tiny_qwen2_vl), max_model_len=256))
    held = torch.cuda.memory_reserved()
    assert held >= 256 << 20 and loaded.memory_bytes >= 256 << 20
    await host.unload(loaded.handle)
    host.close()
    assert torch.cuda.memory_reserved() < held * 0.2


async def test_a_server_host_freezes_what_a_load_built(tiny_qwen2_vl: Path) -> None:
    """With freeze_heap (what `serve` uses) the loaded model's objects leave the collector's
    full walks (engine/heap.py); an unload freezes again, without the closed engine."""
    host = LocalEngineHost(EngineConfig("unset", kv_cache_memory_bytes=8 << 20), freeze_heap=True)
    try:
        loaded = await host.load(ModelSpec("m", str(tiny_qwen2_vl), max_model_len=256))
        engine = loaded.handle.engine
        assert gc.get_freeze_count() > 0
        assert gc.is_tracked(engine) and not any(o is engine for o in gc.get_objects())
        await host.unload(loaded.handle)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        host.close()
