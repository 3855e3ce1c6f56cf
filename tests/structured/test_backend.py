"""Backend and request mechanics: cache, vocabulary safety, rollback, bitmask application."""

from __future__ import annotations

import json

import torch

from tests.structured.schemas import CONTENT_SAFETY
from vlmserve.structured import StructuredBackend, allocate_bitmask, apply_token_bitmask
from vlmserve.types import StructuredOutputsParams


def _allowed(backend: StructuredBackend, mask_row: torch.Tensor) -> set[int]:
    bits = ((mask_row.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten()
    return set(torch.nonzero(bits[: backend.vocab_size]).flatten().tolist())


def _feed(backend: StructuredBackend, grammar, text: bytes, check=None) -> list[int]:
    """Accept `text`: the forced tokens where the grammar forces them (only the canonical
    tokens are allowed there), single-byte tokens elsewhere."""
    fed: list[int] = []
    pos = 0
    while pos < len(text):
        if check is not None:
            check()
        forced = grammar.forced_tokens()
        data = b"".join(backend.tokens.token_bytes[t] for t in forced)
        if forced and text.startswith(data, pos):
            step = forced
        else:
            step = [backend.tokens.vocab[text[pos : pos + 1]]]
            data = text[pos : pos + 1]
        assert all(grammar.accept_token(t) for t in step), text[: pos + 1]
        fed += step
        pos += len(data)
    return fed


def test_compile_cache_counts_hits_and_misses(backend: StructuredBackend) -> None:
    params = StructuredOutputsParams(
        json={"type": "object", "properties": {"cache_probe": {"type": "integer"}}}
    )
    before = (backend.stats.hits, backend.stats.misses)
    first = backend.compile(params)
    again = backend.compile(StructuredOutputsParams(json=json.dumps(params.json)))
    assert again is first
    assert (backend.stats.hits, backend.stats.misses) == (before[0] + 1, before[1] + 1)
    assert backend.stats.compile_seconds > 0
    loose = backend.compile(StructuredOutputsParams(json=params.json, strict=False))
    assert loose is not first  # strictness is part of the key


def test_special_and_padding_ids_never_allowed(backend: StructuredBackend, tokenizer) -> None:
    size = tokenizer.get_vocab_size()
    specials = set(range(size - 7, size))
    grammar = backend.new_request(backend.compile(StructuredOutputsParams(json=CONTENT_SAFETY)))
    mask = allocate_bitmask(1, backend.vocab_size)

    def check() -> None:
        grammar.fill_bitmask(mask[0])
        allowed = _allowed(backend, mask[0])
        assert allowed and not allowed & specials and max(allowed) < size

    _feed(backend, grammar, b'{"best_class":"tobacco","explanation":"","extracted_text":"ab', check)
    # Inside a string: nearly everything is allowed, still no special token nor EOS.
    grammar.fill_bitmask(mask[0])
    allowed = _allowed(backend, mask[0])
    assert len(allowed) > size // 2 and not allowed & specials
    for bad in (size - 1, size + 3, backend.vocab_size + 5, -1):
        assert not grammar.accept_token(bad)
    # EOS only once the grammar is complete.
    _feed(backend, grammar, b'","language":""}')
    grammar.fill_bitmask(mask[0])
    assert _allowed(backend, mask[0]) == set(backend.eos_token_ids)
    assert grammar.is_terminated()


def test_rejected_token_leaves_state_unchanged_and_rollback(backend: StructuredBackend) -> None:
    grammar = backend.new_request(backend.compile(StructuredOutputsParams(json=CONTENT_SAFETY)), 60)
    tokens = [backend.tokens.vocab[bytes([b])] for b in b'{"best_class":"alcohol"']
    assert all(grammar.accept_token(t) for t in tokens)
    closing = grammar.closing_tokens()
    assert not grammar.accept_token(backend.tokens.vocab[b"x"])
    assert grammar.closing_tokens() == closing and grammar.remaining == 60 - len(tokens)
    grammar.rollback(3)
    assert grammar.remaining == 60 - len(tokens) + 3
    assert all(grammar.accept_token(t) for t in tokens[-3:])
    assert grammar.closing_tokens() == closing
    assert grammar.remaining == 60 - len(tokens)


def test_steer_swaps_a_token_that_leaves_no_room(backend: StructuredBackend) -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"long_required_key_name": {"type": "string", "minLength": 5}},
                    "required": ["long_required_key_name"],
                },
            }
        },
        "required": ["a"],
    }
    compiled = backend.compile(StructuredOutputsParams(json=schema))
    grammar = backend.new_request(compiled, backend.min_output_tokens(compiled) + 2)
    for token in grammar.forced_tokens():
        grammar.accept_token(token)
    brace = backend.tokens.vocab[b"{"]
    # Opening an item needs far more than the two spare tokens: steer closes instead.
    assert grammar.steer(brace) == grammar.closing_tokens()[0] != brace


def test_a_close_is_spelled_only_when_the_budget_needs_its_tokens(
    backend: StructuredBackend,
) -> None:
    """Spelling a close in model tokens costs a matcher check per token: while the close's
    byte count fits the budget (n bytes are at most n tokens), it is not spelled."""
    compiled = backend.compile(StructuredOutputsParams(json=CONTENT_SAFETY))
    letter = backend.tokens.vocab[b"a"]
    for budget, spells in ((200, False), (backend.min_output_tokens(compiled) + 12, True)):
        grammar = backend.new_request(compiled, budget)
        spelled: list[bytes] = []
        spell = grammar.tokens_for

        def counted(data: bytes, after: list[int] | None = None, spell=spell, spelled=spelled):
            spelled.append(data)
            return spell(data, after)

        grammar.tokens_for = counted  # type: ignore[method-assign]
        _feed(backend, grammar, b'{"best_class":"alcohol","explanation":"')
        for _ in range(10):
            token = grammar.steer(letter)
            assert grammar.accept_token(token)
        assert bool(spelled) == spells
        # Spelled or not, the close's tokens are the same, and they fit what is left.
        assert 0 < grammar.min_tokens_to_finish() <= grammar.remaining
        closing = grammar.closing_tokens()
        assert b"".join(backend.tokens.token_bytes[t] for t in closing).endswith(b'""}')


def test_the_sampler_probe_and_steer_check_a_token_once(backend: StructuredBackend) -> None:
    """`surely_allows` (the sampler) and `steer` ask about the same token in the same state:
    the matcher is asked once; a new state asks again."""
    grammar = backend.new_request(
        backend.compile(StructuredOutputsParams(json=CONTENT_SAFETY)), 200
    )
    _feed(backend, grammar, b'{"best_class":"alcohol","explanation":"')
    asked: list[list[int]] = []
    matcher = grammar._matcher

    class Counting:
        def __getattr__(self, name: str):
            return getattr(matcher, name)

        def validate_tokens(self, tokens: list[int]) -> int:
            asked.append(list(tokens))
            return matcher.validate_tokens(tokens)

    grammar._matcher = Counting()
    letter = backend.tokens.vocab[b"a"]
    for _ in range(3):
        assert grammar.surely_allows(letter)
        assert grammar.steer(letter) == letter
        assert grammar.accept_token(letter)
    assert asked.count([letter]) == 3


def test_apply_token_bitmask_matches_a_reference_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    vocab = 1000
    logits = torch.randn(4, vocab, generator=generator)
    bitmask = torch.randint(
        -(2**31), 2**31 - 1, (4, (vocab + 31) // 32), dtype=torch.int32, generator=generator
    )
    expected = logits.clone()
    for row in (0, 2):
        for token in range(vocab):
            if not (int(bitmask[row, token // 32]) >> (token % 32)) & 1:
                expected[row, token] = float("-inf")
    apply_token_bitmask(logits, bitmask, rows=[0, 2])
    assert torch.equal(logits, expected)
    full = torch.randn(4, vocab, generator=generator)
    reference = full.clone()
    apply_token_bitmask(full, bitmask)
    for row in range(4):
        for token in (0, 31, 32, 999):
            keep = (int(bitmask[row, token // 32]) >> (token % 32)) & 1
            assert full[row, token] == (reference[row, token] if keep else float("-inf"))
