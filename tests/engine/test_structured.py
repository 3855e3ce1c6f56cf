"""Structured outputs through the whole engine with the tiny random model: every output
conforms, even when max_tokens cuts it short; jump-ahead changes nothing but the step count."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from vlmserve.engine.inputs import InputError
from vlmserve.offline import LLM
from vlmserve.types import SamplingParams, StructuredOutputsParams

SAFETY = {
    "type": "object",
    "properties": {
        "categories": {
            "type": "array",
            "items": {
                "enum": ["alcohol", "tobacco", "guns_weapons", "profanity", "violence", "no_issues"]
            },
            "minItems": 1,
        },
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "rationale": {"type": "string"},  # unbounded: only budget-aware closing ends it
    },
    "required": ["categories", "confidence", "rationale"],
    "additionalProperties": False,
}
PROMPT = "<|im_start|>user\nClassify this.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def llm(tiny_qwen2_vl: Path) -> LLM:
    return LLM(str(tiny_qwen2_vl))


def params(max_tokens: int, seed: int, **kind: object) -> SamplingParams:
    return SamplingParams(
        temperature=1.0,
        seed=seed,
        max_tokens=max_tokens,
        structured_outputs=StructuredOutputsParams(**kind),  # type: ignore[arg-type]
    )


def test_json_schema_outputs_always_validate_even_when_cut(llm: LLM) -> None:
    batch = [params(budget, seed, json=SAFETY) for seed in range(6) for budget in (30, 45, 80)]
    outputs = llm.generate([PROMPT] * len(batch), batch)
    lengths = set()
    for out, p in zip(outputs, batch):
        completion = out.outputs[0]
        jsonschema.validate(json.loads(completion.text), SAFETY)
        assert len(completion.token_ids) <= (p.max_tokens or 0)
        lengths.add(completion.finish_reason)
    assert "length" in lengths  # the random model never closes its string by itself


def test_regex_choice_and_json_object(llm: LLM) -> None:
    cases = [
        ({"regex": r"[A-Z]{2}-\d{3}"}, lambda t: re.fullmatch(r"[A-Z]{2}-\d{3}", t)),
        ({"choice": ["safe", "unsafe", "unsure"]}, lambda t: t in ("safe", "unsafe", "unsure")),
        ({"json_object": True}, lambda t: isinstance(json.loads(t), dict)),
    ]
    for kind, check in cases:
        outs = llm.generate([PROMPT] * 4, [params(24, s, **kind) for s in range(4)])
        for out in outs:
            assert check(out.outputs[0].text), (kind, out.outputs[0].text)


def test_jump_ahead_equals_step_by_step(llm: LLM) -> None:
    # logprobs requests decode step by step (forced tokens have no distribution to report).
    fast = SamplingParams(
        temperature=0.0, max_tokens=40, structured_outputs=StructuredOutputsParams(json=SAFETY)
    )
    slow = SamplingParams(
        temperature=0.0,
        max_tokens=40,
        logprobs=0,
        structured_outputs=StructuredOutputsParams(json=SAFETY),
    )
    a, b = llm.generate([PROMPT, PROMPT], [fast, slow])
    assert a.outputs[0].token_ids == b.outputs[0].token_ids
    assert a.outputs[0].num_forced_tokens > 0 and b.outputs[0].num_forced_tokens == 0


def test_constraint_errors_are_input_errors(llm: LLM) -> None:
    with pytest.raises(InputError, match="max_tokens=2 cannot hold a valid output"):
        llm.generate(PROMPT, params(2, 0, json=SAFETY))
    with pytest.raises(InputError, match="choice"):
        llm.generate(PROMPT, params(5, 0, choice=[]))
    with pytest.raises(InputError):
        llm.generate(PROMPT, params(5, 0, regex="(unclosed"))
    assert not llm.engine.has_unfinished()
