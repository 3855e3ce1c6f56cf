"""The engine as a resource: build -> start -> drain -> close. Closing wakes every open
stream with an error, refuses later requests at once, and frees the engine's memory."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from vlmserve.config import EngineConfig
from vlmserve.engine.async_engine import (
    AsyncEngine,
    EngineClosed,
    EngineDead,
    EngineDraining,
)
from vlmserve.engine.engine import LLMEngine, build_engine
from vlmserve.types import RequestOutput, SamplingParams, StructuredOutputsParams

LONG = SamplingParams(max_tokens=400, ignore_eos=True)
# Far beyond any step on a loaded 2-core machine, far below "hangs forever".
PROMPT_S = 30


@pytest.fixture
def engine(tiny_qwen2_vl: Path) -> Iterator[AsyncEngine]:
    async_engine = AsyncEngine(build_engine(EngineConfig(str(tiny_qwen2_vl), max_model_len=512)))
    yield async_engine.start()
    async_engine.close()


async def first_output(stream: AsyncIterator[RequestOutput]) -> RequestOutput:
    return await asyncio.wait_for(anext(stream), PROMPT_S)


async def test_build_starts_nothing(tiny_qwen2_vl: Path) -> None:
    before = set(threading.enumerate())
    engine = AsyncEngine(build_engine(EngineConfig(str(tiny_qwen2_vl), max_model_len=512)))
    assert set(threading.enumerate()) <= before and not engine.alive
    with pytest.raises(EngineDead):
        await anext(engine.generate("x", SamplingParams(max_tokens=2), "n1"))
    engine.close()  # a never-started engine closes too, and frees its memory
    assert engine.engine.closed
    with pytest.raises(EngineClosed):
        engine.start()


async def test_close_wakes_every_open_stream(engine: AsyncEngine) -> None:
    streams = [engine.generate(f"open {i}", LONG, f"open{i}") for i in range(3)]
    for stream in streams:
        await first_output(stream)

    async def rest(stream: AsyncIterator[RequestOutput]) -> None:
        async for _ in stream:
            pass

    waiting = [asyncio.create_task(rest(s)) for s in streams]
    await asyncio.to_thread(engine.close)
    done, _ = await asyncio.wait(waiting, timeout=PROMPT_S)
    assert done == set(waiting), "a stream kept waiting after close()"
    for task in waiting:
        with pytest.raises(EngineClosed, match="closed while this request was running"):
            task.result()
    assert not engine.alive


async def test_requests_after_close_fail_at_once(engine: AsyncEngine) -> None:
    engine.close()
    with pytest.raises(EngineClosed):
        await asyncio.wait_for(anext(engine.generate("late", LONG, "late")), PROMPT_S)


async def test_an_add_racing_close_fails_its_caller(engine: AsyncEngine) -> None:
    """A request still in input processing when close() runs is refused when it posts."""
    params = SamplingParams(max_tokens=4)
    ready = engine.engine.process_input("racing")
    entered, release = threading.Event(), threading.Event()

    def slow_process_input(*_: Any) -> Any:
        entered.set()
        release.wait(PROMPT_S)
        return ready

    engine.engine.process_input = slow_process_input  # type: ignore[method-assign]
    task = asyncio.create_task(anext(engine.generate("racing", params, "racing")))
    assert await asyncio.to_thread(entered.wait, PROMPT_S)
    await asyncio.to_thread(engine.close)
    release.set()
    with pytest.raises(EngineClosed, match="before this request started"):
        await asyncio.wait_for(task, PROMPT_S)


async def test_drain_refuses_new_requests_and_waits_for_running_ones(engine: AsyncEngine) -> None:
    params = SamplingParams(max_tokens=24, ignore_eos=True)

    async def run() -> RequestOutput:
        outs = [out async for out in engine.generate("drain me", params, "d1")]
        return outs[-1]

    running = asyncio.create_task(run())
    while engine.num_in_flight == 0:
        await asyncio.sleep(0.01)
    drain = asyncio.create_task(engine.drain(timeout=PROMPT_S))
    await asyncio.sleep(0)
    with pytest.raises(EngineDraining):
        await anext(engine.generate("refused", params, "d2"))
    assert await drain is True
    final = running.result()  # finished before drain returned, uncut
    assert final.finished and len(final.outputs[0].token_ids) == 24
    assert engine.num_in_flight == 0


async def test_drain_gives_up_at_its_deadline_and_resume_admits_again(
    engine: AsyncEngine,
) -> None:
    stream = engine.generate("long one", LONG, "d3")
    await first_output(stream)
    assert await engine.drain(timeout=0.05) is False
    assert engine.num_in_flight == 1 and engine.alive  # nothing was cut
    engine.resume()
    outs = [o async for o in engine.generate("again", SamplingParams(max_tokens=2), "d4")]
    assert outs[-1].finished
    await stream.aclose()  # aborts the long request


def _tensors_of(engine: LLMEngine) -> list[weakref.ref[Any]]:
    refs: list[weakref.ref[Any]] = [weakref.ref(t) for t in engine.runner.kv_caches]
    refs += [weakref.ref(p) for p in engine.model.parameters()]  # type: ignore[attr-defined]
    return refs


def test_close_frees_tensors_even_while_the_engine_is_referenced(tiny_qwen2_vl: Path) -> None:
    from PIL import Image

    engine = build_engine(EngineConfig(str(tiny_qwen2_vl), max_model_len=512))
    image = Image.new("RGB", (56, 56), "red")
    prompt = {
        "prompt": "<|vision_start|><|image_pad|><|vision_end|>What is it?",
        "multi_modal_data": {"image": [image]},
    }
    structured = StructuredOutputsParams(choice=["yes", "no"])
    engine.add_request("img", prompt, SamplingParams(max_tokens=4))
    engine.add_request(
        "json", "Answer:", SamplingParams(max_tokens=4, structured_outputs=structured)
    )
    for _ in range(50):
        if not engine.has_unfinished():
            break
        engine.step()
    engine.add_request("left running", "more", SamplingParams(max_tokens=400, ignore_eos=True))
    engine.step()
    refs = _tensors_of(engine)
    assert len(engine.mm_cache) == 1
    refs += [weakref.ref(item.embeddings) for item in engine.mm_cache._items.values()]
    backend = weakref.ref(engine.guided.backend)
    engine.close()
    gc.collect()
    assert not engine.requests and len(engine.mm_cache) == 0
    assert all(r() is None for r in refs), "a KV, weight or embedding tensor survived close()"
    assert backend() is None, "the grammar backend (compile cache) survived close()"
    with pytest.raises(EngineClosed):
        engine.add_request("after", "x", SamplingParams(max_tokens=2))
    with pytest.raises(EngineClosed):
        engine.step()
    engine.close()  # idempotent


MEMORY_SCRIPT = """
import json, sys
import psutil
from vlmserve.config import EngineConfig
from vlmserve.engine.engine import build_engine
from vlmserve.types import SamplingParams

process = psutil.Process()
engine = build_engine(EngineConfig(sys.argv[1], max_model_len=512,
                                   kv_cache_memory_bytes=int(sys.argv[2])))
footprint = sum(t.nbytes for t in engine.runner.kv_caches)
footprint += sum(p.numel() * p.element_size() for p in engine.model.parameters())
engine.add_request("r", "hello there", SamplingParams(max_tokens=8, ignore_eos=True))
while engine.has_unfinished():
    engine.step()
loaded = process.memory_info().rss
engine.close()
closed = process.memory_info().rss
print(json.dumps({"footprint": footprint, "loaded": loaded, "closed": closed}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS accounting as on Linux")
def test_close_returns_the_memory_to_the_os(tiny_qwen2_vl: Path) -> None:
    kv_bytes = 256 * 1024 * 1024  # large enough to dwarf the interpreter's own noise
    run = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tiny_qwen2_vl), str(kv_bytes)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    released = facts["loaded"] - facts["closed"]
    assert facts["footprint"] >= kv_bytes * 0.9
    assert released >= 0.8 * facts["footprint"], facts


@pytest.mark.gpu
def test_close_empties_the_cuda_cache(tiny_qwen2_vl: Path) -> None:
    engine = build_engine(EngineConfig(str(tiny_qwen2_vl), device="cuda", max_model_len=512))
    held = torch.cuda.memory_reserved()
    assert held > 0
    engine.close()
    assert torch.cuda.memory_reserved() < held * 0.2


def test_the_thread_count_belongs_to_the_process_owner(tiny_qwen2_vl: Path) -> None:
    from vlmserve.offline import LLM

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    try:
        build_engine(EngineConfig(str(tiny_qwen2_vl), max_model_len=256)).close()
        assert torch.get_num_threads() == before  # an engine never sets it
        with LLM(str(tiny_qwen2_vl), max_model_len=256):
            assert torch.get_num_threads() == before  # nor does LLM unless asked
        with LLM(str(tiny_qwen2_vl), max_model_len=256, cpu_threads=wanted) as llm:
            assert torch.get_num_threads() == wanted
        assert llm.engine.closed
        with pytest.raises(ValueError, match="cpu_threads must be at least 1"):
            LLM(str(tiny_qwen2_vl), cpu_threads=0)
    finally:
        torch.set_num_threads(before)


async def test_a_dying_engine_thread_ends_every_stream_and_refuses_later_requests(
    engine: AsyncEngine,
) -> None:
    real_step, steps = engine.engine.step, 0

    def dies_at_the_fourth_step() -> Any:
        nonlocal steps
        steps += 1
        if steps > 3:
            raise SystemExit("killed")  # not an Exception: nothing in the loop catches it
        return real_step()

    engine.engine.step = dies_at_the_fourth_step  # type: ignore[method-assign]

    async def read_all() -> list[RequestOutput]:
        return [output async for output in engine.generate("dies", LONG, "dies")]

    with pytest.raises(EngineDead, match="the engine loop stopped while this request was running"):
        await asyncio.wait_for(read_all(), PROMPT_S)
    assert not engine.alive and steps == 4
    with pytest.raises(EngineDead, match="the engine loop stopped"):
        await asyncio.wait_for(anext(engine.generate("late", LONG, "late")), PROMPT_S)


async def test_an_idle_loop_still_shows_progress(engine: AsyncEngine) -> None:
    before = engine.last_progress
    await asyncio.sleep(1.5)  # HEARTBEAT_S is 1 s
    assert engine.last_progress > before


def test_memory_bytes_counts_the_live_tensors(tiny_qwen2_vl: Path) -> None:
    kv_bytes = 16 * 1024 * 1024
    llm = build_engine(
        EngineConfig(str(tiny_qwen2_vl), max_model_len=512, kv_cache_memory_bytes=kv_bytes)
    )
    weights = sum(p.numel() * p.element_size() for p in llm.model.parameters())  # type: ignore[attr-defined]
    assert weights + kv_bytes * 0.9 <= llm.memory_bytes() <= weights + kv_bytes * 1.1 + 2**20
    llm.close()
    assert llm.memory_bytes() == 0
