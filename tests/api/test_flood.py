"""`--max-waiting` is checked before any media work: with every place taken by requests
still fetching their images, the next request gets 429 before anything is fetched."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.api.conftest import assert_error, chat_body, client_for, single_model
from vlmserve.api.app import create_app
from vlmserve.api.server_config import ServerConfig
from vlmserve.engine.async_engine import AsyncEngine

PLACES = 2


async def test_a_flood_gets_429_before_its_media_is_fetched(
    async_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(async_engine, "max_waiting", PLACES)
    lookups: list[str] = []
    release = asyncio.Event()

    async def slow_resolver(host: str, port: int) -> list[Any]:
        lookups.append(host)  # the first step of every fetch
        await release.wait()
        raise OSError(f"{host} does not resolve")

    app = create_app(single_model(async_engine), ServerConfig(), media_resolver=slow_resolver)
    image = [{"type": "image_url", "image_url": {"url": "http://img.example.com/a.png"}}]
    async with client_for(app) as client:
        fetching = [
            asyncio.create_task(client.post("/v1/chat/completions", json=chat_body(image)))
            for _ in range(PLACES)
        ]
        while len(lookups) < PLACES:
            await asyncio.sleep(0.01)
        flood = await client.post("/v1/chat/completions", json=chat_body(image))
        assert_error(flood, 429)
        assert flood.headers["retry-after"] == "1"
        assert len(lookups) == PLACES  # refused before its own fetch began
        release.set()
        for response in await asyncio.gather(*fetching):
            assert_error(response, 400)  # the name did not resolve
        # The places are free again: the engine admits as before.
        assert (await client.post("/v1/chat/completions", json=chat_body())).status_code == 200
