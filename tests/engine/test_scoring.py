"""Teacher-forced scoring of given continuations (engine/scoring.py) against transformers on
the same tiny checkpoints: every token's log-probability within 1e-4, for continuations that
share their first tokens, one that is a prefix of another, single tokens, under chunked
prefill, a tiny KV cache that preempts, and through `AsyncEngine.score`; the prompt's full
blocks come from the prefix cache for the continuations' branches; the engine holds nothing
afterwards."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Qwen2VLImageProcessorPil

from tests.engine.test_parity import HF_CLASSES, chat
from tests.models.test_parity import make_image
from vlmserve.config import EngineConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.engine.engine import LLMEngine, build_engine
from vlmserve.engine.inputs import InputError
from vlmserve.types import RequestOutput, SamplingParams

TOLERANCE = 1e-4  # fp32 on both sides
PAD = "<|vision_start|><|image_pad|><|vision_end|>"


def prompt() -> dict[str, Any]:
    return {
        "prompt": chat(f"{PAD}Classify this image."),
        "multi_modal_data": {"image": [make_image(84, 56, seed=3)]},
    }


def continuations(engine: LLMEngine) -> list[list[int]]:
    """Paths after a shared answer prefix, as the safety app scores class names: several
    share their first tokens, one ends where another goes on, one is a single token."""
    encode = engine.tokenizer.encode
    texts = ['{"best_class":"no"', '{"best_class":"no_issues"', '{"best_class":"gun"']
    paths = [encode(text) for text in texts]
    paths.append(paths[1][: len(paths[0])])  # shares every token of the first but its last
    paths.append(paths[0][:1])  # a single token
    paths.append([7, 8, 9, 10, 11, 12, 13])  # nothing in common with the others
    return paths


def run(engine: LLMEngine, request_id: str, conts: list[list[int]]) -> RequestOutput:
    engine.add_scoring_request(request_id, prompt(), conts)
    for _ in range(1000):
        for output in engine.step():
            if output.request_id == request_id and output.finished:
                return output
    raise AssertionError("the scoring request never finished")


def holds(engine: LLMEngine) -> list[str]:
    blocks = engine.block_manager
    found = [
        f"requests {list(engine.requests)}" if engine.requests else "",
        "sequences" if engine.scheduler.running or engine.scheduler.waiting else "",
        "blocks"
        if blocks.num_free_blocks < blocks.num_blocks - 1 or any(blocks.ref_counts)
        else "",
    ]
    return [f for f in found if f]


def assert_empty(engine: LLMEngine) -> None:
    assert not holds(engine)


@pytest.fixture(scope="module")
def reference(arch: str, folder: Path) -> tuple[list[list[int]], list[list[float]]]:
    """transformers' log-probability of every continuation token, one forward per path."""
    engine = build_engine(EngineConfig(str(folder), dtype="float32"))
    ids = engine.process_input(prompt()).token_ids
    conts = continuations(engine)
    config = engine.model_config
    engine.close()
    hf = HF_CLASSES[arch].from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    pixels = Qwen2VLImageProcessorPil.from_pretrained(folder)(
        prompt()["multi_modal_data"]["image"], return_tensors="pt"
    )
    expected = []
    for cont in conts:
        input_ids = torch.tensor([ids + cont])
        with torch.inference_mode():
            logits = hf(
                input_ids=input_ids,
                mm_token_type_ids=(input_ids == config.image_token_id).int(),
                pixel_values=pixels["pixel_values"],
                image_grid_thw=pixels["image_grid_thw"],
            ).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        expected.append([logprobs[len(ids) - 1 + i, t].item() for i, t in enumerate(cont)])
    return conts, expected


def assert_matches(output: RequestOutput, expected: list[list[float]]) -> None:
    assert output.finished and len(output.outputs) == len(expected)
    for k, (completion, want) in enumerate(zip(output.outputs, expected)):
        assert completion.finish_reason == "stop" and completion.logprobs is not None
        got = [entry[t].logprob for t, entry in zip(completion.token_ids, completion.logprobs)]
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            assert abs(g - w) < TOLERANCE, f"continuation {k} token {i}: {g} vs {w}"
        assert completion.cumulative_logprob == pytest.approx(sum(want), abs=TOLERANCE * len(want))


def test_scores_match_transformers_and_reuse_the_prompt(folder: Path, reference: Any) -> None:
    conts, expected = reference
    engine = build_engine(EngineConfig(str(folder), dtype="float32", block_size=4))
    first = run(engine, "s1", conts)
    assert_matches(first, expected)
    assert [c.token_ids for c in first.outputs] == conts
    # Branches reuse the head's blocks: the whole prompt but its last partial block.
    prompt_len = len(first.prompt_token_ids)
    assert first.metrics is not None
    assert first.metrics.num_cached_tokens >= prompt_len - 4
    assert_empty(engine)
    again = run(engine, "s2", conts)  # everything cached now: the scored positions still run
    assert_matches(again, expected)
    assert_empty(engine)
    engine.close()


def test_chunked_prefill_and_preemption_keep_the_scores(folder: Path, reference: Any) -> None:
    conts, expected = reference
    engine = build_engine(
        EngineConfig(
            str(folder),
            dtype="float32",
            block_size=4,
            max_num_batched_tokens=8,
            num_kv_blocks=20,
            enable_prefix_caching=False,
        )
    )
    # A generation grows to fill most of the 19 blocks of 4 tokens, then two scoring
    # requests arrive and compete with it.
    engine.add_request("gen", prompt(), SamplingParams(max_tokens=40, ignore_eos=True))
    for _ in range(25):
        engine.step()
    engine.add_scoring_request("a", prompt(), conts)
    engine.add_scoring_request("b", prompt(), conts)
    finished: dict[str, RequestOutput] = {}
    for _ in range(2000):
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
        if not engine.has_unfinished():
            break
    assert engine.scheduler.num_preemptions > 0
    assert_matches(finished["a"], expected)
    assert_matches(finished["b"], expected)
    assert_empty(engine)
    engine.close()


async def test_async_score_abort_and_bad_input(folder: Path, reference: Any) -> None:
    conts, expected = reference
    engine = AsyncEngine(build_engine(EngineConfig(str(folder), dtype="float32"))).start()
    try:
        assert_matches(await engine.score(prompt(), conts, "a1"), expected)
        # A caller that leaves aborts the request: nothing is left in the engine.
        task = asyncio.ensure_future(engine.score(prompt(), conts, "a2"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for bad, param in (([], "continuations"), ([[1], []], "continuations[1]")):
            with pytest.raises(InputError) as info:
                await engine.score(prompt(), bad, "bad")
            assert info.value.param == param
        vocab = engine.engine.model_config.vocab_size
        with pytest.raises(InputError, match=r"continuations\[0\]"):
            await engine.score(prompt(), [[vocab]], "bad")
        for _ in range(1000):  # the abort runs on the engine thread
            if not holds(engine.engine):
                break
            await asyncio.sleep(0.01)
        assert_empty(engine.engine)
    finally:
        engine.close()
