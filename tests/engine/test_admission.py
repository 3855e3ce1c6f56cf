"""Requests whose whole output a grammar forces at admission (a one-option choice, a const,
a one-item enum, or `max_tokens` equal to the shortest valid output): they finish, report
their output through `step()` like any other, and hold nothing afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from vlmserve.engine.engine import LLMEngine
from vlmserve.engine.guided import GuidedDecoding
from vlmserve.engine.invariants import leaks
from vlmserve.offline import LLM
from vlmserve.types import RequestOutput, SamplingParams, StructuredOutputsParams

PROMPT = "<|im_start|>user\nAnswer.<|im_end|>\n<|im_start|>assistant\n"
OBJECT = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "note": {"type": "string"}},
    "required": ["ok", "note"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def llm(tiny_qwen2_vl: Path) -> LLM:
    return LLM(str(tiny_qwen2_vl), max_num_seqs=32)


def constrained(max_tokens: int = 16, n: int = 1, **kind: object) -> SamplingParams:
    return SamplingParams(
        n=n,
        temperature=1.0,
        seed=0,
        max_tokens=max_tokens,
        structured_outputs=StructuredOutputsParams(**kind),  # type: ignore[arg-type]
    )


def run_bounded(engine: LLMEngine, request_ids: list[str], max_steps: int = 200) -> list[str]:
    """Step until every request reported its final output; never loops forever."""
    done: set[str] = set()
    for _ in range(max_steps):
        done |= {out.request_id for out in engine.step() if out.finished}
        if done >= set(request_ids):
            break
    return sorted(set(request_ids) - done)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ({"choice": ["yes"]}, "yes"),
        ({"json": {"const": "fixed"}}, '"fixed"'),
        ({"json": {"enum": [42]}}, "42"),
        ({"regex": "constant"}, "constant"),
    ],
)
def test_forced_whole_output_finishes_and_frees_everything(
    llm: LLM, kind: dict[str, object], expected: str
) -> None:
    outs = llm.generate([PROMPT, PROMPT + "again"], constrained(n=3, **kind))
    for out in outs:
        assert out.finished and [c.text for c in out.outputs] == [expected] * 3
        assert {c.finish_reason for c in out.outputs} == {"stop"}
    assert leaks(llm.engine) == []


def test_max_tokens_equal_to_the_shortest_output(llm: LLM) -> None:
    compiled = llm.engine.guided.compile(constrained(json=OBJECT))
    assert compiled is not None
    shortest = compiled.min_output_tokens
    out = llm.generate(PROMPT, constrained(max_tokens=shortest, n=4, json=OBJECT))[0]
    for completion in out.outputs:
        jsonschema.validate(json.loads(completion.text), OBJECT)
        assert len(completion.token_ids) == shortest and completion.finish_reason == "length"
    assert leaks(llm.engine) == []


def test_forced_requests_cannot_fill_the_engine(llm: LLM) -> None:
    """Two n=16 one-option requests took all 32 sequence slots for good; the request after
    them then never ran (the server wedged)."""
    engine = llm.engine
    for rid in ("forced-a", "forced-b"):
        engine.add_request(rid, PROMPT, constrained(n=16, choice=["yes"]))
    engine.add_request("plain", PROMPT, SamplingParams(max_tokens=4, ignore_eos=True))
    assert run_bounded(engine, ["forced-a", "forced-b", "plain"]) == []
    assert leaks(engine) == []


def test_outputs_come_through_step_like_any_other(llm: LLM) -> None:
    engine = llm.engine
    engine.add_request("solo", PROMPT, constrained(choice=["yes"]))
    assert engine.has_unfinished()  # until step() has reported it
    outputs: list[RequestOutput] = engine.step()
    assert [(o.request_id, o.finished, o.outputs[0].text) for o in outputs] == [
        ("solo", True, "yes")
    ]
    assert not engine.has_unfinished() and engine.step() == []


def test_abort_before_the_report(llm: LLM) -> None:
    engine = llm.engine
    engine.add_request("gone", PROMPT, constrained(choice=["yes"]))
    aborted = engine.abort("gone")
    assert aborted is not None and aborted.finished
    assert engine.step() == [] and leaks(engine) == []


def test_a_grammar_failure_at_admission_fails_that_request_alone(
    llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: GuidedDecoding, seq: object) -> list[int]:
        raise RuntimeError("llguidance limit")

    monkeypatch.setattr(GuidedDecoding, "forced", broken)
    out = llm.generate(PROMPT, constrained(n=2, choice=["yes", "no"]))[0]
    assert out.error == "llguidance limit"
    assert {c.finish_reason for c in out.outputs} == {"error"}
    assert leaks(llm.engine) == []
    monkeypatch.undo()
    assert llm.generate(PROMPT, constrained(choice=["yes", "no"]))[0].outputs[0].text in (
        "yes",
        "no",
    )
