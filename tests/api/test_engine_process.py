"""The HTTP API over engines in their own processes (`--engine-process`): answers, streams,
images, structured outputs and engine metrics as in-process; an engine process killed by
PID ends the request in flight with a 503 naming the kill, and /ready answers 503."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import (
    MODEL,
    assert_error,
    chat_body,
    client_for,
    offline_resolver,
    png_data_url,
)
from vlmserve.api.app import create_app
from vlmserve.api.server_config import ServerConfig
from vlmserve.config import EngineConfig, RegistryConfig
from vlmserve.engine.process import ProcessEngine
from vlmserve.registry import ModelRegistry, ModelSpec, ProcessEngineHost

BOUND_S = 120  # far beyond any wait on a loaded 2-core machine
WATCHDOG_S = 2.0  # an idle engine process reports every second: never a stall by itself


@pytest.fixture
async def served(
    tiny_qwen2_vl: Path,
) -> AsyncIterator[tuple[httpx.AsyncClient, ModelRegistry]]:
    host = ProcessEngineHost(EngineConfig("unset", kv_cache_memory_bytes=16 << 20))
    # No reload of a dead engine within the test: its failure stays visible.
    config = RegistryConfig(tick=0.05, failure_backoff=600, failure_backoff_max=600)
    models = ModelRegistry(host=host, config=config)
    try:
        await models.start([ModelSpec(MODEL, str(tiny_qwen2_vl), max_model_len=512)])
        await asyncio.wait_for(models.wait_for_startup(), BOUND_S)
        config = ServerConfig(watchdog_seconds=WATCHDOG_S)
        app = create_app(models, config, media_resolver=offline_resolver)
        async with client_for(app) as client:
            yield client, models
    finally:
        await asyncio.wait_for(models.close(drain_timeout=5), BOUND_S)
        host.close()


def engine_of(models: ModelRegistry) -> ProcessEngine:
    [entry] = models._entries.values()
    assert entry.current is not None
    engine = entry.current.handle.engine
    assert isinstance(engine, ProcessEngine)
    return engine


async def test_answers_streams_and_metrics_come_through_the_engine_process(
    served: tuple[httpx.AsyncClient, ModelRegistry],
) -> None:
    client, models = served
    engine = engine_of(models)
    assert engine.pid != os.getpid()
    content = [
        {"type": "image_url", "image_url": {"url": png_data_url()}},
        {"type": "text", "text": "what is this?"},
    ]
    answer = await client.post("/v1/chat/completions", json=chat_body(content, max_tokens=6))
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] >= 1
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    constrained = await client.post(
        "/v1/chat/completions",
        json=chat_body(
            max_tokens=20,
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        ),
    )
    assert constrained.status_code == 200, constrained.text
    assert isinstance(
        json.loads(constrained.json()["choices"][0]["message"]["content"])["ok"], bool
    )
    streamed = await client.post("/v1/chat/completions", json=chat_body(stream=True, max_tokens=6))
    events = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) >= 3
    bad = await client.post("/v1/chat/completions", json=chat_body(max_tokens=100_000))
    assert_error(bad, 400, "max_tokens")
    metrics = (await client.get("/metrics")).text
    assert f'vlmserve_prefix_cache_queries_total{{model="{MODEL}"}}' in metrics
    assert f'vlmserve_mm_cache_misses_total{{model="{MODEL}"}} 1.0' in metrics
    assert await asyncio.to_thread(engine.leaks) == []


async def test_a_stopped_engine_process_is_a_stall_the_watchdog_reports(
    served: tuple[httpx.AsyncClient, ModelRegistry],
) -> None:
    client, models = served
    engine = engine_of(models)
    await asyncio.sleep(WATCHDOG_S * 1.5)  # idle for longer than the threshold: still ready
    assert (await client.get("/ready")).status_code == 200
    body = chat_body(max_tokens=200, ignore_eos=True)
    in_flight = asyncio.ensure_future(client.post("/v1/chat/completions", json=body))
    deadline = time.monotonic() + BOUND_S
    while engine.stats().num_running == 0:
        assert time.monotonic() < deadline and not in_flight.done()
        await asyncio.sleep(0.01)
    assert engine.pid is not None
    os.kill(engine.pid, signal.SIGSTOP)  # a step that never ends, as far as anyone can see
    try:
        while (stuck := await client.get("/ready")).status_code != 503:
            assert time.monotonic() < deadline, stuck.text
            await asyncio.sleep(0.05)
        assert stuck.json()["error"]["code"] == "engine_stuck", stuck.text
        assert f"model {MODEL!r}" in stuck.json()["error"]["message"]
        assert (await client.get("/health")).status_code == 200
    finally:
        os.kill(engine.pid, signal.SIGCONT)
    answer = await asyncio.wait_for(in_flight, BOUND_S)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 200
    while (ready := await client.get("/ready")).status_code != 200:
        assert time.monotonic() < deadline, ready.text
        await asyncio.sleep(0.05)


async def test_a_killed_engine_process_fails_its_requests_and_readiness(
    served: tuple[httpx.AsyncClient, ModelRegistry],
) -> None:
    client, models = served
    assert (await client.get("/ready")).status_code == 200
    engine = engine_of(models)
    body = chat_body(max_tokens=400, ignore_eos=True)
    in_flight = asyncio.ensure_future(client.post("/v1/chat/completions", json=body))
    deadline = time.monotonic() + BOUND_S
    while engine.stats().num_running == 0:  # it runs in the engine process
        assert time.monotonic() < deadline and not in_flight.done()
        await asyncio.sleep(0.01)
    assert engine.pid is not None
    os.kill(engine.pid, signal.SIGKILL)
    response = await asyncio.wait_for(in_flight, BOUND_S)
    message = assert_error(response, 503)
    assert "SIGKILL" in message and response.json()["error"]["code"] == "engine_dead"
    while (ready := await client.get("/ready")).status_code != 503:
        assert time.monotonic() < deadline, ready.text
        await asyncio.sleep(0.05)
    later = await client.post("/v1/chat/completions", json=chat_body())
    assert later.status_code == 503, later.text
