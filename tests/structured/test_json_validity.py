"""Every output under a JSON schema parses and validates: adversarial random logits, forced
tokens and budget-aware closing, budgets from the shortest valid output upwards."""

from __future__ import annotations

import json

import pytest
import tokenizers

from tests.structured.schemas import SCHEMAS
from vlmserve.structured import StructuredBackend
from vlmserve.structured.testing import QWEN_SPECIAL_TOKENS, adversarial_logits, decode, validate
from vlmserve.types import StructuredOutputsParams

SEEDS = (0, 1, 2)


def _decode_text(
    backend: StructuredBackend,
    tokenizer: tokenizers.Tokenizer,
    schema: dict,
    seed: int,
    budget: int,
) -> tuple[str, list[int]]:
    compiled = backend.compile(StructuredOutputsParams(json=schema))
    grammar = backend.new_request(compiled, budget)
    logits = adversarial_logits(tokenizer, backend.vocab_size, seed)
    tokens, _ = decode(grammar, logits, backend.vocab_size, budget)
    assert len(tokens) <= budget
    if tokens and tokens[-1] in backend.eos_token_ids:
        tokens = tokens[:-1]
    return tokenizer.decode(tokens, skip_special_tokens=False), tokens


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_outputs_parse_and_validate(
    backend: StructuredBackend, tokenizer: tokenizers.Tokenizer, name: str
) -> None:
    schema = SCHEMAS[name]
    shortest = backend.min_output_tokens(backend.compile(StructuredOutputsParams(json=schema)))
    for seed in SEEDS:
        for budget in (shortest, shortest + 3, shortest + 12, 96):
            text, tokens = _decode_text(backend, tokenizer, schema, seed, max(budget, shortest))
            assert all(t < tokenizer.get_vocab_size() for t in tokens)
            assert not any(special in text for special in QWEN_SPECIAL_TOKENS), text
            # json.loads rejects raw control characters inside strings (strict mode).
            value = json.loads(text)
            validate(value, schema)


def test_unbounded_string_is_closed_by_the_budget(
    backend: StructuredBackend, tokenizer: tokenizers.Tokenizer
) -> None:
    schema = SCHEMAS["unbounded_string_small_budget"]
    for budget in (12, 16, 24, 40):
        text, tokens = _decode_text(backend, tokenizer, schema, seed=5, budget=budget)
        assert len(tokens) <= budget
        validate(json.loads(text), schema)


def test_strict_mode_forbids_extra_keys_non_strict_allows_them(backend: StructuredBackend) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    strict = backend.new_request(backend.compile(StructuredOutputsParams(json=schema)))
    loose = backend.new_request(backend.compile(StructuredOutputsParams(json=schema, strict=False)))
    comma = backend.tokens.vocab[b","]
    for grammar, allowed in ((strict, False), (loose, True)):
        assert all(grammar.accept_token(backend.tokens.vocab[bytes([b])]) for b in b'{"a":1')
        assert grammar.accept_token(comma) is allowed
