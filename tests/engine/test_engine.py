"""Engine behaviour through the offline API: sampling options, stops, n>1, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vlmserve.engine.inputs import InputError
from vlmserve.offline import LLM
from vlmserve.types import SamplingParams, StructuredOutputsParams


@pytest.fixture(scope="module")
def llm(tiny_qwen2_vl: Path) -> LLM:
    return LLM(str(tiny_qwen2_vl), max_model_len=256, dtype="float32")


PROMPT = "<|im_start|>user\nTell me a story<|im_end|>\n<|im_start|>assistant\n"


def test_seeded_sampling_is_reproducible_and_n_samples_differ(llm: LLM) -> None:
    params = SamplingParams(temperature=1.0, seed=3, n=3, max_tokens=12, ignore_eos=True)
    first = llm.generate(PROMPT, params)[0]
    again = llm.generate([PROMPT, "other prompt"], [params, params])[0]
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in again.outputs]
    assert len({tuple(c.token_ids) for c in first.outputs}) == 3
    assert [c.index for c in first.outputs] == [0, 1, 2]


def test_max_tokens_min_tokens_and_ignore_eos(llm: LLM) -> None:
    eos = next(iter(llm.engine.stop_ids))
    out = llm.generate(
        PROMPT,
        SamplingParams(temperature=0.0, max_tokens=5, stop_token_ids=[eos], ignore_eos=True),
    )[0].outputs[0]
    assert len(out.token_ids) <= 5
    params = SamplingParams(temperature=1.0, seed=0, min_tokens=10, max_tokens=10)
    out = llm.generate(PROMPT, params)[0].outputs[0]
    assert len(out.token_ids) == 10 and out.finish_reason == "length"


def test_stop_token_ids_and_stop_strings(llm: LLM) -> None:
    free = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))[
        0
    ].outputs[0]
    third = free.token_ids[2]
    out = llm.generate(
        PROMPT, SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=[third])
    )[0].outputs[0]
    assert out.token_ids == free.token_ids[:3]
    assert out.finish_reason == "stop" and out.stop_reason == third
    stop = free.text[3:6]
    assert stop.strip(), "pick a visible stop string"
    out = llm.generate(
        PROMPT, SamplingParams(temperature=0.0, max_tokens=12, stop=[stop], ignore_eos=True)
    )[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == free.text[: free.text.index(stop)]
    out = llm.generate(
        PROMPT,
        SamplingParams(
            temperature=0.0,
            max_tokens=12,
            stop=[stop],
            include_stop_str_in_output=True,
            ignore_eos=True,
        ),
    )[0].outputs[0]
    assert out.text.endswith(stop)


def test_logprobs_are_reported_per_token(llm: LLM) -> None:
    out = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=4, logprobs=3))[0]
    completion = out.outputs[0]
    assert completion.logprobs is not None and len(completion.logprobs) == len(completion.token_ids)
    for token, entry in zip(completion.token_ids, completion.logprobs):
        assert token in entry and entry[token].rank == 1  # greedy: the top token
        assert len(entry) == 3
    assert completion.cumulative_logprob == pytest.approx(
        sum(e[t].logprob for t, e in zip(completion.token_ids, completion.logprobs))
    )


def test_chat_keeps_text_and_image_order(llm: LLM) -> None:
    red, blue = Image.new("RGB", (56, 56), "red"), Image.new("RGB", (56, 56), "blue")
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "A"},
                {"type": "image_pil", "image_pil": red},
                {"type": "text", "text": "B"},
                {"type": "image_pil", "image_pil": blue},
            ],
        }
    ]
    out = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=2))[0]
    text = llm.engine.tokenizer.tokenizer.decode(out.prompt_token_ids, skip_special_tokens=False)
    assert text.index("A") < text.index("<|image_pad|>") < text.index("B")
    assert text.count("<|vision_start|>") == 2
    swapped = [dict(messages[0], content=[messages[0]["content"][i] for i in (0, 3, 2, 1)])]
    again = llm.chat(swapped, SamplingParams(temperature=0.0, max_tokens=2))[0]
    assert again.prompt_token_ids == out.prompt_token_ids  # same placeholders...
    assert llm.engine.mm_cache.hits >= 2  # ...and the two images served from the cache


def test_chat_rejects_reserved_tokens_in_user_text(llm: LLM) -> None:
    with pytest.raises(ValueError, match="reserved token"):
        llm.chat([{"role": "user", "content": "hi <|image_pad|>"}])


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (
            {"prompt": "no placeholder", "multi_modal_data": {"image": [Image.new("RGB", (8, 8))]}},
            "0 image placeholders but 1 images",
        ),
        (
            {
                "prompt": "<|image_pad|><|image_pad|>",
                "multi_modal_data": {"image": [Image.new("RGB", (8, 8))]},
            },
            "2 image placeholders but 1 images",
        ),
        ({"prompt": "x", "multi_modal_data": {"audio": [b""]}}, "modality 'audio'"),
        (
            {
                "prompt": "<|image_pad|>",
                "multi_modal_data": {"image": [None]},
                "multi_modal_uuids": {"image": ["never-seen"]},
            },
            "'never-seen' is not in the media cache",
        ),
        ({"prompt": "x", "bogus": 1}, "unknown prompt fields"),
        ({"prompt_token_ids": [10**9]}, "prompt_token_ids must be ints"),
        ({"prompt": "word " * 400}, "this model's context is 256 tokens"),
        ("", "the prompt is empty"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_engine_goes_on(
    llm: LLM, prompt: object, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        llm.generate(prompt, SamplingParams(max_tokens=2))  # type: ignore[arg-type]
    assert not llm.engine.has_unfinished()
    assert llm.generate("still fine", SamplingParams(max_tokens=2))[0].finished


def test_logit_bias_and_token_ids_outside_the_vocabulary(llm: LLM) -> None:
    greedy = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    free = llm.generate(PROMPT, greedy)[0].outputs[0].token_ids
    banned = SamplingParams(
        temperature=0.0, max_tokens=4, ignore_eos=True, logit_bias={free[0]: -100.0}
    )
    assert llm.generate(PROMPT, banned)[0].outputs[0].token_ids[0] != free[0]
    vocab = llm.engine.model_config.vocab_size
    with pytest.raises(InputError, match="not in this model's vocabulary") as info:
        llm.generate(PROMPT, SamplingParams(logit_bias={vocab: 1.0}))
    assert info.value.param == f'logit_bias["{vocab}"]'
    with pytest.raises(InputError) as info:
        llm.generate(PROMPT, SamplingParams(stop_token_ids=[1, vocab], min_tokens=1))
    assert info.value.param == "stop_token_ids[1]"
    assert not llm.engine.has_unfinished()


def test_max_tokens_beyond_the_context_is_rejected(llm: LLM) -> None:
    with pytest.raises(InputError, match="max_tokens=1000 does not fit"):
        llm.generate("hi", SamplingParams(max_tokens=1000))


def test_invalid_sampling_params_name_the_field() -> None:
    for kwargs, field in [
        ({"n": 0}, "n must"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"logprobs": 21}, "logprobs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
        ({"logit_bias": {5: 101.0}}, "logit_bias"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias keys"),
        ({"logit_bias": {5: float("nan")}}, "logit_bias"),
        (
            {"min_tokens": 2, "structured_outputs": StructuredOutputsParams(choice=["a"])},
            "min_tokens cannot be combined",
        ),
    ]:
        with pytest.raises(ValueError, match=field):
            SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_dummy_load_format_needs_no_weights(tiny_qwen2_vl: Path, tmp_path: Path) -> None:
    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    ):
        (tmp_path / name).write_bytes((tiny_qwen2_vl / name).read_bytes())
    llm = LLM(str(tmp_path), load_format="dummy")
    assert (
        len(
            llm.generate("hi", SamplingParams(max_tokens=3, ignore_eos=True))[0]
            .outputs[0]
            .token_ids
        )
        == 3
    )


def test_bfloat16_on_cpu_tracks_float32(tiny_qwen2_vl: Path, llm: LLM) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=5)
    expected = llm.generate(PROMPT, params)[0].outputs[0]
    bf16 = LLM(str(tiny_qwen2_vl), dtype="bfloat16").generate(PROMPT, params)[0].outputs[0]
    assert bf16.token_ids[0] in expected.logprobs[0]  # near-ties may flip in bf16
    token = expected.token_ids[0]
    if token in bf16.logprobs[0]:
        assert abs(bf16.logprobs[0][token].logprob - expected.logprobs[0][token].logprob) < 0.05
