"""The closer's searches remembered across requests (structured/memo.py): a request that
reaches a state another one searched gets the same close without searching, outputs do not
change, and different grammars or outputs never share an answer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import tokenizers

from tests.structured.schemas import SCHEMAS
from vlmserve.structured import StructuredBackend, request
from vlmserve.structured.memo import MAX_KEY_BYTES, SEARCHES, SearchMemo, output_key
from vlmserve.structured.testing import adversarial_logits, decode
from vlmserve.types import StructuredOutputsParams


@pytest.fixture
def searches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the closer's real searches; the memo starts and ends empty."""
    SEARCHES.clear()
    counted: list[int] = []
    search = request.shortest_completion

    def counting(*args: object, **kwargs: object) -> bytes | None:
        counted.append(1)
        return search(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(request, "shortest_completion", counting)
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
        g._search(lambda g=g: g._bytes, [], g._nesting, request.SEARCH_NODES) for g in grammars
    ]
    assert found == [b"abcfff", b"abcffff"] and len(searches) == 2
    again = [
        g._search(lambda g=g: g._bytes, [], g._nesting, request.SEARCH_NODES) for g in grammars
    ]
    assert again == found and len(searches) == 2  # both remembered, each under its own key


def test_the_table_is_bounded_and_forgets_the_least_recent() -> None:
    memo = SearchMemo(capacity=2)
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
