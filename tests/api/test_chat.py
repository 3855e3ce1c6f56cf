"""POST /v1/chat/completions end to end on the tiny model: every field and response shape."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.api.conftest import MODEL, chat_body, png_data_url


def sse_events(text: str) -> list[Any]:
    """Parses an SSE body strictly: every event is one `data: ...` line and a blank line."""
    assert text.endswith("\n\n")
    events = []
    for block in text[:-2].split("\n\n"):
        assert block.startswith("data: ") and "\n" not in block, block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


async def test_basic_shape(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat_body(temperature=0))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == MODEL
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant" and isinstance(
        choice["message"]["content"], str
    )
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_images_in_order_and_uuid_reuse(client: httpx.AsyncClient) -> None:
    content = [
        {"type": "text", "text": "first"},
        {"type": "image_url", "image_url": {"url": png_data_url(), "uuid": "img-red"}},
        {"type": "text", "text": "then"},
        {"type": "image_url", "image_url": {"url": png_data_url(color="blue"), "detail": "auto"}},
    ]
    response = await client.post("/v1/chat/completions", json=chat_body(content, temperature=0))
    assert response.status_code == 200, response.text
    with_images = response.json()["usage"]["prompt_tokens"]
    text_only = await client.post("/v1/chat/completions", json=chat_body("first then"))
    assert with_images > text_only.json()["usage"]["prompt_tokens"] + 2
    # The uuid alone now names the cached image.
    again = [{"type": "image_url", "image_url": {"uuid": "img-red"}}, {"type": "text", "text": "x"}]
    response = await client.post("/v1/chat/completions", json=chat_body(again))
    assert response.status_code == 200, response.text


async def test_n_seed_and_sampling_fields(client: httpx.AsyncClient) -> None:
    body = chat_body(
        n=2,
        temperature=1.0,
        top_p=0.9,
        top_k=50,
        min_p=0.01,
        seed=1234,
        presence_penalty=0.1,
        frequency_penalty=0.1,
        repetition_penalty=1.05,
        user="u-1",
    )
    first = (await client.post("/v1/chat/completions", json=body)).json()
    second = (await client.post("/v1/chat/completions", json=body)).json()
    assert [c["index"] for c in first["choices"]] == [0, 1]
    assert [c["message"] for c in first["choices"]] == [c["message"] for c in second["choices"]]


async def test_max_tokens_and_stop(client: httpx.AsyncClient) -> None:
    body = chat_body(temperature=0, max_completion_tokens=3)
    del body["max_tokens"]
    response = (await client.post("/v1/chat/completions", json=body)).json()
    assert response["usage"]["completion_tokens"] <= 3
    full = (await client.post("/v1/chat/completions", json=chat_body(temperature=0))).json()
    text = full["choices"][0]["message"]["content"]
    if len(text) >= 3:  # stop on a piece of what greedy decoding writes anyway
        stop = text[1:3]
        cut = await client.post("/v1/chat/completions", json=chat_body(temperature=0, stop=[stop]))
        choice = cut.json()["choices"][0]
        assert choice["finish_reason"] == "stop" and stop not in choice["message"]["content"]


async def test_logprobs(client: httpx.AsyncClient) -> None:
    body = chat_body(temperature=0, logprobs=True, top_logprobs=3)
    response = (await client.post("/v1/chat/completions", json=body)).json()
    content = response["choices"][0]["logprobs"]["content"]
    assert len(content) == response["usage"]["completion_tokens"]
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert len(entry["top_logprobs"]) == 3 and entry["logprob"] <= 0
        # Greedy: the chosen token is the most likely one.
        assert entry["logprob"] == pytest.approx(entry["top_logprobs"][0]["logprob"])
    plain = chat_body(temperature=0, logprobs=True)
    entry = (await client.post("/v1/chat/completions", json=plain)).json()
    assert entry["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == []


async def test_stream_matches_non_stream(client: httpx.AsyncClient) -> None:
    body = chat_body(temperature=0, max_tokens=12)
    whole = (await client.post("/v1/chat/completions", json=body)).json()
    response = await client.post("/v1/chat/completions", json={**body, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


async def test_stream_usage_n_and_logprobs(client: httpx.AsyncClient) -> None:
    body = chat_body(
        n=2,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        logprobs=True,
        top_logprobs=2,
    )
    events = sse_events((await client.post("/v1/chat/completions", json=body)).text)
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0
    assert all(c["usage"] is None for c in chunks)
    for index in (0, 1):
        mine = [ch for c in chunks for ch in c["choices"] if ch["index"] == index]
        assert sum(ch["finish_reason"] is not None for ch in mine) == 1
        tokens = [e for ch in mine if ch["logprobs"] for e in ch["logprobs"]["content"]]
        assert all(len(e["top_logprobs"]) == 2 for e in tokens)
    total = sum(
        len(ch["logprobs"]["content"]) for c in chunks for ch in c["choices"] if ch["logprobs"]
    )
    assert total == usage_chunk["usage"]["completion_tokens"]


def _normalized(events: list[Any]) -> list[Any]:
    out = []
    for event in events:
        if event == "[DONE]":
            out.append(event)
            continue
        event = {**event, "id": "ID", "created": 0}
        for choice in event["choices"]:
            if choice["delta"].get("content"):
                choice["delta"]["content"] = "TEXT"
        out.append(event)
    return out


async def test_sse_framing_snapshot(client: httpx.AsyncClient) -> None:
    body = chat_body(
        temperature=0, max_tokens=2, stream=True, stream_options={"include_usage": True}
    )
    response = await client.post("/v1/chat/completions", json=body)
    raw = response.text
    assert raw.startswith('data: {"id":"chatcmpl-') and raw.endswith("\n\ndata: [DONE]\n\n")
    events = _normalized(sse_events(raw))
    usage = events[-2]["usage"]
    expected_first = {
        "id": "ID",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
        "usage": None,
        "system_fingerprint": None,
    }
    assert events[0] == expected_first
    assert events[-2] == {**expected_first, "choices": [], "usage": usage}
    assert set(usage) == {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
    }
    last_choice = events[-3]["choices"][0]
    assert last_choice["finish_reason"] in ("stop", "length")
    assert set(last_choice) == {"index", "delta", "logprobs", "finish_reason"}
    assert set(last_choice["delta"]) == {"role", "content"}
