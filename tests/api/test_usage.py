"""`usage` on both endpoints, whole and streamed: prompt tokens from the prefix cache
(`cached_tokens`) and from images (`image_tokens`), in the shape OpenAI's SDK reads."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx

from tests.api.conftest import chat_body, png_data_url

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def streamed_usage(text: str) -> dict[str, Any]:
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == []
    return dict(last["usage"])


async def test_chat_usage_counts_image_and_cached_tokens(client: httpx.AsyncClient) -> None:
    # A prompt of its own (a fresh text), so the first request finds nothing in the cache.
    text = f"Describe it, {uuid.uuid4().hex}. " * 4
    content = [{"type": "image_url", "image_url": {"url": png_data_url((448, 448))}}]
    body = chat_body([*content, {"type": "text", "text": text}], temperature=0, max_tokens=2)
    first = (await client.post(CHAT, json=body)).json()["usage"]
    # 448² pixels are 256 tokens after the 2×2 merge; the system turn may be cached already.
    assert first["prompt_tokens_details"]["image_tokens"] == 256
    assert set(first["prompt_tokens_details"]) == {"cached_tokens", "image_tokens"}
    assert first["prompt_tokens"] > 256
    again = await client.post(
        CHAT, json={**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    usage = streamed_usage(again.text)
    assert usage["prompt_tokens"] == first["prompt_tokens"]
    details = usage["prompt_tokens_details"]
    assert details["image_tokens"] == 256
    # Everything but the block holding the last prompt token now comes from the cache.
    assert first["prompt_tokens_details"]["cached_tokens"] < details["cached_tokens"]
    assert details["cached_tokens"] >= first["prompt_tokens"] - 16
    text_only = (await client.post(CHAT, json=chat_body("Hi", max_tokens=1))).json()["usage"]
    assert text_only["prompt_tokens_details"]["image_tokens"] == 0


async def test_completion_usage_details(client: httpx.AsyncClient) -> None:
    body = {
        "model": "tiny",
        "prompt": f"def f_{uuid.uuid4().hex}(x):\n    return x" * 4,
        "max_tokens": 2,
    }
    first = (await client.post(COMPLETIONS, json=body)).json()["usage"]
    assert first["prompt_tokens_details"] == {"cached_tokens": 0, "image_tokens": 0}
    streamed = await client.post(
        COMPLETIONS, json={**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    usage = streamed_usage(streamed.text)
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert 0 < cached < usage["prompt_tokens"] and cached % 16 == 0
