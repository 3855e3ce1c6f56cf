"""`image_url.detail`: low is a small pixel budget, high the model's, auto the server's default
(the model's); the budget changes the image's token count and is part of its cache key."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.api.conftest import assert_error, chat_body, png_data_url
from vlmserve.multimodal.processor import LOW_DETAIL_MAX_PIXELS

CHAT = "/v1/chat/completions"
SIZE = (672, 672)  # 576 image tokens at the model's budget; over the low budget


def image(url: str | None = None, detail: str | None = None, name: str | None = None) -> Any:
    body: dict[str, Any] = {}
    if url is not None:
        body["url"] = url
    if detail is not None:
        body["detail"] = detail
    if name is not None:
        body["uuid"] = name
    return [{"type": "image_url", "image_url": body}, {"type": "text", "text": "What is it?"}]


async def prompt_tokens(client: httpx.AsyncClient, content: Any) -> int:
    response = await client.post(CHAT, json=chat_body(content, max_tokens=1))
    assert response.status_code == 200, response.text
    return int(response.json()["usage"]["prompt_tokens"])


async def test_detail_sets_the_pixel_budget(client: httpx.AsyncClient) -> None:
    url = png_data_url(SIZE, "green")
    default = await prompt_tokens(client, image(url))
    assert await prompt_tokens(client, image(url, "auto")) == default
    assert await prompt_tokens(client, image(url, "high")) == default
    low = await prompt_tokens(client, image(url, "low"))
    # 672² px is 576 tokens of 28² px; the low budget (448² px) leaves 256.
    assert LOW_DETAIL_MAX_PIXELS == 448 * 448
    assert default - low == 576 - 256
    # An image already under the low budget is not resized by it.
    small = png_data_url((56, 56), "green")
    assert await prompt_tokens(client, image(small, "low")) == await prompt_tokens(
        client, image(small)
    )


async def test_detail_is_part_of_the_cache_key(client: httpx.AsyncClient) -> None:
    url = png_data_url(SIZE, "purple")
    name = f"detail-{uuid.uuid4().hex}"
    low = await prompt_tokens(client, image(url, "low", name))
    # The uuid names the low-budget embeddings only: at full detail it is not cached yet.
    response = await client.post(CHAT, json=chat_body(image(None, "high", name), max_tokens=1))
    assert "not in the media cache" in assert_error(response, 400)
    assert await prompt_tokens(client, image(None, "low", name)) == low
    high = await prompt_tokens(client, image(url, "high", name))
    assert high - low == 576 - 256
    # Both budgets are now cached under the one uuid, each with its own embeddings.
    assert await prompt_tokens(client, image(None, None, name)) == high
    assert await prompt_tokens(client, image(None, "low", name)) == low


async def test_unknown_detail_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=chat_body(image(png_data_url(), "medium")))
    message = assert_error(response, 400, "messages[0].content[0].image_url.detail")
    assert "'auto', 'low' or 'high'" in message
