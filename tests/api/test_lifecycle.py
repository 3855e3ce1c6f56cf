"""Client disconnects abort the request and free its KV blocks; many streams at once."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from fastapi import FastAPI

from tests.api.conftest import chat_body, http_scope
from tests.api.test_chat import sse_events
from vlmserve.engine.async_engine import AsyncEngine


async def wait_for_free_blocks(engine: AsyncEngine, expected: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    manager = engine.engine.block_manager
    while manager.num_free_blocks != expected or engine.engine.requests:
        assert time.monotonic() < deadline, (manager.num_free_blocks, expected)
        await asyncio.sleep(0.01)


async def call_and_disconnect(
    app: FastAPI, body: dict[str, Any], after_s: float | None, path: str = "/v1/chat/completions"
) -> list[Any]:
    """Drives the ASGI app by hand: the client hangs up after the first body chunk
    (`after_s` None) or `after_s` seconds into the request. Returns what was sent."""
    payload = json.dumps(body).encode()
    gone = asyncio.Event()
    sent: list[Any] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if after_s is None and message.get("body"):
            gone.set()

    scope = http_scope(path, payload)
    if after_s is not None:
        asyncio.get_running_loop().call_later(after_s, gone.set)
    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    return sent


LONG = {"temperature": 0, "max_tokens": 900, "stop": None}


async def test_stream_disconnect_frees_blocks(app: FastAPI, async_engine: AsyncEngine) -> None:
    initial = async_engine.engine.block_manager.num_free_blocks
    sent = await call_and_disconnect(app, chat_body(stream=True, **LONG), after_s=None)
    bodies = b"".join(m.get("body", b"") for m in sent)
    assert b"[DONE]" not in bodies  # it really was cut short
    await wait_for_free_blocks(async_engine, initial)


async def test_non_stream_disconnect_frees_blocks(app: FastAPI, async_engine: AsyncEngine) -> None:
    initial = async_engine.engine.block_manager.num_free_blocks
    sent = await call_and_disconnect(app, chat_body(**LONG), after_s=0.05)
    assert sent == []  # left before the answer: the handler was stopped, nothing answered
    metrics = app.state.vlm.metrics.requests
    assert metrics.labels("/v1/chat/completions", "499")._value.get() == 1
    await wait_for_free_blocks(async_engine, initial)


async def test_disconnect_aborts_every_prompt_of_a_completion(
    app: FastAPI, async_engine: AsyncEngine
) -> None:
    initial = async_engine.engine.block_manager.num_free_blocks
    body = {"model": "tiny", "prompt": ["a", "b", "c"], "n": 2, **LONG}
    for stream, after_s in ((True, None), (False, 0.05)):
        sent = await call_and_disconnect(
            app, {**body, "stream": stream}, after_s, path="/v1/completions"
        )
        if stream:
            assert b"[DONE]" not in b"".join(m.get("body", b"") for m in sent)
        else:  # left before the answer: nothing answered, counted as 499
            assert sent == []
            metrics = app.state.vlm.metrics.requests
            assert metrics.labels("/v1/completions", "499")._value.get() == 1
        await wait_for_free_blocks(async_engine, initial)


async def test_64_concurrent_streams(client: httpx.AsyncClient, async_engine: AsyncEngine) -> None:
    initial = async_engine.engine.block_manager.num_free_blocks

    async def one(i: int) -> list[Any]:
        body = chat_body(
            f"request {i}",
            stream=True,
            max_tokens=16,
            seed=i,
            stream_options={"include_usage": True},
        )
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return sse_events(response.text)

    results = await asyncio.gather(*(one(i) for i in range(64)))
    for events in results:
        assert events[-1] == "[DONE]"
        assert events[-2]["usage"]["completion_tokens"] >= 1
    await wait_for_free_blocks(async_engine, initial)


async def test_disconnect_before_the_stream_starts_frees_blocks(
    app: FastAPI, async_engine: AsyncEngine
) -> None:
    initial = async_engine.engine.block_manager.num_free_blocks
    await call_and_disconnect(app, chat_body(stream=True, **LONG), after_s=0.0)
    await wait_for_free_blocks(async_engine, initial, timeout=2)
