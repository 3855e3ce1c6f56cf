"""Property: whatever the constraint, budget, `n` and aborts, every request ends, every
output that was not aborted is valid, and the engine holds nothing afterwards.

Constraints: a fixed sample of JSONSchemaBench (tests/engine/data, one schema llguidance
rejects), the structured tests' schemas, one-option choices and consts. Budgets run from the
shortest valid output to five tokens more (at the minimum the whole output is forced at
admission). Requests arrive while others run, some are aborted (before any step, or later),
and a small KV cache with chunked prefill makes preemption happen too.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.structured.schemas import SCHEMAS
from vlmserve.config import EngineConfig
from vlmserve.engine.engine import LLMEngine, build_engine
from vlmserve.engine.inputs import InputError
from vlmserve.engine.invariants import leaks
from vlmserve.structured.testing import validate
from vlmserve.types import RequestOutput, SamplingParams, StructuredOutputsParams

SAMPLE = Path(__file__).parent / "data" / "jsonschemabench_sample.json"
PROMPT = "<|im_start|>user\nFill in the form. {}<|im_end|>\n<|im_start|>assistant\n"
WORDS = ("name", "date", "value", "the", "report", "of", "item", "list")
MAX_STEPS = 5_000
ABORT_AT = (None, None, None, None, 0, 1, 3, 8)  # steps after arrival; None: never
SCHEMAS_PER_RUN = 20
REFUSED = "jsonschemabench/Github_easy/o58617"  # llguidance refuses it (a keyword)


@dataclass(frozen=True)
class Constraint:
    name: str
    params: StructuredOutputsParams
    valid: Callable[[str], object]  # raises or returns falsy on an invalid output


def _json(name: str, schema: dict[str, Any]) -> Constraint:
    return Constraint(
        name, StructuredOutputsParams(json=schema), lambda t: validate_json(t, schema)
    )


def validate_json(text: str, schema: dict[str, Any]) -> bool:
    validate(json.loads(text), schema)
    return True


def constraints(rng: random.Random) -> list[Constraint]:
    """Every one-option constraint and a random share of the schemas (the runtime bound)."""
    sample = json.loads(SAMPLE.read_text())
    schemas = [_json(f"jsonschemabench/{name}", schema) for name, schema in sample.items()]
    schemas += [_json(f"schemas/{name}", schema) for name, schema in SCHEMAS.items()]
    pool = rng.sample(schemas, SCHEMAS_PER_RUN)
    for option in ("yes", "a rather long only option", " "):
        pool.append(
            Constraint(
                f"choice/{option!r}",
                StructuredOutputsParams(choice=[option]),
                lambda t, option=option: t == option,
            )
        )
    for const in ("fixed", 42, {"a": [1, None]}):
        pool.append(_json(f"const/{const!r}", {"const": const}))
    pool.append(_json("enum/one", {"enum": ["only"]}))
    pool.append(
        Constraint(
            "regex/constant",
            StructuredOutputsParams(regex="id-7"),
            lambda t: re.fullmatch("id-7", t),
        )
    )
    return pool


@pytest.fixture(scope="module")
def engine(tiny_qwen2_vl: Path) -> Iterator[LLMEngine]:
    yield build_engine(
        EngineConfig(
            str(tiny_qwen2_vl),
            max_model_len=240,
            max_num_seqs=12,
            max_num_batched_tokens=64,
            num_kv_blocks=16,  # too few for 12 sequences: preemption happens
        )
    )


@dataclass
class Case:
    request_id: str
    constraint: Constraint
    params: SamplingParams
    abort_after: int | None


def plan(engine: LLMEngine, rng: random.Random) -> tuple[list[Case], list[str]]:
    """Requests to send (shuffled) and the constraints the compiler refused."""
    cases, refused = [], []
    for constraint in constraints(rng):
        try:
            compiled = engine.guided.compile(SamplingParams(structured_outputs=constraint.params))
        except InputError:
            refused.append(constraint.name)
            continue
        assert compiled is not None
        for extra in sorted({0, rng.randint(1, 5)}):
            params = SamplingParams(
                n=rng.randint(1, 4),
                temperature=1.0,
                seed=rng.randrange(2**31),
                max_tokens=compiled.min_output_tokens + extra,
                structured_outputs=constraint.params,
            )
            rid = f"{constraint.name}+{extra}"
            cases.append(Case(rid, constraint, params, rng.choice(ABORT_AT)))
    rng.shuffle(cases)
    return cases, refused


def drive(
    engine: LLMEngine, cases: list[Case], rng: random.Random
) -> tuple[dict[str, RequestOutput], set[str]]:
    """Requests arrive a few per step while others run; returns finals and aborted ids."""
    queue = list(cases)
    finals: dict[str, RequestOutput] = {}
    aborted: set[str] = set()
    abort_due: dict[str, int] = {}
    for step in range(MAX_STEPS):
        for _ in range(rng.randint(0, 3)):
            if queue:
                case = queue.pop()
                # Prompts of their own lengths: few shared prefix blocks, so the cache fills.
                filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 40)))
                engine.add_request(case.request_id, PROMPT.format(filler), case.params)
                if case.abort_after is not None:
                    abort_due[case.request_id] = step + case.abort_after
        for rid, due in list(abort_due.items()):
            if due <= step:
                del abort_due[rid]
                if engine.abort(rid) is not None:
                    aborted.add(rid)
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
        if not queue and not engine.has_unfinished():
            break
    return finals, aborted


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_every_request_ends_valid_and_the_engine_is_left_empty(
    engine: LLMEngine, seed: int
) -> None:
    rng = random.Random(seed)
    cases, refused = plan(engine, rng)
    assert set(refused) <= {REFUSED}
    with pytest.raises(InputError):  # refusing a schema leaves nothing behind either
        engine.add_request(
            "refused", PROMPT.format(""), SamplingParams(structured_outputs=refused_params())
        )
    finals, aborted = drive(engine, cases, rng)
    assert {c.request_id for c in cases} == set(finals) | aborted, "some requests never ended"
    assert not set(finals) & aborted
    forced_at_admission = 0
    for case in cases:
        out = finals.get(case.request_id)
        if out is None:
            continue
        assert len(out.outputs) == case.params.n
        for completion in out.outputs:
            where = f"{case.request_id} (seed {seed}): {completion.text!r}"
            assert completion.finish_reason in ("stop", "length"), where
            assert len(completion.token_ids) <= (case.params.max_tokens or 0), where
            assert case.constraint.valid(completion.text), where
            forced_at_admission += completion.num_forced_tokens == len(completion.token_ids)
    assert forced_at_admission > 0  # the admission path was exercised
    assert aborted  # and so were aborts
    assert engine.scheduler.num_preemptions > 0  # and preemption
    assert leaks(engine) == []


def refused_params() -> StructuredOutputsParams:
    schema = json.loads(SAMPLE.read_text())[REFUSED.removeprefix("jsonschemabench/")]
    return StructuredOutputsParams(json=schema)
