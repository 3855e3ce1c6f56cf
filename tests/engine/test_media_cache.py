"""The vision-embedding cache: UUIDs are namespaced by the request's cache salt, and data sent
under a cached UUID is checked against it — never answered from what the cache holds
(issue 9 finding 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vlmserve.engine.inputs import InputError
from vlmserve.engine.mm_cache import cache_key
from vlmserve.offline import LLM
from vlmserve.types import RequestOutput, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=3)
TEXT = (
    "<|im_start|>system\nYou describe pictures in one short sentence.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def llm(tiny_qwen2_vl: Path) -> LLM:
    return LLM(str(tiny_qwen2_vl), max_model_len=512, dtype="float32")


def image(color: str) -> Image.Image:
    return Image.new("RGB", (56, 56), color)


def ask(
    llm: LLM, data: Image.Image | None, uuid: str | None, salt: str | None = None
) -> RequestOutput:
    prompt: dict[str, Any] = {"prompt": TEXT, "multi_modal_data": {"image": [data]}}
    if uuid is not None:
        prompt["multi_modal_uuids"] = {"image": [uuid]}
    if salt is not None:
        prompt["cache_salt"] = salt
    return llm.generate(prompt, GREEDY)[0]


def answer(out: RequestOutput) -> tuple[list[int], list[Any]]:
    c = out.outputs[0]
    return c.token_ids, [sorted(step) for step in c.logprobs or []]


def test_a_uuid_means_something_only_within_its_salt(llm: LLM) -> None:
    first = ask(llm, image("red"), "sku-1", salt="tenant-a")
    again = ask(llm, None, "sku-1", salt="tenant-a")
    assert answer(again) == answer(first)
    for salt in ("tenant-b", None):
        with pytest.raises(InputError, match="'sku-1' is not in the media cache") as info:
            ask(llm, None, "sku-1", salt=salt)
        assert info.value.param == "multi_modal_data.image[0]"
    # Salts are not shown in cache keys.
    assert "tenant-a" not in cache_key("tenant-a", "sku-1")


def test_other_data_under_a_cached_uuid_is_computed_not_served_from_the_cache(llm: LLM) -> None:
    red = ask(llm, image("red"), "sku-2")
    reference_blue = ask(llm, image("blue"), None, salt="elsewhere")
    misses = llm.engine.mm_cache.misses
    blue = ask(llm, image("blue"), "sku-2")
    assert llm.engine.mm_cache.misses == misses + 1  # recomputed, not a hit on the red one
    assert answer(blue) == answer(reference_blue)
    # Nor does it reuse the red request's KV for the image: only blocks before it match.
    image_start = TEXT.index("<|vision_start|>")
    assert blue.metrics is not None and red.metrics is not None
    first_image_token = len(llm.engine.tokenizer.encode(TEXT[:image_start])) + 1
    block = llm.engine.block_manager.block_size
    assert blue.metrics.num_cached_tokens <= first_image_token // block * block
    # The UUID now names the blue image.
    assert answer(ask(llm, None, "sku-2")) == answer(reference_blue)
