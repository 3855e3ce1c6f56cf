"""Reading tool calls out of text: whole, and streamed in every split; what the constraint
looks like per tool choice; schema refusals named after the request's fields."""

from __future__ import annotations

import json

import pytest

from vlmserve.serving import ServingError
from vlmserve.serving.tool_calls import (
    ArgumentsDelta,
    CallDone,
    CallStarted,
    ContentDelta,
    ToolCallError,
    ToolCallStream,
    finish_reason,
    parse_output,
)
from vlmserve.serving.tools import Tools
from vlmserve.structured.tools import NO_TOOL_CALLS_LARK
from vlmserve.types import SamplingParams, StructuredOutputsParams, ToolFunction

NAMES = frozenset({"get_weather", "search"})
ONE = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris","n":{"a":1}}}\n</tool_call>'
)
TWO = ONE + '\n<tool_call>\n{"name": "search", "arguments": {"q":"}\\n</tool_call>"}}\n</tool_call>'
TEXTS = {
    "text only": "Hello <tool and\nmore\n",
    "call only": ONE,
    "text and calls": "Let me look.\n" + TWO,
    "empty": "",
}


def test_whole_outputs() -> None:
    parsed = parse_output(TEXTS["text and calls"], NAMES)
    assert parsed.content == "Let me look."
    assert [c.name for c in parsed.tool_calls] == ["get_weather", "search"]
    assert [json.loads(c.arguments) for c in parsed.tool_calls] == [
        {"city": "Paris", "n": {"a": 1}},
        {"q": "}\n</tool_call>"},
    ]
    assert len({c.id for c in parsed.tool_calls}) == 2
    assert all(c.id.startswith("call_") for c in parsed.tool_calls)
    only = parse_output(ONE, NAMES)
    assert only.content is None and only.tool_calls[0].arguments == '{"city":"Paris","n":{"a":1}}'
    assert parse_output(TEXTS["text only"], NAMES).content == TEXTS["text only"]
    assert parse_output("", NAMES).content == ""


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>\n{",  # left open
        ONE + "trailing",
        ONE.replace("get_weather", "rm_rf"),  # not offered
        '<tool_call>\n{"name": "search", "arguments": [1]}\n</tool_call>',
        '<tool_call>\n{"name": "search", "arguments": {"a"}}\n</tool_call>',
    ],
)
def test_malformed_finished_text_is_an_error(text: str) -> None:
    with pytest.raises(ToolCallError):
        parse_output(text, NAMES)


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_streaming_in_every_split_matches_the_whole(name: str) -> None:
    text = TEXTS[name]
    whole = parse_output(text, NAMES)
    for step in (1, 2, 5, 11):
        stream = ToolCallStream(NAMES)
        content, arguments, names, done = "", [], [], []
        for end in [*range(0, len(text), step), len(text)]:
            for delta in stream.update(text[:end], finished=end == len(text)):
                if isinstance(delta, ContentDelta):
                    assert "<" not in delta.text or name == "text only", delta
                    content += delta.text
                elif isinstance(delta, CallStarted):
                    assert delta.index == len(names)
                    names.append(delta.name)
                    arguments.append("")
                elif isinstance(delta, ArgumentsDelta):
                    arguments[delta.index] += delta.text
                elif isinstance(delta, CallDone):
                    done.append(delta.index)
                    json.loads(arguments[delta.index])  # complete when reported done
        assert content == (whole.content or "")
        assert names == [c.name for c in whole.tool_calls]
        assert arguments == [c.arguments for c in whole.tool_calls]
        assert done == list(range(len(names)))


def test_content_that_may_open_a_call_is_held_back() -> None:
    stream = ToolCallStream(NAMES)
    assert stream.update("Sure\n<tool_", finished=False) == [ContentDelta("Sure")]
    assert stream.update("Sure\n<tool_", finished=True) == [ContentDelta("\n<tool_")]


def test_finish_reason() -> None:
    assert finish_reason("stop", True) == "tool_calls"
    assert finish_reason("length", True) == "length"  # closed by the budget
    assert finish_reason("stop", False) == "stop"


WEATHER = ToolFunction("get_weather", {"type": "object", "properties": {}}, strict=True)
SEARCH = ToolFunction("search", {"type": "object"})
DEFINITIONS = [{"type": "function", "function": {"name": n}} for n in ("get_weather", "search")]


def _tools(mode: str, function: str | None = None, parallel: bool = True) -> Tools:
    return Tools(DEFINITIONS, (WEATHER, SEARCH), mode, function, parallel)  # type: ignore[arg-type]


def test_constraint_per_mode() -> None:
    plain = SamplingParams(max_tokens=8)
    none = _tools("none").constrain(plain).structured_outputs
    assert none == StructuredOutputsParams(grammar=NO_TOOL_CALLS_LARK)
    schema = StructuredOutputsParams(json={"type": "object"})
    assert (
        _tools("none").constrain(SamplingParams(structured_outputs=schema)).structured_outputs
        is schema
    )
    auto = _tools("auto", parallel=False).constrain(plain).structured_outputs
    assert auto is not None and auto.tool_calls is not None
    assert not auto.tool_calls.required and not auto.tool_calls.parallel
    assert auto.tool_calls.functions == (WEATHER, SEARCH)
    named = _tools("required", "search").constrain(plain).structured_outputs
    assert named is not None and named.tool_calls is not None
    assert named.tool_calls.required and named.tool_calls.functions == (SEARCH,)
    texted = _tools("auto").constrain(SamplingParams(structured_outputs=schema))
    assert texted.structured_outputs is not None and texted.structured_outputs.tool_calls
    assert texted.structured_outputs.tool_calls.text_schema == {"type": "object"}


def test_combinations_the_grammar_cannot_express() -> None:
    with pytest.raises(ServingError) as stop:
        _tools("required").constrain(SamplingParams(stop=["x"]))
    assert stop.value.param == "stop"
    regex = SamplingParams(structured_outputs=StructuredOutputsParams(regex="a+"))
    with pytest.raises(ServingError) as kind:
        _tools("auto").constrain(regex)
    assert kind.value.param == "structured_outputs.regex"
    with pytest.raises(ValueError, match="not offered"):
        _tools("required", "nope")


def test_schema_errors_name_the_request_field() -> None:
    param = "tool_calls.functions[0].parameters"
    error = ServingError(400, f"{param}: unsupported keyword 'not' (function 'search')", param)
    _tools("required", "search").name_fields(
        error, lambda i: f"tools[{i}].function.parameters", "response_format"
    )
    assert error.param == "tools[1].function.parameters"  # the index in the request
    assert error.message.startswith("tools[1].function.parameters: unsupported")
    text = ServingError(400, "tool_calls.text_schema: bad", "tool_calls.text_schema")
    _tools("auto").name_fields(text, str, "response_format.x")
    assert text.param == "response_format.x" and text.message == "response_format.x: bad"
    other = ServingError(400, "bad", "messages")
    _tools("auto").name_fields(other, str, "x")
    assert (other.param, other.message) == ("messages", "bad")
