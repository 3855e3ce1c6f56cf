"""Jump-ahead (forced tokens) gives exactly the tokens step-by-step constrained greedy picks."""

from __future__ import annotations

import pytest
import tokenizers

from tests.structured.schemas import SCHEMAS
from vlmserve.structured import StructuredBackend
from vlmserve.structured.testing import adversarial_logits, decode
from vlmserve.types import StructuredOutputsParams

CASES = [
    StructuredOutputsParams(json=SCHEMAS[name])
    for name in ("content_safety", "tool_call", "nested_objects", "formats", "const", "ref_defs")
] + [
    StructuredOutputsParams(choice=["application/json", "application/xml", "text/plain"]),
    StructuredOutputsParams(regex=r"ID-[0-9]{4}-(alpha|beta)"),
]


@pytest.mark.parametrize("params", CASES, ids=lambda p: p.kind())
@pytest.mark.parametrize("slack", [None, 15])
def test_forced_tokens_equal_step_by_step_greedy(
    backend: StructuredBackend,
    tokenizer: tokenizers.Tokenizer,
    params: StructuredOutputsParams,
    slack: int | None,
) -> None:
    compiled = backend.compile(params)
    # None: no budget; else a budget tight enough that closing takes over mid-output.
    budget = None if slack is None else backend.min_output_tokens(compiled) + slack
    total_forced = 0
    for seed in range(4):
        logits = adversarial_logits(tokenizer, backend.vocab_size, seed)
        limit = budget or 200
        jumped, forced = decode(
            backend.new_request(compiled, budget), logits, backend.vocab_size, limit
        )
        stepped, none = decode(
            backend.new_request(compiled, budget),
            logits,
            backend.vocab_size,
            limit,
            jump_ahead=False,
        )
        assert jumped == stepped
        assert none == 0
        total_forced += forced
    assert total_forced > 0


def test_forced_tokens_are_the_only_allowed_tokens(backend: StructuredBackend) -> None:
    """Why the identity holds: at a forced position the mask allows exactly the ff token."""
    import torch

    from vlmserve.structured import allocate_bitmask

    grammar = backend.new_request(
        backend.compile(StructuredOutputsParams(json=SCHEMAS["tool_call"]))
    )
    mask = allocate_bitmask(1, backend.vocab_size)
    forced = grammar.forced_tokens()
    assert forced
    for token in forced:
        grammar.fill_bitmask(mask[0])
        bits = ((mask[0].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten()
        assert torch.nonzero(bits).flatten().tolist() == [token]
        assert grammar.accept_token(token)
