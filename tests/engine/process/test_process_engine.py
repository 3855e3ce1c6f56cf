"""The engine in its own process, driven through `ProcessEngine`: the same outputs as the
engine in this process (text, token ids, logprobs, n > 1, grammars, images), aborts that
free the engine, input errors that keep their field, and an engine process killed by PID
that ends every open request with a clear error instead of a hang."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.engine.process.conftest import settled_leaks, started
from vlmserve.config import EngineConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.engine.engine import build_engine
from vlmserve.engine.errors import EngineClosed, EngineDead
from vlmserve.engine.inputs import InputError
from vlmserve.engine.process import ProcessEngine
from vlmserve.types import (
    MediaInput,
    Prompt,
    RequestOutput,
    SamplingParams,
    StructuredOutputsParams,
)

BOUND_S = 60  # far beyond any wait on a loaded 2-core machine
SCHEMA = {
    "type": "object",
    "properties": {"safe": {"type": "boolean"}, "why": {"type": "string"}},
    "required": ["safe", "why"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def reference(tiny_qwen2_vl: Path) -> Iterator[AsyncEngine]:
    config = EngineConfig(str(tiny_qwen2_vl), max_model_len=512, kv_cache_memory_bytes=8 << 20)
    engine = AsyncEngine(build_engine(config)).start()
    yield engine
    engine.close()


async def run(
    engine: AsyncEngine | ProcessEngine, prompt: Prompt, params: SamplingParams, rid: str
) -> list[RequestOutput]:
    return [out async for out in engine.generate(prompt, params, rid)]


def image(seed: int) -> Image.Image:
    return Image.frombytes("RGB", (56, 56), bytes((seed * 7 + i) % 256 for i in range(56 * 56 * 3)))


def image_prompt(seed: int) -> Prompt:
    text = "<|vision_start|><|image_pad|><|vision_end|>describe"
    return Prompt(text=text, media=[MediaInput("image", image(seed))])


CASES = [
    ("greedy", Prompt(text="hello world"), SamplingParams(max_tokens=12, temperature=0.0)),
    (
        "seeded n=2 with logprobs",
        Prompt(text="a b c"),
        SamplingParams(n=2, max_tokens=10, seed=7, logprobs=2, ignore_eos=True),
    ),
    (
        "json schema",
        Prompt(text="classify"),
        SamplingParams(
            max_tokens=40,
            temperature=0.0,
            structured_outputs=StructuredOutputsParams(json=SCHEMA),
        ),
    ),
    ("stop string", Prompt(text="x y"), SamplingParams(max_tokens=30, seed=3, stop=["e"])),
    ("image", image_prompt(1), SamplingParams(max_tokens=8, temperature=0.0)),
]


@pytest.mark.parametrize(("name", "prompt", "params"), CASES, ids=[c[0] for c in CASES])
async def test_outputs_equal_the_in_process_engine(
    process_engine: ProcessEngine,
    reference: AsyncEngine,
    name: str,
    prompt: Prompt,
    params: SamplingParams,
) -> None:
    ours = await run(process_engine, prompt, params, f"p-{name}")
    theirs = await run(reference, prompt, params, f"r-{name}")
    assert ours[-1].finished and not any(o.finished for o in ours[:-1])
    mine, ref = ours[-1], theirs[-1]
    assert mine.prompt_token_ids == ref.prompt_token_ids
    assert mine.num_media_tokens == ref.num_media_tokens
    assert [
        (c.index, c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in mine.outputs
    ] == [(c.index, c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in ref.outputs]
    assert [c.logprobs for c in mine.outputs] == [c.logprobs for c in ref.outputs]
    assert mine.metrics is not None and mine.metrics.finished_time is not None
    # Each output the stream yielded is a snapshot: later ones never changed it.
    lengths = [len(o.outputs[0].token_ids) for o in ours]
    assert lengths == sorted(lengths)


async def test_an_image_sent_again_is_served_from_the_engines_media_cache(
    process_engine: ProcessEngine,
) -> None:
    params = SamplingParams(max_tokens=2, temperature=0.0)
    first = await run(process_engine, image_prompt(2), params, "img-a")
    hits, sent = process_engine.stats().mm_cache_hits, process_engine.media.cache.hits
    again = await run(process_engine, image_prompt(2), params, "img-b")
    assert again[-1].outputs[0].token_ids == first[-1].outputs[0].token_ids
    assert process_engine.stats().mm_cache_hits == hits + 1
    # It crossed by key alone: not preprocessed again on this side.
    assert process_engine.media.cache.hits == sent + 1


async def test_media_the_engine_process_no_longer_holds_is_sent_again_in_full(
    process_engine: ProcessEngine, reference: AsyncEngine
) -> None:
    params = SamplingParams(max_tokens=4, temperature=0.0)
    prompt = image_prompt(4)
    # This side believes the engine process holds the image; it never saw it (as after an
    # eviction there).
    process_engine.media.remember(process_engine.inputs.process(prompt).mm_items)
    misses = process_engine.stats().mm_cache_misses
    ours = await run(process_engine, prompt, params, "gone")
    theirs = await run(reference, image_prompt(4), params, "gone-ref")
    assert ours[-1].outputs[0].token_ids == theirs[-1].outputs[0].token_ids
    assert process_engine.stats().mm_cache_misses >= misses + 1
    assert len(process_engine.media.cache) == 1  # forgotten, then remembered as sent


async def test_media_named_by_uuid_alone_is_resolved_in_the_engine_process(
    process_engine: ProcessEngine,
) -> None:
    params = SamplingParams(max_tokens=2, temperature=0.0)
    first = image_prompt(3)
    first.media[0].uuid = "picture-3"
    sent = await run(process_engine, first, params, "uuid-a")
    named = Prompt(text=first.text, media=[MediaInput("image", None, uuid="picture-3")])
    again = await run(process_engine, named, params, "uuid-b")
    assert again[-1].num_media_tokens == sent[-1].num_media_tokens
    assert again[-1].prompt_token_ids == sent[-1].prompt_token_ids
    unknown = Prompt(text=first.text, media=[MediaInput("image", None, uuid="nobody")])
    with pytest.raises(InputError, match="not in the media cache") as caught:
        await run(process_engine, unknown, params, "uuid-c")
    assert caught.value.param == "multi_modal_data.image[0]"


async def test_input_errors_keep_their_field(process_engine: ProcessEngine) -> None:
    with pytest.raises(InputError) as caught:
        await run(process_engine, Prompt(text="hi"), SamplingParams(max_tokens=5000), "long")
    assert caught.value.param == "max_tokens"  # found by the engine process, at admission
    bad = StructuredOutputsParams(regex="(unclosed")
    with pytest.raises(InputError) as caught:
        await run(process_engine, Prompt(text="hi"), SamplingParams(structured_outputs=bad), "re")
    assert caught.value.param is not None and caught.value.param.startswith("structured_outputs")


async def test_closing_a_stream_aborts_the_request_in_the_engine_process(
    process_engine: ProcessEngine,
) -> None:
    params = SamplingParams(max_tokens=400, ignore_eos=True)
    stream = process_engine.generate(Prompt(text="abort me"), params, "abort")
    async for out in stream:
        if len(out.outputs[0].token_ids) >= 3:
            break
    await stream.aclose()
    assert await asyncio.to_thread(settled_leaks, process_engine) == []
    # A caller cancelled while its request is still being sent aborts it too.
    task = asyncio.ensure_future(run(process_engine, Prompt(text="gone"), params, "early"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(settled_leaks, process_engine) == []
    assert process_engine.num_in_flight == 0


async def test_scoring_crosses_the_process_boundary(
    process_engine: ProcessEngine, reference: AsyncEngine
) -> None:
    continuations = [[5, 6, 7], [8]]
    ours = await process_engine.score(Prompt(text="score"), continuations, "s-p", top_logprobs=2)
    theirs = await reference.score(Prompt(text="score"), continuations, "s-r", top_logprobs=2)
    assert [c.logprobs for c in ours.outputs] == [c.logprobs for c in theirs.outputs]
    assert [c.cumulative_logprob for c in ours.outputs] == [
        c.cumulative_logprob for c in theirs.outputs
    ]


async def test_metrics_come_from_the_engine_process(process_engine: ProcessEngine) -> None:
    params = SamplingParams(max_tokens=30, ignore_eos=True)
    stream = process_engine.generate(Prompt(text="metrics"), params, "metrics")
    await anext(stream)
    stats = process_engine.stats()
    assert stats.num_running + stats.num_waiting == 1 and stats.kv_cache_usage > 0
    assert stats.stalled_seconds < BOUND_S
    assert time.monotonic() - process_engine.last_progress < BOUND_S
    await stream.aclose()


async def test_a_killed_engine_process_ends_every_open_request(tiny_qwen2_vl: Path) -> None:
    engine = await asyncio.to_thread(started, tiny_qwen2_vl)
    try:
        params = SamplingParams(max_tokens=400, ignore_eos=True)
        streams = [engine.generate(Prompt(text=f"p{i}"), params, f"k{i}") for i in range(4)]
        for stream in streams:
            await anext(stream)  # each is running in the engine process
        assert engine.pid is not None
        os.kill(engine.pid, signal.SIGKILL)

        async def rest(stream: object) -> BaseException | None:
            try:
                async for _ in stream:  # type: ignore[attr-defined]
                    pass
            except EngineDead as exc:
                return exc
            return None

        errors = await asyncio.wait_for(asyncio.gather(*(rest(s) for s in streams)), BOUND_S)
        assert all(isinstance(e, EngineDead) and "SIGKILL" in str(e) for e in errors), errors
        assert not engine.alive and engine.num_in_flight == 0
        with pytest.raises(EngineDead, match="SIGKILL"):
            await run(engine, Prompt(text="later"), params, "later")
    finally:
        await asyncio.to_thread(engine.close)


async def test_close_ends_open_streams_and_the_process(tiny_qwen2_vl: Path) -> None:
    engine = await asyncio.to_thread(started, tiny_qwen2_vl)
    params = SamplingParams(max_tokens=400, ignore_eos=True)
    stream = engine.generate(Prompt(text="open"), params, "open")
    await anext(stream)
    pid = engine.pid
    await asyncio.to_thread(engine.close)
    with pytest.raises(EngineClosed):
        async with asyncio.timeout(BOUND_S):
            async for _ in stream:
                pass
    assert not engine.alive and engine.memory_bytes() == 0
    with pytest.raises(ProcessLookupError):
        assert pid is not None
        os.kill(pid, 0)  # gone, reaped
    with pytest.raises(EngineClosed):
        await run(engine, Prompt(text="after"), params, "after")


async def test_a_build_failure_is_raised_by_start(tmp_path: Path) -> None:
    engine = ProcessEngine(EngineConfig(str(tmp_path / "missing")))
    with pytest.raises(Exception, match="missing"):
        await asyncio.to_thread(engine.start)
    assert not engine.alive
