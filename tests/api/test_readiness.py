"""/ready means "this server can answer now": 503 while the start-up model loads and until its
warm-up generation has produced a token (the port is open and /health answers all along),
503 for good when the warm-up fails. (An engine that stops making progress: test_watchdog.py;
draining: test_shutdown.py.)"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import client_for, offline_resolver
from vlmserve.api.app import create_app
from vlmserve.api.server_config import ServerConfig
from vlmserve.config import EngineConfig, RegistryConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.registry import LocalEngineHost, ModelRegistry, ModelSpec
from vlmserve.registry import host as host_module

BOUND_S = 120  # far beyond any wait on a loaded 2-core machine


class GatedWarmUp:
    """The host's warm-up generation, held until `release()`; `started` once the engine
    is built and running (weights loaded, KV cache allocated)."""

    def __init__(self, fail: bool = False) -> None:
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.done = False
        self.fail = fail
        self.real = host_module._warm_up

    async def __call__(self, engine: AsyncEngine) -> None:
        assert engine.alive
        self.started.set()
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("the warm-up generation failed: injected")
        await self.real(engine)
        self.done = True


@pytest.fixture
async def server(
    tiny_qwen2_vl: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, GatedWarmUp, ModelRegistry]]:
    warm_up = GatedWarmUp(fail=getattr(request, "param", False))
    monkeypatch.setattr(host_module, "_warm_up", warm_up)
    host = LocalEngineHost(EngineConfig("unset", kv_cache_memory_bytes=8 << 20))
    models = ModelRegistry(host=host, config=RegistryConfig(tick=0.05))
    try:
        await models.start([ModelSpec("tiny", str(tiny_qwen2_vl), max_model_len=256)])
        app = create_app(models, ServerConfig(), media_resolver=offline_resolver)
        async with client_for(app) as client:
            yield client, warm_up, models
    finally:
        warm_up.gate.set()
        await asyncio.wait_for(models.close(drain_timeout=5), BOUND_S)
        host.close()


async def until_status(client: httpx.AsyncClient, status: int) -> httpx.Response:
    deadline = time.monotonic() + BOUND_S
    while (response := await client.get("/ready")).status_code != status:
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.05)
    return response


async def test_ready_only_once_the_warm_up_generation_succeeded(
    server: tuple[httpx.AsyncClient, GatedWarmUp, ModelRegistry],
) -> None:
    client, warm_up, _ = server
    await asyncio.wait_for(warm_up.started.wait(), BOUND_S)
    # Loaded and running, not yet proven to generate: not ready, though alive.
    for _ in range(5):
        response = await client.get("/ready")
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "not_ready"
        assert "model 'tiny' is loading" in response.json()["error"]["message"]
        assert (await client.get("/health")).status_code == 200
        await asyncio.sleep(0.05)
    warm_up.gate.set()
    await until_status(client, 200)
    assert warm_up.done  # 200 came after a token was generated, never before


@pytest.mark.parametrize("server", [True], indirect=True)
async def test_a_failed_warm_up_is_never_ready(
    server: tuple[httpx.AsyncClient, GatedWarmUp, ModelRegistry],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, "vlmserve.registry")
    client, warm_up, models = server
    await asyncio.wait_for(warm_up.started.wait(), BOUND_S)
    warm_up.gate.set()
    with pytest.raises(RuntimeError, match="injected"):
        await asyncio.wait_for(models.wait_for_startup(), BOUND_S)
    response = await client.get("/ready")
    assert response.status_code == 503
    assert "model 'tiny' failed to load" in response.json()["error"]["message"]
    assert "warm-up generation failed" in response.json()["error"]["message"]
    # The process exits with this error: the log announces no later load.
    (failure,) = [r.getMessage() for r in caplog.records if "failure 1" in r.getMessage()]
    assert failure.endswith("; the server cannot start without it"), failure
