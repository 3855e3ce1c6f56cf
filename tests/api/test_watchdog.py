"""The engine-progress watchdog: /ready turns 503 while an engine holds requests and no step
completes, says what is stuck (in the body and in an error log), and turns 200 again once
the engine moves."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import httpx
import pytest

from tests.api.conftest import MODEL, assert_error, chat_body, client_for, make_app
from vlmserve.engine.async_engine import AsyncEngine

THRESHOLD_S = 0.5


async def wait_for_status(client: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    deadline = time.monotonic() + 20
    while True:
        response = await client.get(path)
        if response.status_code == status:
            return response
        assert time.monotonic() < deadline, (response.status_code, response.text)
        await asyncio.sleep(0.05)


async def test_ready_is_503_while_a_step_hangs_with_work_queued(
    async_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    step = async_engine.engine.step

    def hanging_step() -> Any:
        release.wait(30)  # the engine thread is stuck here, as in a wedged kernel
        return step()

    caplog.set_level(logging.WARNING, "vlmserve.watchdog")
    async with client_for(make_app(async_engine, watchdog_seconds=THRESHOLD_S)) as client:
        await asyncio.sleep(THRESHOLD_S * 2)  # an idle engine is never stuck, however long
        assert (await client.get("/ready")).status_code == 200
        monkeypatch.setattr(async_engine.engine, "step", hanging_step)
        request = asyncio.create_task(
            client.post("/v1/chat/completions", json=chat_body(max_tokens=2))
        )
        try:
            stuck = await wait_for_status(client, "/ready", 503)
            message = assert_error(stuck, 503)
            assert stuck.json()["error"]["code"] == "engine_stuck"
            assert f"model {MODEL!r}" in message and "1 waiting" in message, message
            assert (await client.get("/health")).status_code == 200
            errors = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert len(errors) == 1 and "engine stuck" in errors[0].getMessage()
            assert "--watchdog-seconds 0.5" in errors[0].getMessage()
            await client.get("/ready")  # logged once per stall, not once per probe
            assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
        finally:
            release.set()
        assert (await request).status_code == 200
        await wait_for_status(client, "/ready", 200)
        assert "makes progress again" in caplog.text


async def test_a_busy_engine_is_not_stuck(async_engine: AsyncEngine) -> None:
    """Steps that keep completing are progress, however long the request takes."""
    async with client_for(make_app(async_engine, watchdog_seconds=THRESHOLD_S)) as client:
        body = chat_body(max_tokens=400, temperature=0, stop=None)
        request = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        seen = []
        while not request.done():
            seen.append((await client.get("/ready")).status_code)
            await asyncio.sleep(0.05)
        assert (await request).status_code == 200
        assert seen and set(seen) == {200}


async def test_watchdog_off(async_engine: AsyncEngine) -> None:
    app = make_app(async_engine, watchdog_seconds=0)
    assert app.state.watchdog.check() == []
    with pytest.raises(ValueError, match="watchdog_seconds"):
        make_app(async_engine, watchdog_seconds=-1)
