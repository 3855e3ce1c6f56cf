"""The HTTP API over the registry: engine metrics per model, and what clients see when the
models are closed under them (an in-band error ending a stream, 503s after), with nothing
in the app keeping a closed engine alive."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.api.conftest import MODEL, assert_error, chat_body, client_for, offline_resolver
from tests.api.test_lifecycle import LONG, call_and_disconnect, wait_for_free_blocks
from vlmserve.api.app import create_app
from vlmserve.config import EngineConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.engine.engine import build_engine
from vlmserve.registry import ModelHandle, ModelInfo, ModelRegistry

CHAT = "/v1/chat/completions"


async def test_engine_metrics_carry_the_model_label(client: httpx.AsyncClient) -> None:
    text = (await client.get("/metrics")).text
    for name in ("vlmserve_num_requests_running", "vlmserve_prefix_cache_hits_total"):
        assert f'{name}{{model="{MODEL}"}}' in text, name


async def test_closing_the_models_ends_open_streams_and_refuses_new_requests(
    tiny_qwen2_vl: Path,
) -> None:
    engine = AsyncEngine(build_engine(EngineConfig(str(tiny_qwen2_vl), max_model_len=1024)))
    models = ModelRegistry(
        [ModelHandle(ModelInfo.from_engine(engine.engine, MODEL), engine.start())]
    )
    app = create_app(models, media_resolver=offline_resolver)
    async with client_for(app) as client:
        body = chat_body(stream=True, temperature=0, max_tokens=900, stop=None)
        streaming = asyncio.create_task(client.post(CHAT, json=body))
        while not engine.engine.requests:
            await asyncio.sleep(0.01)
        await models.close(drain_timeout=0.05)
        response = await asyncio.wait_for(streaming, 60)
        assert response.status_code == 200  # the status line went out with the first chunk
        events = response.text.strip().split("\n\n")
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2].removeprefix("data: "))["error"]
        assert error["type"] == "service_unavailable" and error["code"] == "engine_closed"

        refused = await client.post(CHAT, json=chat_body())
        assert_error(refused, 503, "model")
        assert refused.json()["error"]["code"] == "model_unavailable"
        assert refused.headers["retry-after"].isdigit()
        assert_error(await client.get("/ready"), 503)
        assert (await client.get("/v1/models")).json()["data"][0]["id"] == MODEL
        metrics = (await client.get("/metrics")).text
        assert "vlmserve_num_requests_running{" not in metrics  # no engine behind it now
    ref = weakref.ref(engine)
    del engine, streaming
    gc.collect()
    assert ref() is None, "the app (metrics, state) keeps the closed engine alive"


@pytest.mark.parametrize(
    ("stream", "after_s"),
    [(True, None), (True, 0.0), (False, 0.05), (True, 10.0)],
    ids=["stream-cut", "stream-never-started", "whole-cut", "stream-finished"],
)
async def test_every_request_returns_its_model(
    app: FastAPI, async_engine: AsyncEngine, stream: bool, after_s: float | None
) -> None:
    """However a request ends, the registry sees it end: in flight goes back to 0."""
    params = {"max_tokens": 4} if after_s == 10.0 else LONG
    await call_and_disconnect(app, chat_body(stream=stream, **params), after_s=after_s)
    models = app.state.vlm.models
    for _ in range(500):
        if models.status(MODEL).in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert models.status(MODEL).in_flight == 0
    await wait_for_free_blocks(async_engine, async_engine.engine.block_manager.num_blocks - 1)
