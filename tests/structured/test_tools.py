"""Tool-call grammars: every output is text and/or calls in the Hermes format, each call names
an offered function with arguments valid against its schema — under adversarial logits that
also push towards `<tool_call>`, and under every budget from the shortest output up."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest
import tokenizers
import torch

from vlmserve.structured import StructuredBackend, StructuredOutputError
from vlmserve.structured.testing import QWEN_SPECIAL_TOKENS, adversarial_logits, decode, validate
from vlmserve.structured.tools import CALL_OPEN, NO_TOOL_CALLS_LARK
from vlmserve.types import StructuredOutputsParams, ToolCallsConstraint, ToolFunction

WEATHER = ToolFunction(
    "get_weather",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 24},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
        },
        "required": ["city", "unit"],
    },
    strict=True,
)
SEARCH = ToolFunction(
    "search",
    {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "filters": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["query"],
    },
)
FUNCTIONS = {fn.name: fn for fn in (WEATHER, SEARCH)}
CALL = re.compile(r'<tool_call>\n\{"name": ("[^"]*"), "arguments": (\{[^\n]*\})\}\n</tool_call>')
SEEDS = range(5)


def check_output(text: str, required: bool, parallel: bool) -> tuple[str, int]:
    """Content and the number of calls; every call parses and validates, nothing is left
    over, and the content holds no call tag."""
    start = text.find(CALL_OPEN)
    content = text if start < 0 else text[:start]
    assert "<tool_call>" not in content and "</tool_call>" not in content, text
    assert not required or start == 0, text
    calls, pos = 0, start
    while start >= 0:
        match = CALL.match(text, pos)
        assert match, f"a broken call in {text!r}"
        function = FUNCTIONS[json.loads(match.group(1))]
        validate(json.loads(match.group(2)), function.parameters)
        calls, pos = calls + 1, match.end()
        if not text.startswith("\n<tool_call>", pos):
            break
        pos += 1
    assert start < 0 or pos == len(text), f"text after the calls: {text!r}"
    assert parallel or calls <= 1, text
    return content, calls


def tool_happy_logits(tokenizer: tokenizers.Tokenizer, vocab_size: int, seed: int) -> Any:
    """Adversarial logits that, every few positions and after every call, steer towards
    writing (another) `<tool_call>`."""
    base = adversarial_logits(tokenizer, vocab_size, seed)
    pieces = {i: tokenizer.decode([i]) for i in range(tokenizer.get_vocab_size())}

    def logits(prefix: list[int]) -> torch.Tensor:
        out = base(prefix)
        text = tokenizer.decode(prefix, skip_special_tokens=False)
        target = "\n" + CALL_OPEN  # the separator before a call (the grammar's, too)
        done = max((k for k in range(1, len(target)) if text.endswith(target[:k])), default=0)
        digest = hashlib.blake2b(repr((seed, prefix)).encode(), digest_size=1).digest()[0]
        if done or digest % 6 == 0 or text.endswith("</tool_call>"):
            rest = target[done:] if done or text else CALL_OPEN
            for token_id, piece in pieces.items():
                if piece and rest.startswith(piece):
                    out[token_id] += 40
        return out

    return logits


def _decode(
    backend: StructuredBackend, tokenizer: tokenizers.Tokenizer, spec: ToolCallsConstraint
) -> list[str]:
    compiled = backend.compile(StructuredOutputsParams(tool_calls=spec))
    shortest = backend.min_output_tokens(compiled)
    texts = []
    for seed in SEEDS:
        for budget in (shortest, shortest + 9, shortest + 40, 160):
            grammar = backend.new_request(compiled, max(budget, shortest))
            logits = tool_happy_logits(tokenizer, backend.vocab_size, seed)
            tokens, _ = decode(grammar, logits, backend.vocab_size, budget)
            assert len(tokens) <= budget
            tokens = [t for t in tokens if t not in backend.eos_token_ids]
            text = tokenizer.decode(tokens, skip_special_tokens=False)
            assert not any(special in text for special in QWEN_SPECIAL_TOKENS), text
            texts.append(text)
    return texts


@pytest.mark.parametrize("parallel", [True, False])
def test_required_is_only_valid_calls(
    backend: StructuredBackend, tokenizer: tokenizers.Tokenizer, parallel: bool
) -> None:
    spec = ToolCallsConstraint((WEATHER, SEARCH), required=True, parallel=parallel)
    counts = [check_output(t, True, parallel)[1] for t in _decode(backend, tokenizer, spec)]
    assert min(counts) >= 1
    assert not parallel or max(counts) > 1  # the adversary does open a second call


def test_named_function_only(backend: StructuredBackend, tokenizer: tokenizers.Tokenizer) -> None:
    spec = ToolCallsConstraint((SEARCH,), required=True)
    for text in _decode(backend, tokenizer, spec):
        check_output(text, True, True)
        assert '"name": "get_weather"' not in text


@pytest.mark.parametrize("parallel", [True, False])
def test_auto_is_text_or_valid_calls(
    backend: StructuredBackend, tokenizer: tokenizers.Tokenizer, parallel: bool
) -> None:
    spec = ToolCallsConstraint((WEATHER, SEARCH), required=False, parallel=parallel)
    results = [check_output(t, False, parallel) for t in _decode(backend, tokenizer, spec)]
    assert any(calls for _, calls in results) and any(not calls for _, calls in results)
    assert any(content and calls for content, calls in results)  # text, then a call


def test_auto_with_a_text_schema(
    backend: StructuredBackend, tokenizer: tokenizers.Tokenizer
) -> None:
    answer = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    spec = ToolCallsConstraint((WEATHER,), text_schema=answer, text_strict=True)
    for text in _decode(backend, tokenizer, spec):
        content, calls = check_output(text, False, True)
        if not calls:
            validate(json.loads(content), answer)


def _feed(backend: StructuredBackend, tokenizer: tokenizers.Tokenizer, grammar: Any, text: str):
    for token in tokenizer.encode(text).ids:
        assert grammar.accept_token(token), text


def test_once_opened_a_call_must_follow(
    backend: StructuredBackend, tokenizer: tokenizers.Tokenizer
) -> None:
    spec = ToolCallsConstraint((WEATHER, SEARCH))
    compiled = backend.compile(StructuredOutputsParams(tool_calls=spec))
    grammar = backend.new_request(compiled)
    _feed(backend, tokenizer, grammar, "Let me check.\n<tool_call>")
    assert not grammar.is_terminated() and grammar.min_tokens_to_finish() > 0
    assert not grammar.accept_token(tokenizer.encode("Hello").ids[0])
    _feed(backend, tokenizer, grammar, '\n{"name": "search", "arguments": {"query":"x"')
    closing = tokenizer.decode(grammar.closing_tokens())
    assert closing.endswith("}}\n</tool_call>"), closing


def test_a_close_tag_is_not_text(
    backend: StructuredBackend, tokenizer: tokenizers.Tokenizer
) -> None:
    for lark, text in (
        (None, "Done.</tool_call>"),
        (NO_TOOL_CALLS_LARK, "a <tool_call>"),
        (NO_TOOL_CALLS_LARK, "a </tool_call>"),
    ):
        params = (
            StructuredOutputsParams(tool_calls=ToolCallsConstraint((WEATHER,)))
            if lark is None
            else StructuredOutputsParams(grammar=lark)
        )
        grammar = backend.new_request(backend.compile(params))
        ids = tokenizer.encode(text).ids
        assert not all(grammar.accept_token(t) for t in ids), text


def test_budget_closes_an_open_call(
    backend: StructuredBackend, tokenizer: tokenizers.Tokenizer
) -> None:
    spec = ToolCallsConstraint((WEATHER,), required=True, parallel=False)
    compiled = backend.compile(StructuredOutputsParams(tool_calls=spec))
    for extra in range(0, 12, 3):
        budget = backend.min_output_tokens(compiled) + extra
        grammar = backend.new_request(compiled, budget)
        logits = adversarial_logits(tokenizer, backend.vocab_size, extra)
        tokens, _ = decode(grammar, logits, backend.vocab_size, budget)
        assert grammar.is_terminated()
        check_output(tokenizer.decode(tokens), True, True)


@pytest.mark.parametrize(
    ("parameters", "keyword"),
    [
        ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "not"),
        ({"type": "object", "properties": {"d": {"type": "string", "format": "iban"}}}, "format"),
        ({"type": "string"}, "type"),
    ],
)
def test_unenforceable_parameters_name_the_function(
    backend: StructuredBackend, parameters: dict[str, Any], keyword: str
) -> None:
    spec = ToolCallsConstraint((WEATHER, ToolFunction("bad_tool", parameters)))
    with pytest.raises(StructuredOutputError) as info:
        backend.compile(StructuredOutputsParams(tool_calls=spec))
    error = info.value
    assert error.param == "tool_calls.functions[1].parameters"
    assert error.keyword == keyword and "'bad_tool'" in error.message, error.message


def test_duplicate_names_are_refused(backend: StructuredBackend) -> None:
    spec = ToolCallsConstraint((WEATHER, WEATHER))
    with pytest.raises(StructuredOutputError, match="unique"):
        backend.compile(StructuredOutputsParams(tool_calls=spec))
