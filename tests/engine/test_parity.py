"""The whole engine against transformers' `generate` on the same tiny checkpoints.

Greedy tokens must match token for token, for prompts with 0, 1 and 3 images of different
sizes, run one at a time and all in one batch with chunked prefill forced on; top-5
logprobs must match within LOGPROB_TOL at several steps (random models often repeat one
token, so equal tokens alone prove little). Prefix-cache hits, vision-cache hits by UUID and
preemption under a tiny KV cache must not change a single token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from tests.models.test_parity import make_image
from vlmserve.models.config import ModelConfig
from vlmserve.offline import LLM
from vlmserve.types import SamplingParams

MAX_TOKENS = 8
LOGPROB_TOL = 1e-3  # fp32 both sides; measured max |diff| is ~1e-5
PAD = "<|vision_start|><|image_pad|><|vision_end|>"
# (text, image sizes): 9 prompts mixing 0, 1 and 3 images.
PROMPTS: list[tuple[str, list[tuple[int, int]]]] = [
    ("Hello there", []),
    (f"{PAD}What is in this picture?", [(56, 56)]),
    (f"First {PAD} then {PAD} and {PAD}. Compare them.", [(56, 56), (140, 84), (100, 190)]),
    ("def fibonacci(n):", []),
    (f"Describe {PAD} briefly", [(112, 168)]),
    (f"{PAD}{PAD}{PAD}", [(84, 84), (56, 112), (196, 56)]),
    ("The quick brown fox jumps over", []),
    (f"Look: {PAD}", [(224, 224)]),
    (f"A {PAD} B {PAD} C {PAD} D", [(70, 70), (56, 56), (90, 60)]),
]
HF_CLASSES: dict[str, Any] = {
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
}


def chat(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def engine_prompt(i: int, uuids: bool = False) -> dict[str, Any]:
    text, sizes = PROMPTS[i]
    images = [make_image(w, h, seed=10 * i + j) for j, (w, h) in enumerate(sizes)]
    prompt: dict[str, Any] = {"prompt": chat(text), "multi_modal_data": {"image": images}}
    if uuids:
        prompt["multi_modal_uuids"] = {"image": [f"img-{i}-{j}" for j in range(len(images))]}
    return prompt


GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=5, ignore_eos=True)


@pytest.fixture(scope="module")
def reference(arch: str, folder: Path) -> list[tuple[list[int], torch.Tensor]]:
    """transformers' greedy tokens and raw log-softmaxed logits per step, per prompt."""
    hf = HF_CLASSES[arch].from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
    # Prompt ids with expanded placeholders come from the engine: the same ids go to both.
    llm = LLM(str(folder), dtype="float32")
    results = []
    for i in range(len(PROMPTS)):
        prompt = engine_prompt(i)
        ids = llm.engine.process_input(prompt).token_ids
        kwargs: dict[str, Any] = {}
        images = prompt["multi_modal_data"]["image"]
        if images:
            out = processor(images, return_tensors="pt")
            kwargs = {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}
        results.append(hf_greedy(hf, ids, llm.engine.model_config, **kwargs))
    return results


def hf_greedy(
    hf: Any, ids: list[int], config: ModelConfig, **vision: Any
) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy MAX_TOKENS tokens after `ids`, and each step's raw logprobs."""
    input_ids = torch.tensor([ids])
    token_types = (input_ids == config.image_token_id).int() + 2 * (
        input_ids == config.video_token_id
    ).int()
    with torch.inference_mode():
        gen = hf.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            mm_token_type_ids=token_types,
            max_new_tokens=MAX_TOKENS,
            min_new_tokens=MAX_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            **vision,
        )
    tokens = gen.sequences[0, len(ids) :].tolist()
    return tokens, torch.log_softmax(torch.stack(gen.logits)[:, 0].float(), dim=-1)


def assert_matches(outputs: list[Any], reference: list[tuple[list[int], torch.Tensor]]) -> None:
    for i, (out, (tokens, logprobs)) in enumerate(zip(outputs, reference, strict=True)):
        completion = out.outputs[0]
        assert completion.token_ids == tokens, f"prompt {i}"
        for step in (0, 3, MAX_TOKENS - 1):
            for token_id, lp in completion.logprobs[step].items():
                diff = abs(lp.logprob - logprobs[step, token_id].item())
                assert diff < LOGPROB_TOL, f"prompt {i} step {step} token {token_id}: {diff}"
            top5 = set(logprobs[step].topk(5).indices.tolist())
            assert top5 <= set(completion.logprobs[step]), f"prompt {i} step {step}"


def test_one_at_a_time_matches_transformers(folder: Path, reference: list[Any]) -> None:
    llm = LLM(str(folder), dtype="float32")
    outputs = [llm.generate(engine_prompt(i), GREEDY)[0] for i in range(len(PROMPTS))]
    assert_matches(outputs, reference)


def test_one_batch_with_chunked_prefill_matches_transformers(
    folder: Path, reference: list[Any]
) -> None:
    llm = LLM(str(folder), dtype="float32", max_num_batched_tokens=24, block_size=4)
    outputs = llm.generate([engine_prompt(i) for i in range(len(PROMPTS))], GREEDY)
    assert_matches(outputs, reference)
    # Second pass: whole prompts are in the prefix cache now (all but the block holding the
    # last token, which must be computed); outputs must not change.
    again = llm.generate([engine_prompt(i) for i in range(len(PROMPTS))], GREEDY)
    assert_matches(again, reference)
    for first, second in zip(outputs, again):
        assert second.metrics.num_cached_tokens >= len(second.prompt_token_ids) - 4
        assert second.metrics.num_cached_tokens > first.metrics.num_cached_tokens


def test_vision_cache_by_uuid_serves_identical_output(folder: Path, reference: list[Any]) -> None:
    llm = LLM(str(folder), dtype="float32")
    first = llm.generate([engine_prompt(i, uuids=True) for i in range(len(PROMPTS))], GREEDY)
    by_uuid = []
    for i in range(len(PROMPTS)):
        prompt = engine_prompt(i, uuids=True)
        prompt["multi_modal_data"] = {"image": [None] * len(PROMPTS[i][1])}
        by_uuid.append(prompt)
    misses = llm.engine.mm_cache.misses
    second = llm.generate(by_uuid, GREEDY)
    assert_matches(first, reference)
    assert_matches(second, reference)
    assert llm.engine.mm_cache.misses == misses


def test_preemption_under_a_tiny_kv_cache_keeps_outputs(folder: Path, reference: list[Any]) -> None:
    # 29 usable blocks of 4 tokens: the biggest request (88 tokens) fits alone; admitted
    # requests then outgrow the cache while decoding.
    llm = LLM(
        str(folder), dtype="float32", num_kv_blocks=30, block_size=4, enable_prefix_caching=False
    )
    outputs = llm.generate([engine_prompt(i) for i in range(len(PROMPTS))], GREEDY)
    assert llm.engine.scheduler.num_preemptions > 0
    assert_matches(outputs, reference)
    assert llm.engine.block_manager.num_free_blocks == 29
