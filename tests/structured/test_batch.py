"""Masks filled for many rows at once (llguidance's executor) equal masks filled row by row,
tight rows (the close's next token) included."""

from __future__ import annotations

import tokenizers
import torch

from tests.structured.schemas import SCHEMAS
from vlmserve.structured import StructuredBackend, allocate_bitmask
from vlmserve.structured.batch import GrammarMasks, fill_bitmasks
from vlmserve.structured.testing import adversarial_logits, decode
from vlmserve.types import StructuredOutputsParams


def test_parallel_fill_equals_row_by_row(
    backend: StructuredBackend, tokenizer: tokenizers.Tokenizer
) -> None:
    grammars = []
    for name in ("content_safety", "formats", "tool_call", "array_of_objects"):
        compiled = backend.compile(StructuredOutputsParams(json=SCHEMAS[name]))
        for slack in (None, 0, 6):
            budget = None if slack is None else compiled.min_output_tokens + slack
            logits = adversarial_logits(tokenizer, backend.vocab_size, seed=len(grammars))
            output, _ = decode(backend.new_request(compiled, budget), logits, backend.vocab_size, 9)
            grammar = backend.new_request(compiled, budget)
            for token in output[: len(output) // 2]:
                assert grammar.accept_token(token)
            grammars.append(grammar)
    assert any(g.mask_matcher() is None for g in grammars)  # some rows are tight
    expected = allocate_bitmask(len(grammars), backend.vocab_size)
    for i, grammar in enumerate(grammars):
        grammar.fill_bitmask(expected[i])
    together = allocate_bitmask(len(grammars), backend.vocab_size)
    fill_bitmasks(grammars, together)
    assert torch.equal(together, expected)
    masks = GrammarMasks({3: grammars[0], 5: grammars[7]}, backend.vocab_size)
    assert masks.rows == [3, 5]
    assert torch.equal(masks.fill([5, 3]), expected[[7, 0]])
