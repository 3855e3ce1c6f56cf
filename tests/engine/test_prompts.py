"""Typed prompts: vLLM's dict forms convert once into `Prompt`, and a typed prompt is
processed exactly like its dict form (same tokens, same media items, same errors)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from vlmserve.engine.inputs import InputError
from vlmserve.engine.prompts import to_prompt
from vlmserve.offline import LLM
from vlmserve.types import MediaInput, Prompt, SamplingParams

PAD = "<|vision_start|><|image_pad|><|vision_end|>"
VPAD = "<|vision_start|><|video_pad|><|vision_end|>"
RED = Image.new("RGB", (56, 56), "red")
FRAMES = [Image.new("RGB", (56, 56), c) for c in ("red", "blue")]


@pytest.fixture(scope="module")
def llm(tiny_qwen2_5_vl: Path) -> Iterator[LLM]:
    with LLM(str(tiny_qwen2_5_vl), max_model_len=1024) as offline:
        yield offline


def test_dict_forms_convert_to_typed_items_in_order() -> None:
    assert to_prompt("hi") == Prompt(text="hi")
    typed = Prompt(text="x")
    assert to_prompt(typed) is typed
    converted = to_prompt(
        {
            "prompt": PAD + VPAD + PAD,
            "multi_modal_data": {"image": [RED, None], "video": {"frames": FRAMES, "fps": 4}},
            "multi_modal_uuids": {"image": [None, "sku"]},
        }
    )
    assert converted.text == PAD + VPAD + PAD
    assert converted.media == [
        MediaInput("image", RED),
        MediaInput("image", None, "sku"),
        MediaInput("video", FRAMES, None, 4),
    ]
    assert to_prompt({"prompt_token_ids": (1, 2)}) == Prompt(token_ids=[1, 2])


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (42, "a prompt must be a string or a dict"),
        ({"prompt": "x", "bogus": 1}, "unknown prompt fields"),
        ({"prompt_token_ids": 7}, "prompt_token_ids must be a list"),
        ({"prompt": "x", "multi_modal_data": [RED]}, "must be dicts"),
        (
            {
                "prompt": PAD,
                "multi_modal_data": {"image": [RED]},
                "multi_modal_uuids": {"image": ["a", "b"]},
            },
            "2 image uuids given for 1 images",
        ),
        ({"prompt": VPAD, "multi_modal_data": {"video": {"frames": FRAMES, "fps": None}}}, "fps"),
    ],
)
def test_malformed_dicts_are_input_errors(prompt: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        to_prompt(prompt)  # type: ignore[arg-type]


def test_a_typed_prompt_runs_like_its_dict_form(llm: LLM) -> None:
    params = SamplingParams(temperature=0, max_tokens=4)
    as_dict = {
        "prompt": PAD + "and" + VPAD,
        "multi_modal_data": {"image": [RED], "video": {"frames": FRAMES, "fps": 1.0}},
    }
    typed = Prompt(
        text=PAD + "and" + VPAD,
        media=[MediaInput("video", FRAMES, fps=1.0), MediaInput("image", RED)],
    )
    a = llm.engine.process_input(as_dict)
    b = llm.engine.process_input(typed)
    assert a.token_ids == b.token_ids
    assert [(i.modality, i.grid_thw, i.seconds_per_grid) for i in a.mm_items] == [
        (i.modality, i.grid_thw, i.seconds_per_grid) for i in b.mm_items
    ]
    first, second = llm.generate([as_dict, typed], params)
    assert first.outputs[0].token_ids == second.outputs[0].token_ids


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (Prompt(), "exactly one of 'prompt' and 'prompt_token_ids'"),
        (Prompt(text="a", token_ids=[1]), "exactly one"),
        (Prompt(token_ids=[10**9]), "prompt_token_ids must be ints"),
        (Prompt(text="x", media=[MediaInput("audio", b"")]), "modality 'audio'"),
        (Prompt(text=PAD, media=[MediaInput("image", "not an image")]), "must be a PIL image"),
        (Prompt(text=VPAD, media=[MediaInput("video", FRAMES, fps=-1)]), "fps must be a positive"),
        (Prompt(text=PAD), "1 image placeholders but 0 images"),
    ],
)
def test_typed_prompts_are_checked_like_dicts(llm: LLM, prompt: Prompt, message: str) -> None:
    with pytest.raises(InputError, match=message):
        llm.generate(prompt, SamplingParams(max_tokens=2))
    assert not llm.engine.has_unfinished()
