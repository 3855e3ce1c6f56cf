"""Grammar work remembered across requests (structured/memo.py): a request that reaches a
state another one searched (or masked) gets the same close (or mask) without the work,
outputs do not change, and different grammars, outputs or vocabularies never share one."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import tokenizers
import torch

from tests.structured.schemas import SCHEMAS
from vlmserve.structured import StructuredBackend, allocate_bitmask, batch, closing, request
from vlmserve.structured.batch import GrammarMasks, fill_bitmasks
from vlmserve.structured.memo import MASKS, MAX_KEY_BYTES, SEARCHES, Memo, output_key
from vlmserve.structured.testing import adversarial_logits, decode
from vlmserve.types import StructuredOutputsParams


@pytest.fixture
def searches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the closer's real searches; the memo starts and ends empty."""
    SEARCHES.clear()
    counted: list[int] = []
    search = closing.shortest_completion

    def counting(*args: object, **kwargs: object) -> bytes | None:
        counted.append(1)
        return search(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(closing, "shortest_completion", counting)
    yield counted
    SEARCHES.clear()


@pytest.mark.parametrize("name", ["content_safety", "tool_call", "array_of_objects"])
def test_a_second_request_through_the_same_states_does_not_search(
    backend: StructuredBackend,
    tokenizer: tokenizers.Tokenizer,
    searches: list[int],
    name: str,
) -> None:
    compiled = backend.compile(StructuredOutputsParams(json=SCHEMAS[name]))
    budget = compiled.min_output_tokens + 12
    logits = adversarial_logits(tokenizer, backend.vocab_size, seed=3)
    first = decode(backend.new_request(compiled, budget), logits, backend.vocab_size, budget)
    searched = len(searches)
    assert searched > 0  # the adversarial logits leave the known closes
    SEARCHES.clear()
    again = decode(backend.new_request(compiled, budget), logits, backend.vocab_size, budget)
    assert again == first and len(searches) == 2 * searched  # memo emptied: all searched again
    remembered = decode(backend.new_request(compiled, budget), logits, backend.vocab_size, budget)
    assert remembered == first and len(searches) == 2 * searched  # none searched


def test_different_grammars_with_the_same_output_do_not_share(
    backend: StructuredBackend, searches: list[int]
) -> None:
    """Both requests search from an empty output; each gets its own grammar's close."""
    grammars = [
        backend.new_request(backend.compile(StructuredOutputsParams(regex=pattern)), 40)
        for pattern in (r"ab(c|de)f{3}", r"ab(c|dde)f{4}")
    ]
    found = [
        g._track._search(lambda g=g: g._track._bytes, [], g._track.nesting, closing.SEARCH_NODES)
        for g in grammars
    ]
    assert found == [b"abcfff", b"abcffff"] and len(searches) == 2
    again = [
        g._track._search(lambda g=g: g._track._bytes, [], g._track.nesting, closing.SEARCH_NODES)
        for g in grammars
    ]
    assert again == found and len(searches) == 2  # both remembered, each under its own key


def test_the_table_is_bounded_and_forgets_the_least_recent() -> None:
    memo: Memo[bytes] = Memo(capacity=2)
    memo.put("a", b"1")
    memo.put("b", b"2")
    assert memo.get("a") == b"1"  # "a" is now the most recent
    memo.put("c", b"3")
    assert memo.get("b") is None and memo.get("a") == b"1" and memo.get("c") == b"3"
    assert len(memo) == 2


def test_long_outputs_and_the_end_marker_are_not_keys() -> None:
    assert output_key(list(b"abc")) == b"abc"
    assert output_key([0x61] * (MAX_KEY_BYTES + 1)) is None
    assert output_key([0x61, 256]) is None


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, ...]]]:
    """The states (as accepted tokens) whose masks were computed, and kept, for the first
    time; the mask memo starts and ends empty."""
    MASKS.clear()
    states: list[tuple[int, ...]] = []
    remember = request.RequestGrammar.remember_mask

    def counting(self: request.RequestGrammar, words: np.ndarray) -> None:
        key = self.mask_key()
        if key is not None and MASKS.get(key) is None:  # else a copy of a kept mask
            states.append(tuple(self._token_log))
        remember(self, words)

    monkeypatch.setattr(request.RequestGrammar, "remember_mask", counting)
    yield states
    MASKS.clear()


def test_a_second_request_through_the_same_states_reuses_their_masks(
    backend: StructuredBackend, tokenizer: tokenizers.Tokenizer, computed: list[tuple[int, ...]]
) -> None:
    compiled = backend.compile(StructuredOutputsParams(json=SCHEMAS["content_safety"]))
    budget = compiled.min_output_tokens + 40
    logits = adversarial_logits(tokenizer, backend.vocab_size, seed=5)
    first = decode(backend.new_request(compiled, budget), logits, backend.vocab_size, budget)
    assert computed and len(MASKS) == len(set(computed))
    kept = len(computed)
    again = decode(backend.new_request(compiled, budget), logits, backend.vocab_size, budget)
    assert again == first and len(computed) == kept  # every mask it needed was known
    MASKS.clear()
    fresh = decode(backend.new_request(compiled, budget), logits, backend.vocab_size, budget)
    assert fresh == first and len(computed) == 2 * kept  # emptied: all computed again


def test_a_known_mask_is_the_mask_and_makes_the_probes_exact(
    backend: StructuredBackend, computed: list[tuple[int, ...]]
) -> None:
    """At `{"best_class` only `":"` may follow (forced bytes): without the mask the probes
    can vouch for no token; with a remembered one they answer exactly, and batches use it."""
    compiled = backend.compile(StructuredOutputsParams(json=SCHEMAS["content_safety"]))
    first, second = (backend.new_request(compiled, 80) for _ in range(2))
    for grammar in (first, second):
        for token in grammar.tokens_for(b'{"best_class'):
            assert grammar.accept_token(token)
    assert not first.can_vouch() and first.known_mask() is None
    bitmask = allocate_bitmask(2, backend.vocab_size)
    fill_bitmasks([first], bitmask[:1])  # computed, and remembered
    allowed = set(_allowed_ids(bitmask[0], backend.vocab_size))
    assert computed == [tuple(first._token_log)] and 0 < len(allowed) < 20
    assert second.can_vouch() and not GrammarMasks({0: second}, backend.vocab_size).worth_walking(0)
    fill_bitmasks([second], bitmask[1:])
    assert torch.equal(bitmask[0], bitmask[1]) and len(computed) == 1  # copied, not computed
    for token in range(backend.vocab_size):
        assert second.surely_allows(token) == (token in allowed)
        assert second.surely_forbids(token) == (token not in allowed) or (
            token in backend.tokens.eos_token_ids
        )
    # Another vocabulary, or the state before a rollback, never sees this mask.
    other = request.RequestGrammar(
        compiled.matcher.deep_copy(),
        compiled.byte_matcher.deep_copy(),
        compiled.grammar,
        dataclasses.replace(backend.tokens, fingerprint="another tokenizer"),
        80,
    )
    for token in first._token_log:
        assert other.accept_token(token)
    assert other.known_mask() is None
    second.rollback(1)
    assert second.known_mask() is None


def test_rows_in_lock_step_compute_their_shared_mask_once(
    backend: StructuredBackend,
    computed: list[tuple[int, ...]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    executor = batch._executor()
    jobs: list[int] = []

    class Counting:
        def unsafe_compute_mask_ptr(self, rows: list, *args: int) -> None:
            jobs.extend(i for _, i in rows)
            executor.unsafe_compute_mask_ptr(rows, *args)

    monkeypatch.setattr(batch, "_executor", Counting)
    compiled = backend.compile(StructuredOutputsParams(json=SCHEMAS["content_safety"]))
    grammars = [backend.new_request(compiled, 80) for _ in range(3)]
    for grammar in grammars:
        for token in grammar.tokens_for(b'{"best_class":"alcohol","explanation'):
            assert grammar.accept_token(token)
    grammars.insert(1, backend.new_request(compiled, 80))  # another state between them
    bitmask = allocate_bitmask(4, backend.vocab_size)
    fill_bitmasks(grammars, bitmask)
    assert jobs == [0, 1] and len(computed) == 2  # one per state
    assert torch.equal(bitmask[0], bitmask[2]) and torch.equal(bitmask[0], bitmask[3])
    assert not torch.equal(bitmask[0], bitmask[1])
    MASKS.clear()
    alone = allocate_bitmask(1, backend.vocab_size)
    fresh = backend.new_request(compiled, 80)
    for token in fresh.tokens_for(b'{"best_class":"alcohol","explanation'):
        assert fresh.accept_token(token)
    fresh.fill_bitmask(alone[0].numpy())
    assert torch.equal(alone[0], bitmask[3])


def _allowed_ids(row: torch.Tensor, vocab_size: int) -> list[int]:
    bits = np.unpackbits(row.numpy().view(np.uint8), bitorder="little")[:vocab_size]
    return np.flatnonzero(bits).tolist()
