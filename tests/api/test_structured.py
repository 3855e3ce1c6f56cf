"""Structured outputs through the HTTP API: constraints hold, the openai client's parse()
round-trips, and a schema the compiler cannot enforce is a 400 naming the field sent."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Literal

import httpx
import openai
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from tests.api.conftest import MODEL, assert_error, chat_body
from tests.api.test_openai_client import USER, openai_client
from vlmserve.engine.engine import LLMEngine

pytestmark = pytest.mark.skipif(
    not hasattr(LLMEngine, "prepare"),
    reason="the engine does not enforce structured outputs on this branch yet",
)
CHAT = "/v1/chat/completions"


class Verdict(BaseModel):
    label: Literal["safe", "unsafe"]
    confident: bool


@pytest.fixture
async def oai(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client(app) as client:
        yield client


async def test_parse_round_trip(oai: openai.AsyncOpenAI) -> None:
    parsed = await oai.chat.completions.parse(
        model=MODEL,
        messages=USER,
        response_format=Verdict,
        max_tokens=40,  # type: ignore[arg-type]
    )
    choice = parsed.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Verdict)


async def test_kinds_constrain_the_output(client: httpx.AsyncClient) -> None:
    async def text(**fields: object) -> str:
        response = await client.post(CHAT, json=chat_body(max_tokens=30, **fields))
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["message"]["content"])

    assert await text(structured_outputs={"choice": ["red", "green"]}) in ("red", "green")
    assert re.fullmatch(r"[0-9]{3}", await text(structured_outputs={"regex": "[0-9]{3}"}))
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["n"],
        "additionalProperties": False,
    }
    spec = {"name": "n", "schema": schema, "strict": True}
    value = json.loads(await text(response_format={"type": "json_schema", "json_schema": spec}))
    assert set(value) == {"n"} and 0 <= value["n"] <= 9
    assert isinstance(json.loads(await text(response_format={"type": "json_object"})), dict)


async def test_streamed_output_is_constrained_too(client: httpx.AsyncClient) -> None:
    body = chat_body(max_tokens=20, stream=True, structured_outputs={"choice": ["yes", "no"]})
    response = await client.post(CHAT, json=body)
    chunks = [json.loads(line[6:]) for line in response.text.split("\n\n") if line[6:7] == "{"]
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])
    assert text in ("yes", "no")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "object", "minProperties": 2},
                    },
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"structured_outputs": {"regex": "("}}, "structured_outputs.regex"),
        ({"structured_outputs": {"json": "{not json"}}, "structured_outputs.json"),
    ],
)
async def test_uncompilable_constraints_are_400(
    client: httpx.AsyncClient, fields: dict[str, object], param: str
) -> None:
    response = await client.post(CHAT, json=chat_body(**fields))
    error_param = assert_error(response, 400) and response.json()["error"]["param"]
    assert error_param is not None and error_param.startswith(param), response.text
    # The message speaks of the field the client sent, never of the other spelling.
    message = response.json()["error"]["message"]
    assert message.startswith(param), message
    sent, other = (
        ("response_format", "structured_outputs")
        if "response_format" in fields
        else ("structured_outputs", "response_format")
    )
    assert sent in message and other not in message, message
