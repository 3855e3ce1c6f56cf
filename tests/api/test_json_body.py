"""Request bodies are parsed once, strictly (api/json_body.py): lone surrogates, repeated keys
and deep nesting are a 400 naming the field, never a 500 further on (issue 9)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.api.conftest import MODEL, assert_error, chat_body

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


async def post_raw(client: httpx.AsyncClient, url: str, body: Any | bytes) -> httpx.Response:
    # json.dumps escapes lone surrogates as \ud800, which is valid JSON; httpx's json= would
    # refuse to encode them.
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(url, content=content, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("url", "body", "param"),
    [
        (CHAT, chat_body("hi \ud800"), "messages[0].content"),
        (CHAT, chat_body([{"type": "text", "text": "\udfff!"}]), "messages[0].content[0].text"),
        (COMPLETIONS, {"model": MODEL, "prompt": "a\ud800b", "max_tokens": 2}, "prompt"),
        (
            CHAT,
            chat_body([{"type": "image_url", "image_url": {"url": "http://cdn.example/\ud800"}}]),
            "messages[0].content[0].image_url.url",
        ),
        (CHAT, {**chat_body(), "\ud800": 1}, "\\ud800"),
    ],
)
async def test_lone_surrogates_are_a_400_naming_the_field(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], param: str
) -> None:
    message = assert_error(await post_raw(client, url, body), 400, param)
    assert "lone surrogate" in message and "valid Unicode" in message


async def test_bytes_that_are_not_utf8_are_a_400(client: httpx.AsyncClient) -> None:
    body = json.dumps(chat_body("XX")).encode().replace(b"XX", b"\xff\xfe")
    assert "not valid UTF-8" in assert_error(await post_raw(client, CHAT, body), 400)
    # Surrogates encoded as UTF-8 bytes (CESU-style) are no better than escaped ones.
    body = json.dumps(chat_body("XX")).encode().replace(b"XX", b"\xed\xa0\x80")
    assert_error(await post_raw(client, CHAT, body), 400)


async def test_a_repeated_key_is_a_400_naming_it(client: httpx.AsyncClient) -> None:
    text = json.dumps(chat_body())
    twice = text[:-1] + ', "model": "other"}'
    message = assert_error(await post_raw(client, CHAT, twice.encode()), 400, "model")
    assert "'model' appears twice" in message
    nested = text.replace('"role": "user"', '"role": "user", "role": "system"')
    assert_error(await post_raw(client, CHAT, nested.encode()), 400, "messages[0].role")
    completion = '{"model": "tiny", "prompt": "a", "max_tokens": 2, "max_tokens": 500}'
    assert_error(await post_raw(client, COMPLETIONS, completion.encode()), 400, "max_tokens")


def nested_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def schema_body(depth: int) -> dict[str, Any]:
    spec = {"name": "deep", "strict": True, "schema": nested_schema(depth)}
    return chat_body(response_format={"type": "json_schema", "json_schema": spec})


async def test_deep_nesting_is_a_400_naming_the_field(client: httpx.AsyncClient) -> None:
    # ~900 levels was a RecursionError (500) in copy.deepcopy; the body's own bound says so.
    response = await post_raw(client, CHAT, schema_body(900))
    message = assert_error(response, 400)
    param = response.json()["error"]["param"]
    assert param.startswith("response_format.json_schema.schema.items.items"), param
    assert "deeper than 256 levels" in message
    # Within the body's bound, the schema's own bound names the field the client wrote.
    response = await post_raw(client, CHAT, schema_body(200))
    message = assert_error(response, 400, "response_format.json_schema.schema")
    assert "nests deeper than 128 levels" in message
    # Deeper than json.loads goes at all.
    deep = b'{"model": "tiny", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert "nests deeper" in assert_error(await post_raw(client, CHAT, deep), 400)
    # A schema nested as deep as a real one still works.
    ok = await post_raw(client, CHAT, schema_body(20))
    assert ok.status_code == 200, ok.text
