"""Held-out real schemas (a fixed JSONSchemaBench sample) as tool `parameters` behave as they
do as a response format: refused with the same keyword, or compiled — and then every call's
arguments validate — never a weaker constraint. The one allowed difference: a schema whose
top level is not an object is refused as parameters (arguments are objects)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tokenizers

from vlmserve.structured import StructuredBackend, StructuredOutputError
from vlmserve.structured.testing import adversarial_logits, decode, validate
from vlmserve.types import StructuredOutputsParams, ToolCallsConstraint, ToolFunction

DATA = Path(__file__).parent / "data" / "jsonschemabench"
SCHEMAS = sorted(DATA.glob("*/*.json"))
CALL = re.compile(r'<tool_call>\n\{"name": "f", "arguments": (\{.*\})\}\n</tool_call>', re.S)


def _outcome(backend: StructuredBackend, params: StructuredOutputsParams) -> str | None:
    """None when it compiles, else the keyword the refusal names ("" for none)."""
    try:
        backend.compile(params)
    except StructuredOutputError as exc:
        return exc.keyword or ""
    return None


def test_the_sample_is_there() -> None:
    assert len(SCHEMAS) == 24


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.parametrize("strict", [False, True])
def test_parameters_behave_as_a_response_format(
    backend: StructuredBackend, tokenizer: tokenizers.Tokenizer, path: Path, strict: bool
) -> None:
    schema = json.loads(path.read_text())
    as_format = _outcome(backend, StructuredOutputsParams(json=schema, strict=strict))
    spec = ToolCallsConstraint((ToolFunction("f", schema, strict),), required=True)
    params = StructuredOutputsParams(tool_calls=spec)
    as_tool = _outcome(backend, params)
    if as_format is not None:
        assert as_tool == as_format, (as_format, as_tool)
        return
    if as_tool is not None:
        assert as_tool == "type" and schema.get("type", "object") != "object"
        return
    compiled = backend.compile(params)
    shortest = backend.min_output_tokens(compiled)
    for seed, budget in ((0, shortest), (1, shortest + 24)):
        grammar = backend.new_request(compiled, budget)
        logits = adversarial_logits(tokenizer, backend.vocab_size, seed)
        tokens, _ = decode(grammar, logits, backend.vocab_size, budget)
        text = tokenizer.decode([t for t in tokens if t not in backend.eos_token_ids])
        match = CALL.fullmatch(text)
        assert match, text
        validate(json.loads(match.group(1)), schema)
