"""Tool calling through the official `openai` client: all four tool choices, whole and
streamed (the deltas add up to the whole answer), a multi-turn exchange with tool results,
and every refusal naming its field."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from fastapi import FastAPI

from tests.api.conftest import MODEL
from tests.api.test_openai_client import openai_client
from vlmserve.structured.testing import validate

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
UNIT = {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"]}
TOOLS: Any = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": WEATHER, "strict": True},
    },
    {"type": "function", "function": {"name": "pick_unit", "description": "A unit."}},
    {"type": "function", "function": {"name": "set_unit", "parameters": UNIT, "strict": True}},
]
SCHEMAS = {"get_weather": WEATHER, "pick_unit": {"type": "object"}, "set_unit": UNIT}
USER: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED: Any = {"type": "function", "function": {"name": "set_unit"}}


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client(app) as c:
        yield c


def _check_calls(calls: list[Any] | None) -> list[str]:
    for call in calls or []:
        assert call.type == "function" and call.id.startswith("call_")
        validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return [call.function.name for call in calls or []]


async def _streamed(client: openai.AsyncOpenAI, **fields: Any) -> tuple[str, list[Any], str]:
    """Content, calls (name, arguments) and finish reason put together from the deltas."""
    stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True, **fields)
    content, calls, reason = "", [], ""
    async for chunk in stream:
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for delta in choice.delta.tool_calls or []:
            if delta.id is not None:
                assert delta.index == len(calls) and delta.function is not None
                calls.append([delta.function.name, ""])
            assert delta.function is not None
            calls[delta.index][1] += delta.function.arguments or ""
        reason = choice.finish_reason or reason
    return content, calls, reason


@pytest.mark.parametrize("tool_choice", ["none", "auto", "required", NAMED])
async def test_every_tool_choice_whole_and_streamed(
    client: openai.AsyncOpenAI, tool_choice: Any
) -> None:
    fields: dict[str, Any] = {"tools": TOOLS, "tool_choice": tool_choice, "max_tokens": 64}
    whole = await client.chat.completions.create(
        model=MODEL, messages=USER, temperature=0, **fields
    )
    message = whole.choices[0].message
    names = _check_calls(message.tool_calls)
    if tool_choice == "none":
        assert message.tool_calls is None and "<tool_call>" not in (message.content or "")
    if tool_choice == "required":
        assert names and message.content is None
    if tool_choice == NAMED:
        assert names and set(names) == {"set_unit"}
    assert whole.choices[0].finish_reason in (
        ("tool_calls", "length") if names else ("stop", "length")
    )
    content, calls, reason = await _streamed(client, temperature=0, **fields)
    assert content == (message.content or "")
    assert calls == [[c.function.name, c.function.arguments] for c in message.tool_calls or []]
    assert reason == whole.choices[0].finish_reason


async def test_a_call_the_model_finishes_says_tool_calls(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=MODEL,
        messages=USER,
        tools=TOOLS,
        tool_choice=NAMED,
        parallel_tool_calls=False,
        max_tokens=64,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert _check_calls(choice.message.tool_calls) == ["set_unit"]
    # A budget that cuts the call: still valid, and `length` says it was cut.
    cut = await client.chat.completions.create(
        model=MODEL, messages=USER, tools=TOOLS, tool_choice="required", max_tokens=48, seed=1
    )
    assert _check_calls(cut.choices[0].message.tool_calls)
    assert cut.choices[0].finish_reason == "length"


async def test_a_multi_turn_exchange_with_tool_results(client: openai.AsyncOpenAI) -> None:
    first = await client.chat.completions.create(
        model=MODEL, messages=USER, tools=TOOLS, tool_choice="required", max_tokens=48
    )
    message = first.choices[0].message
    assert message.tool_calls
    # As applications do: the reply appended as it came, then one result per call.
    history: Any = [*USER, message]
    history += [
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 21})}
        for call in message.tool_calls
    ]
    second = await client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, max_tokens=8
    )
    assert first.usage is not None and second.usage is not None
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens
    # A history in plain dicts, with content next to the calls, and no tools offered now.
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    plain: Any = [
        *USER,
        {"role": "assistant", "content": "Checking.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "21"}]},
    ]
    reply = await client.chat.completions.create(model=MODEL, messages=plain, max_tokens=4)
    assert reply.choices[0].message.tool_calls is None


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        (
            {
                "tools": [
                    TOOLS[0],
                    {
                        "type": "function",
                        "function": {
                            "name": "g",
                            "parameters": {"type": "object", "properties": {"x": {"not": {}}}},
                        },
                    },
                ]
            },
            "tools[1].function.parameters",
            ["'not'", "'g'", "/properties/x/not"],
        ),
        ({"tools": TOOLS, "tool_choice": "required", "stop": ["x"]}, "stop", ["stop"]),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
            ["nope"],
        ),
        ({"tool_choice": "required"}, "tool_choice", ["tools"]),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name", ["get_weather"]),
        (
            {"tools": [{"type": "function", "function": {"name": "a b"}}]},
            "tools[0].function.name",
            [],
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "s", "parameters": {"type": "string"}},
                    }
                ]
            },
            "tools[0].function.parameters",
            ["object"],
        ),
        (
            {
                "tools": TOOLS,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "a",
                        "schema": {"type": "object", "properties": {"x": {"not": {}}}},
                    },
                },
            },
            "response_format.json_schema.schema",
            ["not"],
        ),
        ({"tools": TOOLS, "tool_choice": "allowed_tools"}, "tool_choice", []),
    ],
)
async def test_refusals_name_the_field(
    client: openai.AsyncOpenAI, fields: dict[str, Any], param: str, words: list[str]
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model=MODEL, messages=USER, max_tokens=8, **fields)
    assert info.value.param == param, info.value  # type: ignore[attr-defined]
    assert all(word in info.value.message for word in words), info.value.message


@pytest.mark.parametrize(
    ("tool_choice", "extra", "param"),
    [
        ("required", {"min_tokens": 2}, "min_tokens"),
        ("none", {"min_tokens": 2}, "min_tokens"),
        ("auto", {"stop_token_ids": [5]}, "stop_token_ids"),
        (NAMED, {"stop_token_ids": [5]}, "stop_token_ids"),
    ],
)
async def test_vllm_fields_that_would_break_a_call_are_refused(
    client: openai.AsyncOpenAI, tool_choice: Any, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model=MODEL,
            messages=USER,
            tools=TOOLS,
            tool_choice=tool_choice,
            max_tokens=8,
            extra_body=extra,
        )
    assert info.value.param == param, info.value  # type: ignore[attr-defined]


async def test_calls_parse_with_special_tokens_kept_and_eos_ignored(
    client: openai.AsyncOpenAI,
) -> None:
    for extra in ({"skip_special_tokens": False}, {"ignore_eos": True}):
        for tool_choice in ("required", "auto"):
            completion = await client.chat.completions.create(
                model=MODEL,
                messages=USER,
                tools=TOOLS,
                tool_choice=tool_choice,
                max_tokens=48,
                seed=3,
                extra_body=extra,
            )
            names = _check_calls(completion.choices[0].message.tool_calls)
            assert tool_choice == "auto" or names
