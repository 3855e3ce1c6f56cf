"""OpenAI's logit_bias and vLLM's sampling extensions over HTTP, on both endpoints."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.api.conftest import MODEL, assert_error, chat_body
from vlmserve.engine.async_engine import AsyncEngine

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def completion_body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "def f(x):", "max_tokens": 6, "temperature": 0, **fields}


async def test_logit_bias_bans_and_forces_tokens(
    client: httpx.AsyncClient, async_engine: AsyncEngine
) -> None:
    tokenizer = async_engine.engine.tokenizer.tokenizer
    free = (await client.post(CHAT, json=chat_body(temperature=0, max_tokens=3))).json()
    first = free["choices"][0]["message"]["content"]
    first_id = tokenizer.encode(first, add_special_tokens=False).ids[0]
    banned = chat_body(temperature=0, max_tokens=3, logit_bias={str(first_id): -100})
    response = await client.post(CHAT, json=banned)
    assert response.status_code == 200, response.text
    assert not response.json()["choices"][0]["message"]["content"].startswith(first)
    word = tokenizer.token_to_id("return")
    assert word is not None
    forced = completion_body(temperature=1.0, seed=3, logit_bias={str(word): 100})
    response = await client.post(COMPLETIONS, json=forced)
    assert response.json()["choices"][0]["text"] == "return" * 6


async def test_logit_bias_never_breaks_a_grammar(
    client: httpx.AsyncClient, async_engine: AsyncEngine
) -> None:
    tokenizer = async_engine.engine.tokenizer.tokenizer
    bias = {str(tokenizer.token_to_id(t)): 100 for t in ("return", "x", '"')}
    body = chat_body(
        temperature=0,
        max_tokens=12,
        logit_bias=bias,
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "n",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"n": {"type": "integer"}},
                    "required": ["n"],
                    "additionalProperties": False,
                },
            },
        },
    )
    response = await client.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    assert isinstance(json.loads(response.json()["choices"][0]["message"]["content"])["n"], int)


@pytest.mark.parametrize("url", [CHAT, COMPLETIONS])
async def test_logit_bias_rejections_name_the_key(
    client: httpx.AsyncClient, async_engine: AsyncEngine, url: str
) -> None:
    def body(bias: Any) -> dict[str, Any]:
        return chat_body(logit_bias=bias) if url == CHAT else completion_body(logit_bias=bias)

    vocab = async_engine.engine.model_config.vocab_size
    response = await client.post(url, json=body({str(vocab): 1}))
    message = assert_error(response, 400, f'logit_bias["{vocab}"]')
    assert message.startswith(f'logit_bias["{vocab}"]') and "vocabulary" in message
    assert_error(await client.post(url, json=body({"12": 101})), 400, 'logit_bias["12"]')
    assert_error(await client.post(url, json=body({"12": "5"})), 400, 'logit_bias["12"]')
    message = assert_error(await client.post(url, json=body({"abc": 1})), 400, 'logit_bias["abc"]')
    assert "token ids" in message
    assert_error(await client.post(url, json=body({"-3": 1})), 400, 'logit_bias["-3"]')
    too_many = {str(i): 1 for i in range(1025)}
    assert_error(await client.post(url, json=body(too_many)), 400, "logit_bias")


async def test_stop_token_ids_min_tokens_and_ignore_eos(
    client: httpx.AsyncClient, async_engine: AsyncEngine
) -> None:
    free = await client.post(COMPLETIONS, json=completion_body(max_tokens=8, ignore_eos=True))
    assert free.status_code == 200, free.text
    assert free.json()["usage"]["completion_tokens"] == 8
    # A token pushed to the top by logit_bias and named as a stop token ends the answer...
    word = async_engine.engine.tokenizer.tokenizer.token_to_id("return")
    pushed = completion_body(max_tokens=8, logit_bias={str(word): 100}, stop_token_ids=[word])
    response = (await client.post(COMPLETIONS, json=pushed)).json()
    choice = response["choices"][0]
    assert (choice["finish_reason"], response["usage"]["completion_tokens"]) == ("stop", 1)
    # As in vLLM, a stop token id that is not a special token stays in the text.
    assert choice["text"] == "return"
    # ... except while min_tokens holds it back.
    held = (await client.post(COMPLETIONS, json={**pushed, "min_tokens": 4})).json()
    assert held["usage"]["completion_tokens"] == 5
    assert held["choices"][0]["finish_reason"] == "stop"
    for url, body, param in [
        (COMPLETIONS, completion_body(min_tokens=9, max_tokens=8), "min_tokens"),
        (CHAT, chat_body(min_tokens=1, response_format={"type": "json_object"}), "min_tokens"),
        (COMPLETIONS, completion_body(stop_token_ids=[10**6]), "stop_token_ids[0]"),
        (COMPLETIONS, completion_body(stop_token_ids=[-1]), "stop_token_ids[0]"),
        (CHAT, chat_body(ignore_eos="yes"), "ignore_eos"),
    ]:
        assert_error(await client.post(url, json=body), 400, param)


async def test_include_stop_str_and_skip_special_tokens(
    client: httpx.AsyncClient, async_engine: AsyncEngine
) -> None:
    free = await client.post(COMPLETIONS, json=completion_body(max_tokens=8, ignore_eos=True))
    text = free.json()["choices"][0]["text"]
    stop = text[2:5]
    assert stop.strip(), "pick a visible stop string"
    body = completion_body(max_tokens=8, ignore_eos=True, stop=[stop])
    cut = (await client.post(COMPLETIONS, json=body)).json()["choices"][0]["text"]
    kept = (
        await client.post(COMPLETIONS, json={**body, "include_stop_str_in_output": True})
    ).json()["choices"][0]["text"]
    assert cut == text[: text.index(stop)] and kept == cut + stop
    # A special token pushed by logit_bias shows only when skip_special_tokens is false.
    im_end = async_engine.engine.tokenizer.tokenizer.token_to_id("<|im_end|>")
    special = completion_body(max_tokens=2, ignore_eos=True, logit_bias={str(im_end): 100})
    skipped = (await client.post(COMPLETIONS, json=special)).json()["choices"][0]["text"]
    shown = (await client.post(COMPLETIONS, json={**special, "skip_special_tokens": False})).json()[
        "choices"
    ][0]["text"]
    assert skipped == "" and shown == "<|im_end|><|im_end|>"
