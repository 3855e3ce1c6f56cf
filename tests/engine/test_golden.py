"""Constrained outputs through the whole engine equal a recording made before the grammar and
sampler fast paths: both architectures (fp32), several constraints, budgets tight and loose,
greedy, seeded temperature sampling, top-k/top-p, penalties and step-by-step logprobs, all
in one continuously batched run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.engine.test_parity import engine_prompt
from tests.golden import check_golden, fingerprint
from tests.structured.schemas import SCHEMAS
from vlmserve.offline import LLM
from vlmserve.types import SamplingParams, StructuredOutputsParams

GOLDEN = Path(__file__).parent / "golden_outputs.json"
CONTENT_SAFETY = {  # the benchmarks' schema (benchmarks/serve_vs_vllm.py)
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
        "rationale": {"type": "string", "maxLength": 200},
    },
    "required": ["categories", "confidence", "rationale"],
    "additionalProperties": False,
}
CONSTRAINTS = {
    "content_safety": StructuredOutputsParams(json=CONTENT_SAFETY),
    "tool_call": StructuredOutputsParams(json=SCHEMAS["tool_call"]),
    "formats": StructuredOutputsParams(json=SCHEMAS["formats"]),
    "array_of_objects": StructuredOutputsParams(json=SCHEMAS["array_of_objects"]),
    "regex": StructuredOutputsParams(regex=r"[A-Z]{2}-\d{3,5}"),
}
MODES: dict[str, dict[str, Any]] = {
    "greedy": dict(temperature=0.0),
    "temperature": dict(temperature=0.8, seed=11),
    "hot": dict(temperature=1.5, seed=12),
    "top_k_top_p": dict(temperature=1.0, top_k=40, top_p=0.9, seed=13),
    "penalties": dict(temperature=0.0, repetition_penalty=1.3, frequency_penalty=0.2),
    "logprobs": dict(temperature=0.7, seed=14, logprobs=1),
}
LOOSE_BUDGET = 80


def test_engine_constrained_outputs_equal_the_recording(folder: Path, arch: str) -> None:
    llm = LLM(str(folder), dtype="float32")
    backend = llm.engine.guided.backend
    prompts, params, names = [], [], []
    for name, constraint in CONSTRAINTS.items():
        # Tight: one token above the shortest output (at exactly the shortest the whole
        # output is forced at admission, a path the engine handles separately).
        shortest = backend.compile(constraint).min_output_tokens
        for budget in (shortest + 1, max(LOOSE_BUDGET, shortest + 40)):
            for index, (mode, options) in enumerate(MODES.items()):
                prompt_index = index % 2  # text only, and one image
                prompts.append(engine_prompt(prompt_index))
                params.append(
                    SamplingParams(max_tokens=budget, structured_outputs=constraint, **options)
                )
                names.append(f"{name}/budget{budget}/{mode}/prompt{prompt_index}")
    outputs = {
        name: [
            out.outputs[0].token_ids,
            out.outputs[0].finish_reason,
            out.outputs[0].num_forced_tokens,
        ]
        for name, out in zip(names, llm.generate(prompts, params), strict=True)
    }
    assert not llm.engine.has_unfinished()
    tokenizer_json = llm.engine.tokenizer.tokenizer.to_str()
    check_golden(GOLDEN, arch, fingerprint(tokenizer_json), outputs)


def test_engine_constrained_siblings_equal_the_recording(folder: Path, arch: str) -> None:
    """n > 1 under constraints, seeded and greedy requests batched together: every sibling's
    tokens equal the recording (siblings share a prompt, draw from generators of their own,
    and are masked, walked and steered row by row)."""
    llm = LLM(str(folder), dtype="float32")
    backend = llm.engine.guided.backend
    prompts, params, names = [], [], []
    for name in ("content_safety", "tool_call", "regex"):
        constraint = CONSTRAINTS[name]
        shortest = backend.compile(constraint).min_output_tokens
        for budget in (shortest + 2, shortest + 12, LOOSE_BUDGET):
            for mode, options in (
                ("greedy", dict(temperature=0.0)),
                ("temperature", dict(temperature=0.9, seed=21)),
                ("top_p", dict(temperature=1.2, top_p=0.8, seed=22)),
            ):
                prompts.append(engine_prompt(len(prompts) % 2))
                params.append(
                    SamplingParams(n=3, max_tokens=budget, structured_outputs=constraint, **options)
                )
                names.append(f"{name}/budget{budget}/{mode}")
    outputs = {
        name: [[c.token_ids, c.finish_reason] for c in out.outputs]
        for name, out in zip(names, llm.generate(prompts, params), strict=True)
    }
    assert not llm.engine.has_unfinished()
    tokenizer_json = llm.engine.tokenizer.tokenizer.to_str()
    check_golden(GOLDEN, f"{arch}/n3", fingerprint(tokenizer_json), outputs)
