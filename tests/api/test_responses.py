"""The Responses API through the official `openai` client: an image, a JSON schema text
format, function tools, continuing with `previous_response_id`, the stored responses (only
for the key that made them), the typed stream in order, and refusals naming their field."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from tests.api.conftest import MODEL, make_app, png_data_url
from tests.api.test_openai_client import openai_client
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.serving.response_store import FILE_NAME
from vlmserve.structured.testing import validate

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}, "days": {"type": "integer"}},
    "required": ["city"],
}
TOOLS: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]


class Verdict(BaseModel):
    safe: bool
    label: str


@pytest.fixture
def app(async_engine: AsyncEngine, tmp_path: Path) -> FastAPI:
    return make_app(async_engine, data_dir=str(tmp_path))


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client(app, api_key="key-a") as c:
        yield c


async def test_text_and_an_image(client: openai.AsyncOpenAI, tmp_path: Path) -> None:
    text = await client.responses.create(model=MODEL, input="Hello", max_output_tokens=6)
    assert text.object == "response" and text.id.startswith("resp_")
    assert text.status in ("completed", "incomplete") and isinstance(text.output_text, str)
    assert text.output[0].type == "message" and text.usage is not None
    assert text.usage.output_tokens <= 6
    content: Any = [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": png_data_url(), "detail": "auto"},
    ]
    image = await client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": content}],
        instructions="Answer briefly.",
        max_output_tokens=4,
        store=False,
    )
    assert image.usage is not None and image.usage.input_tokens > text.usage.input_tokens + 8
    # detail as on chat: low caps the image's pixel budget, so it costs fewer tokens.
    big: Any = [{"type": "input_image", "image_url": png_data_url((672, 672))}]
    low: Any = [{**big[0], "detail": "low"}]
    tokens = []
    for parts in (big, low):
        answer = await client.responses.create(
            model=MODEL, input=[{"role": "user", "content": parts}], max_output_tokens=1
        )
        assert answer.usage is not None
        tokens.append(answer.usage.input_tokens)
    assert tokens[1] < tokens[0], tokens
    assert (tmp_path / FILE_NAME).is_file()  # the first response was stored


async def test_json_schema_text_format(client: openai.AsyncOpenAI) -> None:
    parsed = await client.responses.parse(
        model=MODEL, input="Classify.", text_format=Verdict, max_output_tokens=24
    )
    assert isinstance(parsed.output_parsed, Verdict)  # valid even when cut (incomplete)
    raw = await client.responses.create(
        model=MODEL,
        input="Classify.",
        text={"format": {"type": "json_schema", "name": "v", "schema": WEATHER, "strict": True}},
        max_output_tokens=20,
    )
    validate(json.loads(raw.output_text), WEATHER)
    anything: Any = {"format": {"type": "json_object"}}
    obj = await client.responses.create(
        model=MODEL, input="JSON, please.", text=anything, max_output_tokens=12
    )
    assert isinstance(json.loads(obj.output_text), dict)  # cut or not, an object
    assert obj.text is not None and obj.text.format is not None
    assert obj.text.format.type == "json_object"


@pytest.mark.parametrize(
    "tool_choice", ["auto", "required", {"type": "function", "name": "get_weather"}]
)
async def test_function_tools(client: openai.AsyncOpenAI, tool_choice: Any) -> None:
    response = await client.responses.create(
        model=MODEL,
        input="Weather in Paris?",
        tools=TOOLS,
        tool_choice=tool_choice,
        max_output_tokens=60,
    )
    calls = [item for item in response.output if item.type == "function_call"]
    for call in calls:
        assert call.name == "get_weather" and call.call_id.startswith("call_")
        validate(json.loads(call.arguments), WEATHER)
    assert tool_choice == "auto" or calls


async def test_continuing_with_previous_response_id(
    client: openai.AsyncOpenAI, app: FastAPI
) -> None:
    first = await client.responses.create(
        model=MODEL, input="Weather?", tools=TOOLS, tool_choice="required", max_output_tokens=60
    )
    call = next(item for item in first.output if item.type == "function_call")
    result: Any = [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
    second = await client.responses.create(
        model=MODEL, previous_response_id=first.id, input=result, tools=TOOLS, max_output_tokens=8
    )
    assert second.previous_response_id == first.id
    assert first.usage is not None and second.usage is not None
    # The whole first turn (input, the call, its result) is in the second prompt.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert (await client.responses.retrieve(first.id)).output == first.output
    # Another key sees none of it: not by id, not as a previous response.
    async with openai_client(app, api_key="key-b") as other:
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(first.id)
        with pytest.raises(openai.BadRequestError) as info:
            await other.responses.create(model=MODEL, previous_response_id=first.id, input="x")
        assert info.value.param == "previous_response_id"  # type: ignore[attr-defined]
        with pytest.raises(openai.NotFoundError):
            await other.responses.delete(first.id)
    await client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(first.id)
    unstored = await client.responses.create(
        model=MODEL, input="x", store=False, max_output_tokens=2
    )
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)


EXPECTED_ORDER = {
    "response.created": {"response.in_progress"},
    "response.in_progress": {
        "response.output_item.added",
        "response.completed",
        "response.incomplete",
    },
    "response.output_item.added": {
        "response.content_part.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    },
    "response.content_part.added": {"response.output_text.delta", "response.output_text.done"},
    "response.output_text.delta": {"response.output_text.delta", "response.output_text.done"},
    "response.output_text.done": {"response.content_part.done"},
    "response.content_part.done": {"response.output_item.done"},
    "response.function_call_arguments.delta": {
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    },
    "response.function_call_arguments.done": {"response.output_item.done"},
    "response.output_item.done": {
        "response.output_item.added",
        "response.completed",
        "response.incomplete",
    },
}


@pytest.mark.parametrize("tool_choice", ["none", "required"])
async def test_stream_events_in_order(client: openai.AsyncOpenAI, tool_choice: str) -> None:
    kinds, numbers, text, arguments = [], [], "", ""
    async with client.responses.stream(
        model=MODEL,
        input="Weather?",
        tools=TOOLS,
        tool_choice=tool_choice,
        max_output_tokens=64,  # type: ignore[arg-type]
    ) as stream:
        async for event in stream:
            kinds.append(event.type)
            numbers.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type == "response.function_call_arguments.delta":
                arguments += event.delta
            final = getattr(event, "response", None)
    assert numbers == list(range(len(numbers)))
    assert kinds[0] == "response.created" and kinds[-1] in (
        "response.completed",
        "response.incomplete",
    )
    for kind, following in itertools.pairwise(kinds):
        assert following in EXPECTED_ORDER[kind], (kind, following)
    assert final is not None
    if kinds[-1] == "response.completed":
        assert (await stream.get_final_response()).id == final.id
    assert text == final.output_text
    calls = [item for item in final.output if item.type == "function_call"]
    assert arguments == "".join(call.arguments for call in calls)
    assert (tool_choice == "required") == bool(calls)
    stored = await client.responses.retrieve(final.id)
    assert [item.id for item in stored.output] == [item.id for item in final.output]
    assert stored.output_text == final.output_text


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"reasoning": {"effort": "low"}}, "reasoning", ["not supported"]),
        ({"background": True}, "background", ["not supported"]),
        ({"truncation": "auto"}, "truncation", []),
        ({"previous_response_id": "resp_nope"}, "previous_response_id", ["resp_nope"]),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
            ["input_file"],
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_image", "image_url": "x", "detail": "original"}
                        ],
                    }
                ]
            },
            "input[0].content[0].detail",
            ["original", "low"],
        ),
        ({"input": [{"content": "x"}]}, "input[0].type", ["message", "function_call"]),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "a"},
                            {"type": "input_image", "image_url": "http://127.0.0.1/a.png"},
                        ],
                    }
                ]
            },
            "input[0].content[1]",
            ["input[0].content[1]: host"],
        ),
        ({"instructions": "<|im_start|>"}, "instructions", ["reserved"]),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "name": "f",
                        "parameters": {"type": "object", "properties": {"a": {"not": {}}}},
                    }
                ]
            },
            "tools[0].parameters",
            ["'not'", "'f'"],
        ),
        (
            {
                "text": {
                    "format": {
                        "type": "json_schema",
                        "name": "x",
                        "schema": {"type": "array", "uniqueItems": True},
                    }
                }
            },
            "text.format.schema",
            ["uniqueItems"],
        ),
        (
            {"tools": TOOLS, "tool_choice": "required", "max_output_tokens": 3},
            "max_output_tokens",
            ["max_output_tokens=3"],
        ),
        (
            {"tool_choice": {"type": "function", "name": "zz"}, "tools": TOOLS},
            "tool_choice.name",
            ["zz"],
        ),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", []),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].name", ["two tools"]),
        ({"tool_choice": "required"}, "tool_choice", ["needs tools"]),
    ],
)
async def test_refusals_name_the_field(
    client: openai.AsyncOpenAI, fields: dict[str, Any], param: str, words: list[str]
) -> None:
    body = {"model": MODEL, "input": "x", "max_output_tokens": 8, **fields}
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(**body)
    assert info.value.param == param, info.value  # type: ignore[attr-defined]
    assert all(word in info.value.message for word in words), info.value.message
