"""The registry between request handling and engines: acquire counts requests in flight per
model, unknown aliases and unavailable models are refused with their own errors, and
closing drains, closes and drops every engine."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from vlmserve.config import EngineConfig
from vlmserve.engine.async_engine import AsyncEngine, EngineClosed
from vlmserve.engine.engine import build_engine
from vlmserve.registry import (
    ModelHandle,
    ModelInfo,
    ModelNotFound,
    ModelRegistry,
    ModelState,
    ModelUnavailable,
)
from vlmserve.types import SamplingParams


def start_engine(folder: Path) -> AsyncEngine:
    return AsyncEngine(build_engine(EngineConfig(str(folder), max_model_len=256))).start()


def handle(engine: AsyncEngine, name: str) -> ModelHandle:
    return ModelHandle(ModelInfo.from_engine(engine.engine, name), engine)


@pytest.fixture(scope="module")
def engines(tiny_qwen2_vl: Path, tiny_qwen2_5_vl: Path) -> Iterator[list[AsyncEngine]]:
    started = [start_engine(tiny_qwen2_vl), start_engine(tiny_qwen2_5_vl)]
    yield started
    for engine in started:
        engine.close()


@pytest.fixture
def models(engines: list[AsyncEngine]) -> ModelRegistry:
    return ModelRegistry([handle(engines[0], "a"), handle(engines[1], "b")])


async def test_acquire_gives_the_model_and_counts_it_in_flight(
    models: ModelRegistry, engines: list[AsyncEngine]
) -> None:
    async with models.acquire("a") as first, models.acquire("a"), models.acquire("b") as other:
        assert first.engine is engines[0] and first.info.name == "a"
        assert other.engine is engines[1]
        assert {s.info.name: s.in_flight for s in models.list()} == {"a": 2, "b": 1}
    with pytest.raises(RuntimeError, match="inside"):
        async with models.acquire("a"):
            assert models.status("a").in_flight == 1
            raise RuntimeError("a failure inside the block")
    assert [s.in_flight for s in models.list()] == [0, 0]


async def test_unknown_alias_is_refused_naming_what_is_served(
    models: ModelRegistry, engines: list[AsyncEngine]
) -> None:
    with pytest.raises(ModelNotFound) as raised:
        async with models.acquire("c"):
            pytest.fail("acquired an unknown model")
    assert str(raised.value) == "the model 'c' does not exist; this server serves 'a', 'b'"
    with pytest.raises(ModelNotFound):
        models.status("c")
    with pytest.raises(ValueError, match="already registered"):
        models.add(handle(engines[1], "a"))


def test_list_and_readiness(models: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    statuses = models.list()
    assert [(s.info.name, s.state, s.alive) for s in statuses] == [
        ("a", ModelState.READY, True),
        ("b", ModelState.READY, True),
    ]
    assert models.problems() == [] and not models.closed
    assert [alias for alias, _ in models.engine_stats()] == ["a", "b"]
    monkeypatch.setattr(AsyncEngine, "alive", property(lambda _: False))
    assert models.problems() == [
        "model 'a': the engine loop is not running",
        "model 'b': the engine loop is not running",
    ]


async def collect(models: ModelRegistry, alias: str, max_tokens: int) -> int:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    async with models.acquire(alias) as h:
        outs = [o async for o in h.engine.generate("hi", params, f"{alias}-{max_tokens}")]
    return len(outs[-1].outputs[0].token_ids)


async def test_close_drains_then_closes_and_drops_the_engines(
    tiny_qwen2_vl: Path,
) -> None:
    engine = start_engine(tiny_qwen2_vl)
    models = ModelRegistry([handle(engine, "m")])
    running = asyncio.create_task(collect(models, "m", 12))
    while models.status("m").in_flight == 0:
        await asyncio.sleep(0.01)
    await asyncio.wait_for(models.close(drain_timeout=60), 120)
    assert running.result() == 12  # drained: finished, not cut
    assert models.closed and engine.engine.closed and not engine.alive
    status = models.status("m")
    assert (status.state, status.in_flight, status.alive) == (ModelState.REGISTERED, 0, False)
    assert models.engine_stats() == []
    with pytest.raises(ModelUnavailable, match="'m' is registered, not ready"):
        async with models.acquire("m"):
            pytest.fail("acquired a closed model")
    ref = weakref.ref(engine)
    del engine, running
    gc.collect()
    assert ref() is None, "the registry still holds the closed engine"


async def test_close_past_the_drain_deadline_ends_the_stragglers(tiny_qwen2_vl: Path) -> None:
    engine = start_engine(tiny_qwen2_vl)
    models = ModelRegistry([handle(engine, "m")])

    running = asyncio.create_task(collect(models, "m", 200))
    while not engine.engine.requests:
        await asyncio.sleep(0.01)
    await asyncio.wait_for(models.close(drain_timeout=0.05), 60)
    with pytest.raises(EngineClosed, match="closed while this request was running"):
        await asyncio.wait_for(running, 30)
