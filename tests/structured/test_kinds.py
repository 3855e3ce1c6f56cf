"""Regex, choice, grammar, json_object and structural_tag outputs always match."""

from __future__ import annotations

import json
import re

import pytest
import tokenizers

from vlmserve.structured import StructuredBackend
from vlmserve.structured.testing import QWEN_SPECIAL_TOKENS, adversarial_logits, decode, validate
from vlmserve.types import StructuredOutputsParams

SEEDS = range(6)


def _outputs(
    backend: StructuredBackend,
    tokenizer: tokenizers.Tokenizer,
    params: StructuredOutputsParams,
    budgets: tuple[int, ...],
) -> list[str]:
    compiled = backend.compile(params)
    texts = []
    for seed in SEEDS:
        for budget in (backend.min_output_tokens(compiled), *budgets):
            grammar = backend.new_request(compiled, budget)
            logits = adversarial_logits(tokenizer, backend.vocab_size, seed)
            tokens, _ = decode(grammar, logits, backend.vocab_size, budget)
            assert len(tokens) <= budget
            tokens = [t for t in tokens if t not in backend.eos_token_ids]
            text = tokenizer.decode(tokens, skip_special_tokens=False)
            assert not any(special in text for special in QWEN_SPECIAL_TOKENS)
            texts.append(text)
    return texts


@pytest.mark.parametrize(
    "pattern",
    [r"[A-Z]{2}-\d{3,5}", r"(yes|no|maybe)", r"[a-z]+@[a-z]+\.(com|org)", r"\d+(\.\d{1,2})?"],
)
def test_regex(backend: StructuredBackend, tokenizer: tokenizers.Tokenizer, pattern: str) -> None:
    for text in _outputs(backend, tokenizer, StructuredOutputsParams(regex=pattern), (8, 30)):
        assert re.fullmatch(pattern, text), text


def test_choice(backend: StructuredBackend, tokenizer: tokenizers.Tokenizer) -> None:
    choices = ["positive", "negative", "neutral", 'with "quotes"', "a", "ab"]
    for text in _outputs(backend, tokenizer, StructuredOutputsParams(choice=choices), (4, 20)):
        assert text in choices


def test_a_twenty_thousand_item_choice_compiles_and_holds(
    backend: StructuredBackend, tokenizer: tokenizers.Tokenizer
) -> None:
    # llguidance's own choice grammar refused more than 2,000 items (its parser row limit).
    choices = [f"label-{i:05d}-{'x' * (i % 7)}" for i in range(20_000)]
    params = StructuredOutputsParams(choice=choices)
    compiled = backend.compile(params)
    assert compiled.compile_seconds < 30  # about 1 s on the 2-core VM; generous under load
    allowed = set(choices)
    for text in _outputs(backend, tokenizer, params, (12,)):
        assert text in allowed, text


ARITHMETIC = """
start: expr
expr: term (("+" | "-") term)*
term: factor (("*" | "/") factor)*
factor: NUMBER | "(" expr ")"
NUMBER: /[0-9]{1,3}/
"""


def _evaluates(text: str) -> bool:
    if not re.fullmatch(r"[0-9+\-*/()]+", text):
        return False
    try:
        compile(text, "<expr>", "eval")
    except SyntaxError:
        return False
    return True


def test_lark_grammar(backend: StructuredBackend, tokenizer: tokenizers.Tokenizer) -> None:
    params = StructuredOutputsParams(grammar=ARITHMETIC)
    for text in _outputs(backend, tokenizer, params, (6, 25)):
        # Python parses exactly this arithmetic language (no leading zeros issue: 007 is a
        # SyntaxError in Python, so strip leading zeros the grammar allows).
        assert _evaluates(re.sub(r"\b0+(\d)", r"\1", text)), text


def test_gbnf_grammar(backend: StructuredBackend, tokenizer: tokenizers.Tokenizer) -> None:
    gbnf = 'root ::= "color: " ("red" | "green" | "blue") ("!" | "")'
    params = StructuredOutputsParams(grammar=gbnf)
    for text in _outputs(backend, tokenizer, params, (10,)):
        assert re.fullmatch(r"color: (red|green|blue)!?", text), text


def test_json_object(backend: StructuredBackend, tokenizer: tokenizers.Tokenizer) -> None:
    for text in _outputs(backend, tokenizer, StructuredOutputsParams(json_object=True), (10, 40)):
        assert isinstance(json.loads(text), dict)


TAG_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
}
STRUCTURAL_TAG = {
    "type": "structural_tag",
    "structures": [
        {"begin": "<fn=weather>", "schema": TAG_SCHEMA, "end": "</fn>"},
        {
            "begin": "<fn=time>",
            "schema": {
                "type": "object",
                "properties": {"tz": {"enum": ["utc", "cet"]}},
                "required": ["tz"],
            },
            "end": "</fn>",
        },
    ],
    "triggers": ["<fn"],
}


def _check_tagged(text: str) -> None:
    """Every trigger starts a complete structure whose body validates; none is left open."""
    pos = 0
    while (start := text.find("<fn", pos)) != -1:
        match = re.match(r"<fn=(weather|time)>(.*?)</fn>", text[start:], re.S)
        assert match, f"unterminated or malformed tag in {text!r}"
        schema = (
            TAG_SCHEMA if match.group(1) == "weather" else STRUCTURAL_TAG["structures"][1]["schema"]
        )  # type: ignore[index]
        validate(json.loads(match.group(2)), schema)
        pos = start + match.end()


def test_structural_tag(backend: StructuredBackend, tokenizer: tokenizers.Tokenizer) -> None:
    params = StructuredOutputsParams(structural_tag=STRUCTURAL_TAG)
    for text in _outputs(backend, tokenizer, params, (12, 60)):
        _check_tagged(text)


def test_structural_tag_forces_schema_after_trigger(backend: StructuredBackend) -> None:
    grammar = backend.new_request(
        backend.compile(StructuredOutputsParams(structural_tag=STRUCTURAL_TAG))
    )
    for byte in b"Sure. <fn=weather>":
        assert grammar.accept_token(backend.tokens.vocab[bytes([byte])])
    assert not grammar.accept_token(backend.tokens.vocab[b"x"])  # the JSON must start
    assert grammar.min_tokens_to_finish() > 0
    assert b"</fn>" in b"".join(backend.tokens.token_bytes[t] for t in grammar.closing_tokens())
