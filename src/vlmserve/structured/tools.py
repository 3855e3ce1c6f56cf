"""Tool calls as a grammar: the Hermes format Qwen2/2.5 are trained on, with the function
name one of the offered ones and the arguments valid against that function's schema.

    <tool_call>
    {"name": "get_weather", "arguments": {"city":"Paris"}}
    </tool_call>

Modes (`ToolCallsConstraint`):
- required: the output is one call, or with `parallel` several separated by a newline;
- auto: free text that never contains `<tool_call>` or `</tool_call>`; once the model writes
  `<tool_call>` (a lazy lexeme: it ends at the first occurrence) the text is over and the
  calls follow, constrained as above. So text outside calls can never hold a broken call.
  With `text_schema` the text alternative is a JSON document instead (a response format).

The grammar is ordinary llguidance Lark, so jump-ahead and budget-aware closing apply: a
call cut short by the budget is closed with valid arguments and `}\\n</tool_call>`.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance

from vlmserve.structured.compiler import inline_schema, regex_literal
from vlmserve.structured.errors import StructuredOutputError
from vlmserve.structured.schema import check_bounds
from vlmserve.types import ToolCallsConstraint

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
CALL_SEPARATOR = "\n"  # between two calls, and between text and the first call
PARAM = "tool_calls"


CALL_NAME = '\n{"name": '  # after <tool_call>, then the name as a JSON string
CALL_ARGUMENTS = ', "arguments": '  # then the arguments object


def call_head(name: str) -> str:
    """Everything of one call after `<tool_call>` up to its arguments."""
    return CALL_NAME + json.dumps(name, ensure_ascii=False) + CALL_ARGUMENTS


CALL_TAIL = "}\n" + CALL_CLOSE  # after the arguments


def function_param(index: int) -> str:
    return f"{PARAM}.functions[{index}].parameters"


def _lark(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


_TAGS = f"{regex_literal(CALL_OPEN)}|{regex_literal(CALL_CLOSE)}"

# Text without a call tag, for requests that offer tools but forbid calls (tool_choice
# "none"): a client's parser can never mistake part of it for a (broken) call.
NO_TOOL_CALLS_LARK = f"start: TEXT\nTEXT: /(?s:.*)/ & ~/(?s:.*)({_TAGS})(?s:.*)/"


def _object_schema(schema: dict[str, Any], param: str) -> dict[str, Any]:
    """Arguments are a JSON object: a schema that allows other types is narrowed to objects
    (valid output stays valid under it); one that allows no object is refused."""
    if not isinstance(schema, dict):
        raise StructuredOutputError(f"{param} must be a JSON schema object", param=param)
    kind = schema.get("type", "object")
    if kind != "object" and not (isinstance(kind, list) and "object" in kind):
        raise StructuredOutputError(
            f"{param}: the arguments must be an object; the schema's type is {kind!r}",
            param=param,
            keyword="type",
            path="/type",
        )
    return {**schema, "type": "object"}


def check_tool_bounds(spec: ToolCallsConstraint) -> None:
    """Every schema within the size and depth bounds (before anything recursive walks it)."""
    for index, fn in enumerate(spec.functions):
        if isinstance(fn.parameters, dict):
            check_bounds(fn.parameters, function_param(index))
    if spec.text_schema is not None:
        check_bounds(spec.text_schema, f"{PARAM}.text_schema")


def tool_calls_grammar(spec: ToolCallsConstraint) -> str:
    """The llguidance grammar for `spec`. A function schema that cannot be enforced is a
    `StructuredOutputError` naming `tool_calls.functions[i].parameters` and the function."""
    if not spec.functions:
        raise StructuredOutputError(f"{PARAM}: no functions to call", param=PARAM)
    names = [fn.name for fn in spec.functions]
    if len(set(names)) != len(names):
        raise StructuredOutputError(f"{PARAM}: function names must be unique", param=PARAM)
    bodies = []
    for index, fn in enumerate(spec.functions):
        param = function_param(index)
        try:
            schema = inline_schema(_object_schema(fn.parameters, param), fn.strict, param)
        except StructuredOutputError as exc:
            raise StructuredOutputError(
                f"{exc.message} (function {fn.name!r})",
                param=exc.param,
                keyword=exc.keyword,
                path=exc.path,
            ) from exc
        bodies.append(f"{_lark(call_head(fn.name))} %json {schema} {_lark(CALL_TAIL)}")
    lines = ["body: " + " | ".join(bodies)]
    calls = "body (more)*" if spec.parallel else "body"
    lines.append(f"more: {_lark(CALL_SEPARATOR + CALL_OPEN)} body")
    if spec.required:
        lines.append(f"start: {_lark(CALL_OPEN)} {calls}")
    elif spec.text_schema is not None:
        text = inline_schema(spec.text_schema, spec.text_strict, f"{PARAM}.text_schema")
        lines.append(f"start: %json {text} | {_lark(CALL_OPEN)} {calls}")
    else:
        lines += [
            f"start: TEXT | head {calls}",
            # Text alone: no opening or closing tag anywhere in it.
            f"TEXT: /(?s:.*)/ & ~/(?s:.*)({_TAGS})(?s:.*)/",
            # Text, then a call: lazy, so it ends at the first <tool_call>.
            f"head[lazy]: PREFIX {_lark(CALL_OPEN)}",
            f"PREFIX: /(?s:.*)/ & ~/(?s:.*){regex_literal(CALL_CLOSE)}(?s:.*)/",
        ]
    return llguidance.grammar_from("lark", "\n".join(lines))
