"""Prefix-cache identity on the tiny model: blocks that collide under Python's `hash()` keep
their own KV, cached answers equal uncached ones, and `cache_salt` separates requests."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.engine.hash_collision import BLOCK_A, BLOCK_B
from vlmserve.engine.inputs import InputError
from vlmserve.offline import LLM
from vlmserve.types import RequestOutput, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
SUFFIX = [1831, 1337, 886, 297, 327]


@pytest.fixture(scope="module")
def cached(tiny_qwen2_vl: Path) -> LLM:
    return LLM(str(tiny_qwen2_vl), max_model_len=256, dtype="float32")


@pytest.fixture(scope="module")
def uncached(tiny_qwen2_vl: Path) -> LLM:
    return LLM(str(tiny_qwen2_vl), max_model_len=256, dtype="float32", enable_prefix_caching=False)


def tokens(out: RequestOutput) -> list[int]:
    return out.outputs[0].token_ids


def test_a_block_colliding_under_the_old_hash_is_computed_not_reused(
    cached: LLM, uncached: LLM
) -> None:
    assert hash(tuple(BLOCK_A)) == hash(tuple(BLOCK_B))  # the old block name collides
    assert cached.engine.block_manager.block_size == len(BLOCK_A)
    poison = cached.generate({"prompt_token_ids": BLOCK_B + SUFFIX}, GREEDY)[0]
    victim = cached.generate({"prompt_token_ids": BLOCK_A + SUFFIX}, GREEDY)[0]
    assert victim.metrics is not None and victim.metrics.num_cached_tokens == 0
    reference = uncached.generate({"prompt_token_ids": BLOCK_A + SUFFIX}, GREEDY)[0]
    assert tokens(victim) == tokens(reference)
    assert tokens(poison) == tokens(
        uncached.generate({"prompt_token_ids": BLOCK_B + SUFFIX}, GREEDY)[0]
    )


def _prompts() -> list[str | dict[str, object]]:
    system = "<|im_start|>system\nYou answer in one short sentence about the picture.<|im_end|>\n"
    image = Image.new("RGB", (56, 84), "teal")
    return [
        system + f"<|im_start|>user\nQuestion {i}: what happens next?<|im_end|>\n"
        "<|im_start|>assistant\n"
        for i in range(3)
    ] + [
        {
            "prompt": system + "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
            "Describe it.<|im_end|>\n<|im_start|>assistant\n",
            "multi_modal_data": {"image": [image]},
        }
    ]


def test_cached_outputs_equal_uncached_outputs(cached: LLM, uncached: LLM) -> None:
    prompts = _prompts()
    reference = [tokens(o) for o in uncached.generate(prompts, GREEDY)]
    first = cached.generate(prompts, GREEDY)
    again = cached.generate(prompts, GREEDY)
    assert all(o.metrics is not None and o.metrics.num_cached_tokens > 0 for o in again)
    assert [tokens(o) for o in first] == reference
    assert [tokens(o) for o in again] == reference


def test_cache_salt_separates_requests(cached: LLM) -> None:
    prompt = "<|im_start|>user\nA prompt long enough to fill two blocks of the cache.<|im_end|>\n"

    def cached_tokens(salt: str | None) -> int:
        out = cached.generate({"prompt": prompt, "cache_salt": salt}, GREEDY)[0]
        assert out.metrics is not None
        return out.metrics.num_cached_tokens

    assert cached_tokens("alice") == 0
    assert cached_tokens("alice") > 0
    assert cached_tokens("bob") == 0
    assert cached_tokens(None) == 0
    with pytest.raises(InputError) as info:
        cached.generate({"prompt": prompt, "cache_salt": 3}, GREEDY)
    assert info.value.param == "cache_salt"
