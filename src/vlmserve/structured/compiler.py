"""Constraint -> llguidance grammar text, one function per constraint kind.

Every kind is checked here, before any matcher exists: what cannot be enforced exactly is a
`StructuredOutputError`, never a weaker grammar. Whitespace is compact everywhere (no free
whitespace for a weak model to spin on).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import llguidance

from vlmserve.structured.errors import StructuredOutputError
from vlmserve.structured.schema import (
    apply_strict,
    check_enforceable,
    drop_noop_keywords,
    explain_llguidance_error,
    load_schema,
)
from vlmserve.types import StructuredOutputsParams

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # only in llguidance's type stubs

# Applied after the schema's own options: compact JSON, unsupported keywords are errors.
JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ",",
    "key_separator": ":",
    "lenient": False,
    "coerce_one_of": False,
}
# Lark features whose meaning depends on the model's tokens or hides sampled ones: numeric
# token references, token-count limits, stop strings that backtrack, llguidance options.
_TOKEN_LEVEL_LARK = re.compile(r"<\[|\bmax_tokens\s*=|\bstop\s*=|%llguidance|x-guidance")
_LARK_LITERALS = re.compile(r'"(?:\\.|[^"\\])*"|/(?:\\.|[^/\\\n])+/[a-z]*|(?://|#)[^\n]*')


def _param(kind: str) -> str:
    return f"structured_outputs.{kind}"


def json_schema_grammar(value: dict[str, Any] | str, strict: bool, param: str) -> str:
    schema = load_schema(value, param)
    enforced = drop_noop_keywords(apply_strict(schema) if strict else schema)
    check_enforceable(enforced, param)
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(enforced, overrides=JSON_OPTIONS)
    except ValueError as exc:
        raise StructuredOutputError(f"{param}: invalid schema: {exc}", param=param) from exc
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise explain_llguidance_error(messages[0], schema, param)
    return grammar


def inline_schema(value: dict[str, Any], strict: bool, param: str) -> str:
    """A schema for Lark's `%json {...}`, checked like a top-level one first."""
    json_schema_grammar(value, strict, param)
    enforced = drop_noop_keywords(apply_strict(value) if strict else value)
    return json.dumps({**enforced, "x-guidance": JSON_OPTIONS})


def regex_literal(text: str) -> str:
    # Every non-alphanumeric character as \x{..}: no Rust-regex escape surprises (`\<`).
    return "".join(c if c.isalnum() else f"\\x{{{ord(c):x}}}" for c in text)


def structural_tag_grammar(value: dict[str, Any] | str, strict: bool) -> str:
    """vLLM's structural tag: free text, and schema-checked JSON between begin and end.

    Once a trigger appears in the text, one of its structures must follow; the final free
    text may not contain a trigger (so a trigger never escapes its structure).
    """
    param = _param("structural_tag")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise StructuredOutputError(f"{param} is not valid JSON: {exc}", param=param) from exc
    if not isinstance(value, dict) or not value:
        raise StructuredOutputError(f"{param} must be a non-empty object", param=param)
    if value.get("type", "structural_tag") != "structural_tag":
        raise StructuredOutputError(
            f"{param}: unsupported type {value.get('type')!r}, expected 'structural_tag'",
            param=param,
            keyword="type",
        )
    structures, triggers = value.get("structures"), value.get("triggers")
    if not isinstance(structures, list) or not structures:
        raise StructuredOutputError(
            f"{param}.structures must be a non-empty list", param=param, keyword="structures"
        )
    if (
        not isinstance(triggers, list)
        or not triggers
        or not all(isinstance(t, str) and t for t in triggers)
    ):
        raise StructuredOutputError(
            f"{param}.triggers must be a non-empty list of non-empty strings",
            param=param,
            keyword="triggers",
        )
    bodies: dict[str, list[str]] = {trigger: [] for trigger in triggers}
    for index, item in enumerate(structures):
        where = f"{param}.structures[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("begin"), str):
            raise StructuredOutputError(f"{where} needs a string 'begin'", param=param)
        if not isinstance(item.get("end"), str) or not isinstance(item.get("schema"), dict):
            raise StructuredOutputError(f"{where} needs 'schema' (object) and 'end'", param=param)
        begin = item["begin"]
        trigger = next((t for t in triggers if begin.startswith(t)), None)
        if trigger is None:
            raise StructuredOutputError(
                f"{where}.begin {begin!r} starts with none of the triggers {triggers}",
                param=param,
                keyword="begin",
            )
        schema = inline_schema(item["schema"], strict, f"{where}.schema")
        rest = json.dumps(begin[len(trigger) :]) if begin != trigger else ""
        end = json.dumps(item["end"]) if item["end"] else ""
        bodies[trigger].append(f"{rest} %json {schema} {end}")
    used = [t for t in triggers if bodies[t]]
    forbidden = "|".join(regex_literal(t) for t in used)
    lines = [
        "start: (" + " | ".join(f"tag{i}" for i in range(len(used))) + ")* tail",
        r"TEXT: /(.|\n)*/",
        "tail: TAIL",
        f"TAIL: /(?s:.*)/ & ~/(?s:.*)({forbidden})(?s:.*)/",
    ]
    for index, trigger in enumerate(used):
        lines.append(f"head{index}[lazy]: TEXT {json.dumps(trigger)}")
        lines.append(f"tag{index}: head{index} (" + " | ".join(bodies[trigger]) + ")")
    return llguidance.grammar_from("lark", "\n".join(lines))


def lark_grammar(text: str) -> str:
    param = _param("grammar")
    if not text.strip():
        raise StructuredOutputError(f"{param} is empty", param=param)
    code = _LARK_LITERALS.sub(" ", text)
    found = _TOKEN_LEVEL_LARK.search(code) or re.search(r"x-guidance|%llguidance", text)
    if found:
        raise StructuredOutputError(
            f"{param}: '{found.group(0).strip()}' is not supported (token-level or option "
            "override features would escape the byte-level guarantees)",
            param=param,
            keyword=found.group(0).strip(),
        )
    try:
        return llguidance.grammar_from("grammar", text)
    except ValueError as exc:
        raise StructuredOutputError(f"{param} does not parse: {exc}", param=param) from exc


def build_grammar(params: StructuredOutputsParams) -> str:
    """The llguidance grammar for one constraint; only syntax-level checks happen here."""
    try:
        kind = params.kind()
    except ValueError as exc:
        raise StructuredOutputError(str(exc), param="structured_outputs") from exc
    if kind == "json":
        assert params.json is not None
        return json_schema_grammar(params.json, params.strict, _param("json"))
    if kind == "json_object":
        return json_schema_grammar({"type": "object"}, False, _param("json_object"))
    if kind == "regex":
        assert params.regex is not None
        # JavaScript/JSON Schema classes: \d is [0-9] and \w is [0-9A-Za-z_], not every
        # Unicode digit (Rust's tables are newer than most clients' regex engines).
        ascii_regex = llguidance.regex_to_lark(params.regex, "dw")
        return llguidance.LLMatcher.grammar_from_lark(f"start: /{ascii_regex}/")
    if kind == "choice":
        choices = params.choice
        if not choices or not all(isinstance(c, str) for c in choices):
            raise StructuredOutputError(
                f"{_param('choice')} must be a non-empty list of strings", param=_param("choice")
            )
        # One lexeme, not llguidance's `choice` grammar: that puts every alternative in the
        # parser's row, which refuses more than 2,000 items (a satisfiable 5,000-item choice
        # was an error). As a lexeme the alternatives live in the lexer's lazy automaton:
        # 20,000 items compile in well under a second.
        literals = " | ".join(json.dumps(choice) for choice in choices)
        return llguidance.grammar_from("lark", f"start: CHOICE\nCHOICE: {literals}")
    if kind == "grammar":
        assert params.grammar is not None
        return lark_grammar(params.grammar)
    if kind == "structural_tag":
        assert params.structural_tag is not None
        return structural_tag_grammar(params.structural_tag, params.strict)
    raise StructuredOutputError(f"unknown constraint kind {kind!r}", param="structured_outputs")
