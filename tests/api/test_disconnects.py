"""A client that leaves is noticed at every stage, not only while tokens stream: queued
behind other requests, before its first token, during decoding. Its request is aborted in
the engine within a second. And a body that never finishes arriving is cut off (408)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import chat_body, client_for, http_scope, make_app
from tests.api.test_lifecycle import LONG
from vlmserve.config import EngineConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.engine.engine import build_engine


@pytest.fixture
async def one_slot_engine(tiny_qwen2_vl: Path) -> AsyncIterator[AsyncEngine]:
    """An engine that runs one sequence at a time: a second request waits in its queue."""
    config = EngineConfig(
        model=str(tiny_qwen2_vl),
        max_model_len=1024,
        max_num_seqs=1,
        kv_cache_memory_bytes=16 * 1024 * 1024,
    )
    engine = AsyncEngine(await asyncio.to_thread(build_engine, config)).start()
    yield engine
    await asyncio.to_thread(engine.close)


async def wait_until(condition: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_queued_request_is_aborted_when_its_client_leaves(
    one_slot_engine: AsyncEngine, stream: bool
) -> None:
    engine = one_slot_engine.engine
    app = make_app(one_slot_engine)
    async with client_for(app) as client:
        # The only slot is taken by a long request...
        busy = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body(**LONG)))
        await wait_until(lambda: len(engine.scheduler.running) == 1)
        # ...so this one waits in the queue, and its client leaves before its first token.
        payload = json.dumps(chat_body(stream=stream, max_tokens=4)).encode()
        gone = asyncio.Event()
        sent: list[dict[str, Any]] = []
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

        handler = asyncio.create_task(
            app(http_scope("/v1/chat/completions", payload), receive, send)
        )
        await wait_until(lambda: len(engine.scheduler.waiting) == 1)
        left_at = time.monotonic()
        gone.set()
        await asyncio.wait_for(handler, timeout=5)
        await wait_until(lambda: not engine.scheduler.waiting, timeout=5)
        assert time.monotonic() - left_at < 1.0
        assert not any(m["type"] == "http.response.body" and m.get("body") for m in sent)
        assert len(engine.requests) == 1  # the busy request goes on
        busy.cancel()
        await asyncio.gather(busy, return_exceptions=True)
    await wait_until(lambda: not engine.requests)


async def test_a_trickled_body_is_cut_off(one_slot_engine: AsyncEngine) -> None:
    app = make_app(one_slot_engine, body_read_timeout=0.3)
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b'{"model": ', "more_body": True}
        await asyncio.sleep(3600)  # the rest never comes
        raise AssertionError("unreachable")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    started = time.monotonic()
    await asyncio.wait_for(
        app(http_scope("/v1/chat/completions", b"x" * 100), receive, send), timeout=10
    )
    assert time.monotonic() - started < 5
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert body["error"]["code"] == "request_timeout"
