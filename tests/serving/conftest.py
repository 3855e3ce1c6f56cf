"""One engine on the tiny model per test module, and a serving layer over it per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vlmserve.config import EngineConfig, MediaConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.engine.engine import build_engine
from vlmserve.multimodal.fetch import MediaConnector
from vlmserve.registry import ModelHandle, ModelInfo, ModelRegistry
from vlmserve.serving import MediaLoader, Serving

MODEL = "tiny"


@pytest.fixture(scope="module")
def engine(tiny_qwen2_vl: Path) -> Iterator[AsyncEngine]:
    config = EngineConfig(str(tiny_qwen2_vl), max_model_len=512, limit_mm_per_prompt={"image": 1})
    started = AsyncEngine(build_engine(config)).start()
    yield started
    started.close()


@pytest.fixture
def serving(engine: AsyncEngine) -> Serving:
    models = ModelRegistry([ModelHandle(ModelInfo.from_engine(engine.engine, MODEL), engine)])
    return Serving(models, MediaLoader(MediaConnector(MediaConfig())))
