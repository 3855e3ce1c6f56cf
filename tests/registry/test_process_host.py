"""The engine-process host under the registry: each loaded model has an engine process of its
own, and unloading a model ends its process (all of its memory goes with it) while the
others serve on."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from vlmserve.config import EngineConfig, RegistryConfig
from vlmserve.engine.process import ProcessEngine
from vlmserve.registry import ModelRegistry, ModelSpec, ProcessEngineHost
from vlmserve.types import Prompt, SamplingParams

BOUND_S = 120


async def test_one_engine_process_per_model_and_unloading_ends_it(tiny_qwen2_vl: Path) -> None:
    host = ProcessEngineHost(EngineConfig("unset", kv_cache_memory_bytes=8 << 20))
    models = ModelRegistry(host=host, config=RegistryConfig(tick=0.05))
    await models.start()
    engines: dict[str, ProcessEngine] = {}
    try:
        for alias in ("a", "b"):
            await models.register(ModelSpec(alias, str(tiny_qwen2_vl), max_model_len=256))
            async with asyncio.timeout(BOUND_S), models.acquire(alias) as handle:
                assert isinstance(handle.engine, ProcessEngine)
                engines[alias] = handle.engine
                params = SamplingParams(max_tokens=2)
                async for _ in handle.engine.generate(Prompt("hi"), params, f"r-{alias}"):
                    pass
        pids = {alias: engine.pid for alias, engine in engines.items()}
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
        await asyncio.wait_for(models.unload("a"), BOUND_S)
        assert not engines["a"].alive
        assert engines["b"].alive and await asyncio.to_thread(engines["b"].leaks) == []
    finally:
        await asyncio.wait_for(models.close(drain_timeout=5), BOUND_S)
        host.close()
    assert not engines["b"].alive
