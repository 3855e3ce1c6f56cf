"""Constrained outputs equal a recording made before the grammar's fast paths (the probes of
`steer`, `forced_tokens` and the closer): adversarial random logits, every test schema and a
few other kinds, budgets tight (the shortest output), close to it, loose, and none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tokenizers

from tests.golden import check_golden, fingerprint
from tests.structured.schemas import SCHEMAS
from tests.structured.test_kinds import ARITHMETIC
from vlmserve.structured import StructuredBackend
from vlmserve.structured.testing import adversarial_logits, decode
from vlmserve.types import StructuredOutputsParams

GOLDEN = Path(__file__).parent / "golden_outputs.json"
SEEDS = (0, 1)
UNBOUNDED_LIMIT = 96


def _constraints() -> dict[str, StructuredOutputsParams]:
    constraints = {f"json:{name}": StructuredOutputsParams(json=s) for name, s in SCHEMAS.items()}
    constraints["regex"] = StructuredOutputsParams(regex=r"[A-Z]{2}-\d{3,5}")
    constraints["choice"] = StructuredOutputsParams(choice=["positive", "negative", "a", "ab"])
    constraints["lark"] = StructuredOutputsParams(grammar=ARITHMETIC)
    return constraints


def test_constrained_outputs_equal_the_recording(
    backend: StructuredBackend, tokenizer: tokenizers.Tokenizer
) -> None:
    outputs: dict[str, Any] = {}
    for name, params in sorted(_constraints().items()):
        compiled = backend.compile(params)
        shortest = compiled.min_output_tokens
        for seed in SEEDS:
            logits = adversarial_logits(tokenizer, backend.vocab_size, seed)
            for budget in (shortest, shortest + 4, max(48, shortest + 24), None):
                grammar = backend.new_request(compiled, budget)
                tokens, forced = decode(
                    grammar, logits, backend.vocab_size, budget or UNBOUNDED_LIMIT
                )
                outputs[f"{name}/seed{seed}/budget{budget}"] = [tokens, forced]
    check_golden(GOLDEN, "adversarial", fingerprint(tokenizer.to_str()), outputs)
