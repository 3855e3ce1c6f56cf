"""A prompt far longer than the context is refused from its length, before tokenizing."""

from __future__ import annotations

import time

import httpx

from tests.api.conftest import MODEL, assert_error


async def test_a_16_mib_prompt_is_refused_at_once(client: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "prompt": "a" * (16 << 20), "max_tokens": 1}
    start = time.monotonic()
    response = await client.post("/v1/completions", json=body)
    # Tokenizing it took a minute on a loaded 2-core machine before its 400 came.
    assert "characters" in assert_error(response, 400, "prompt")
    assert time.monotonic() - start < 10
