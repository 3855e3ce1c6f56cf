"""Compile limits: a deadline, failures remembered, one compile per constraint in flight."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import tokenizers

from vlmserve.structured import StructuredBackend, StructuredOutputError
from vlmserve.structured import backend as backend_module
from vlmserve.types import StructuredOutputsParams

# Loaded CI machines run several times slower than a quiet one: bounds are generous.
SLACK_S = 5.0


def wide_object(num_properties: int, tag: str = "p") -> dict[str, Any]:
    """Each required string needs a chosen closing quote: the closer's search for a valid
    output then visits ~100 us states until its limit (~20 s at 1000 properties)."""
    names = [f"{tag}{i}" for i in range(num_properties)]
    return {
        "type": "object",
        "properties": {name: {"type": "string"} for name in names},
        "required": names,
    }


def make_backend(tokenizer: tokenizers.Tokenizer, timeout: float | None) -> StructuredBackend:
    eos = [tokenizer.token_to_id("<|im_end|>")]
    return StructuredBackend(tokenizer, tokenizer.get_vocab_size(), eos, compile_timeout=timeout)


def refusal(backend: StructuredBackend, schema: dict[str, Any]) -> tuple[float, str]:
    start = time.monotonic()
    with pytest.raises(StructuredOutputError) as caught:
        backend.compile(StructuredOutputsParams(json=schema))
    assert caught.value.param == "structured_outputs.json"
    return time.monotonic() - start, caught.value.message


def test_a_compile_past_its_deadline_is_refused_naming_the_field(
    tokenizer: tokenizers.Tokenizer,
) -> None:
    backend = make_backend(tokenizer, timeout=0.5)
    seconds, message = refusal(backend, wide_object(1000))
    assert "deadline" in message and seconds < 0.5 + SLACK_S
    # An ordinary schema is far inside the deadline.
    assert backend.compile(StructuredOutputsParams(json=wide_object(5))).min_output_tokens > 0


def test_failures_are_remembered(tokenizer: tokenizers.Tokenizer) -> None:
    backend = make_backend(tokenizer, timeout=0.5)
    first, message = refusal(backend, wide_object(1000))
    again, message_again = refusal(backend, wide_object(1000))
    assert message_again == message and again < 0.1 < first
    unsupported = {"type": "string", "pattern": "^(?=a)b$"}  # lookaround: refused by llguidance
    refusal(backend, unsupported)
    refusal(backend, unsupported)
    assert backend.stats.failures == 2 and backend.stats.failure_hits == 2


def test_refusals_for_time_expire(
    tokenizer: tokenizers.Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deadline refusal may not repeat on a quieter machine, so it is remembered a while;
    deterministic refusals stay as long as the cache keeps them."""
    monkeypatch.setattr(backend_module, "TIMEOUT_FAILURE_TTL_S", 0.0)
    backend = make_backend(tokenizer, timeout=0.3)
    refusal(backend, wide_object(1000))
    refusal(backend, wide_object(1000))
    assert backend.stats.failures == 2 and backend.stats.failure_hits == 0


def test_one_compile_per_constraint_in_flight(tokenizer: tokenizers.Tokenizer) -> None:
    backend = make_backend(tokenizer, timeout=1.0)
    errors: list[str] = []

    def compile_it() -> None:
        errors.append(refusal(backend, wide_object(1000, tag="q"))[1])

    threads = [threading.Thread(target=compile_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(errors) == 4 and len(set(errors)) == 1
    assert backend.stats.failures == 1  # the others waited for it (or hit its failure)


def test_a_cache_lookup_never_compiles(tokenizer: tokenizers.Tokenizer) -> None:
    backend = make_backend(tokenizer, timeout=None)
    params = StructuredOutputsParams(choice=["a", "b"])
    assert backend.cached(params) is None and backend.stats.misses == 0
    compiled = backend.compile(params)
    assert backend.cached(params) is compiled
    with pytest.raises(ValueError, match="compile_timeout"):
        make_backend(tokenizer, timeout=0)
