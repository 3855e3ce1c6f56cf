"""The engine thread: streaming, concurrency, abort, overload and failure isolation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vlmserve.config import EngineConfig
from vlmserve.engine.async_engine import AsyncEngine, EngineOverloaded
from vlmserve.engine.engine import build_engine
from vlmserve.engine.inputs import InputError
from vlmserve.types import RequestOutput, SamplingParams


@pytest.fixture(scope="module")
def engine(tiny_qwen2_vl: Path) -> Iterator[AsyncEngine]:
    async_engine = AsyncEngine(build_engine(EngineConfig(str(tiny_qwen2_vl), max_model_len=512)))
    yield async_engine.start()
    async_engine.close()


async def collect(
    engine: AsyncEngine, prompt: str, params: SamplingParams, rid: str
) -> list[RequestOutput]:
    return [out async for out in engine.generate(prompt, params, rid)]


async def test_streams_grow_and_finish(engine: AsyncEngine) -> None:
    outs = await collect(engine, "hello", SamplingParams(max_tokens=6, ignore_eos=True), "s1")
    lengths = [len(o.outputs[0].token_ids) for o in outs]
    assert lengths == sorted(lengths) and lengths[-1] == 6
    assert outs[-1].finished and not any(o.finished for o in outs[:-1])


async def test_many_concurrent_requests_all_complete(engine: AsyncEngine) -> None:
    params = SamplingParams(max_tokens=8, ignore_eos=True, temperature=0.0)
    results = await asyncio.gather(
        *(collect(engine, f"prompt number {i}", params, f"c{i}") for i in range(64))
    )
    assert all(r[-1].finished and len(r[-1].outputs[0].token_ids) == 8 for r in results)
    alone = await collect(engine, "prompt number 5", params, "alone")
    assert alone[-1].outputs[0].token_ids == results[5][-1].outputs[0].token_ids


async def test_a_reader_that_falls_behind_gets_the_newest_output(engine: AsyncEngine) -> None:
    stream = engine.generate("slow reader", SamplingParams(max_tokens=40, ignore_eos=True), "lag")
    first = len((await anext(stream)).outputs[0].token_ids)
    # Block this loop (the reader) while the engine thread goes on stepping.
    seq = engine.engine.requests["lag"].sequences[0]
    deadline = time.monotonic() + 60
    # One step past the mark: a step's token is counted on the sequence a moment before
    # its output is published.
    while seq.num_output_tokens < first + 6 and not seq.is_finished:
        assert time.monotonic() < deadline, "the engine made no progress"
        time.sleep(0.01)
    rest = [out async for out in stream]
    # The steps made meanwhile arrive as one output (their newest), not one each.
    assert len(rest[0].outputs[0].token_ids) >= first + 5
    assert rest[-1].finished and len(rest[-1].outputs[0].token_ids) == 40
    lengths = [len(o.outputs[0].token_ids) for o in rest]
    assert lengths == sorted(set(lengths))  # growing, never the same output twice


async def test_closing_the_stream_aborts_and_frees_blocks(engine: AsyncEngine) -> None:
    free_before = engine.engine.block_manager.num_free_blocks
    stream = engine.generate("abort me", SamplingParams(max_tokens=400, ignore_eos=True), "ab")
    async for out in stream:
        if len(out.outputs[0].token_ids) >= 3:
            break
    await stream.aclose()
    for _ in range(100):
        if (
            engine.engine.block_manager.num_free_blocks == free_before
            and not engine.engine.requests
        ):
            break
        await asyncio.sleep(0.01)
    assert engine.engine.block_manager.num_free_blocks == free_before
    assert "ab" not in engine.engine.requests


async def test_bad_requests_fail_alone(engine: AsyncEngine) -> None:
    good = asyncio.create_task(collect(engine, "fine", SamplingParams(max_tokens=5), "g1"))
    with pytest.raises(InputError, match="max_tokens=100000 does not fit"):
        await collect(engine, "too long", SamplingParams(max_tokens=100000), "b1")
    with pytest.raises(InputError, match="already in use"):
        await asyncio.gather(
            collect(engine, "x", SamplingParams(max_tokens=50), "dup"),
            collect(engine, "y", SamplingParams(max_tokens=50), "dup"),
        )
    assert (await good)[-1].finished


async def test_a_failing_step_fails_its_requests_not_the_thread(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(engine.engine.runner, "execute", broken)
    with pytest.raises(RuntimeError, match="boom"):
        await collect(engine, "x", SamplingParams(max_tokens=3), "f1")
    monkeypatch.undo()
    assert engine.alive
    assert not engine.engine.requests and engine.engine.block_manager.usage() == 0.0
    assert (await collect(engine, "x", SamplingParams(max_tokens=3), "f2"))[-1].finished


async def test_overload_is_refused(tiny_qwen2_vl: Path) -> None:
    small = AsyncEngine(build_engine(EngineConfig(str(tiny_qwen2_vl))), max_waiting=1).start()
    try:
        first = small.generate("a", SamplingParams(max_tokens=50, ignore_eos=True), "o1")
        await first.__anext__()
        with pytest.raises(EngineOverloaded):
            await collect(small, "b", SamplingParams(max_tokens=2), "o2")
        await first.aclose()
    finally:
        small.close()
