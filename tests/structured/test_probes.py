"""The grammar's probes: `surely_allows` never allows a token the mask forbids (nor
`surely_forbids` forbids one it allows), and `surely_allows` answers exactly (for every token but EOS) wherever the next bytes are not forced."""

from __future__ import annotations

import pytest
import tokenizers
import torch

from tests.structured.schemas import SCHEMAS
from vlmserve.structured import StructuredBackend, allocate_bitmask
from vlmserve.structured.testing import adversarial_logits, decode
from vlmserve.types import StructuredOutputsParams

CASES = {
    "content_safety": StructuredOutputsParams(json=SCHEMAS["content_safety"]),
    "formats": StructuredOutputsParams(json=SCHEMAS["formats"]),
    "enum_escapes": StructuredOutputsParams(json=SCHEMAS["enum_escapes"]),
    "number_free": StructuredOutputsParams(json=SCHEMAS["number_free"]),
    "regex": StructuredOutputsParams(regex=r"[a-z]{3,12}@[a-z]{2,8}\.(com|org)"),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("slack", [None, 3])
def test_surely_allows_agrees_with_the_mask(
    backend: StructuredBackend, tokenizer: tokenizers.Tokenizer, name: str, slack: int | None
) -> None:
    compiled = backend.compile(CASES[name])
    budget = None if slack is None else compiled.min_output_tokens + slack
    logits = adversarial_logits(tokenizer, backend.vocab_size, seed=3)
    output, _ = decode(backend.new_request(compiled, budget), logits, backend.vocab_size, 60)
    bitmask = allocate_bitmask(1, backend.vocab_size)
    token_ids = torch.arange(backend.vocab_size + 40)  # ids past the logits too
    checked = exact = 0
    for cut in range(0, len(output) + 1, 4):
        grammar = backend.new_request(compiled, budget)
        for token in output[:cut]:
            assert grammar.accept_token(token)
        grammar.fill_bitmask(bitmask[0])
        words = torch.cat([bitmask[0], torch.zeros(2, dtype=torch.int32)])
        bits = ((words[token_ids // 32] >> (token_ids % 32)) & 1).bool().tolist()
        surely = [grammar.surely_allows(t) for t in token_ids.tolist()]
        assert not any(s and not bit for s, bit in zip(surely, bits, strict=True)), cut
        forbids = [grammar.surely_forbids(t) for t in token_ids.tolist()]
        assert not any(f and bit for f, bit in zip(forbids, bits, strict=True)), cut
        if not grammar.is_terminated() and not grammar._matcher.compute_ff_bytes():
            eos = backend.eos_token_ids
            assert [s for t, s in enumerate(surely) if t not in eos] == [
                b for t, b in enumerate(bits) if t not in eos
            ], f"after {cut} tokens"
            exact += 1
        checked += 1
    assert checked >= 2 and (exact > 0 or name == "enum_escapes")  # enums: all bytes forced
