"""Several tiny models behind one server, loaded on demand by the real engine host (a delay
in front of it where timing matters): single flight, bounded waiting, eviction that never
cuts a request, alias re-pointing, and streams that end with an error event however the
engine goes away."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import assert_error, client_for, offline_resolver
from vlmserve.api.app import create_app
from vlmserve.api.server_config import ServerConfig
from vlmserve.config import EngineConfig, RegistryConfig
from vlmserve.registry import Loaded, LocalEngineHost, ModelHandle, ModelRegistry, ModelSpec

ADMIN = {"Authorization": "Bearer admin-key"}
BOUND_S = 120  # far beyond any wait here on a loaded 2-core machine, far below "hangs"


@dataclass
class DelayedHost:
    """The real host, with a delay before chosen loads (a slow disk, a big model)."""

    inner: LocalEngineHost
    delays: dict[str, float] = field(default_factory=dict)
    loads: list[str] = field(default_factory=list)

    async def load(self, spec: ModelSpec) -> Loaded:
        self.loads.append(spec.alias)
        await asyncio.sleep(self.delays.get(spec.alias, 0.0))
        return await self.inner.load(spec)

    async def unload(self, handle: ModelHandle) -> None:
        await self.inner.unload(handle)


@dataclass
class Server:
    client: httpx.AsyncClient
    host: DelayedHost
    models: ModelRegistry

    async def register(self, alias: str, folder: Path, **fields: Any) -> None:
        body = {"alias": alias, "model_name": str(folder), "max_model_len": 256, **fields}
        response = await self.client.post("/v1/models/register", json=body, headers=ADMIN)
        assert response.status_code == 201, response.text

    async def complete(self, model: str, max_tokens: int = 4, **fields: Any) -> httpx.Response:
        body = {"model": model, "prompt": "Hello there", "max_tokens": max_tokens, **fields}
        return await self.client.post("/v1/completions", json=body)

    async def card(self, alias: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/models/{alias}", headers=ADMIN)
        return dict(response.json())


Start = Callable[..., Any]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    made: list[tuple[ModelRegistry, LocalEngineHost, httpx.AsyncClient]] = []

    async def make(delays: dict[str, float] | None = None, **config: Any) -> Server:
        defaults = EngineConfig("unset", kv_cache_memory_bytes=8 << 20)
        inner = LocalEngineHost(defaults)
        host = DelayedHost(inner, delays or {})
        registry_config = RegistryConfig(**{"tick": 0.05, **config})
        models = ModelRegistry(host=host, config=registry_config)
        await models.start()
        server_config = ServerConfig(admin_api_key="admin-key")
        app = create_app(models, server_config, media_resolver=offline_resolver)
        client = client_for(app)
        made.append((models, inner, client))
        return Server(client, host, models)

    yield make
    for models, inner, client in made:
        await client.aclose()
        await asyncio.wait_for(models.close(drain_timeout=5), BOUND_S)
        inner.close()


async def test_twenty_first_requests_load_once_and_all_succeed(
    start: Start, tiny_qwen2_vl: Path
) -> None:
    server = await start()
    await server.register("a", tiny_qwen2_vl, max_model_len=128, gpu_memory_utilization=0.5)
    responses = await asyncio.gather(*(server.complete("a") for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert server.host.loads == ["a"]
    card = await server.card("a")
    assert card["state"] == "ready" and card["memory_bytes"] > 8 << 20 and card["in_flight"] == 0


async def test_a_model_that_loads_does_not_slow_a_loaded_one(
    start: Start, tiny_qwen2_vl: Path, tiny_qwen2_5_vl: Path
) -> None:
    server = await start(delays={"a": 5.0})
    await server.register("a", tiny_qwen2_vl)
    await server.register("b", tiny_qwen2_5_vl)
    assert (await server.complete("b")).status_code == 200

    async def latencies() -> list[float]:
        seconds = []
        for _ in range(5):
            begin = time.monotonic()
            assert (await server.complete("b")).status_code == 200
            seconds.append(time.monotonic() - begin)
        return seconds

    before = statistics.median(await latencies())
    loading = asyncio.create_task(server.complete("a"))
    while (await server.card("a"))["state"] != "loading":
        await asyncio.sleep(0.01)
    during = statistics.median(await latencies())
    assert (await server.card("a"))["state"] == "loading"  # all measured while a loaded
    assert during < 2 * before + 0.5, (before, during)
    assert (await asyncio.wait_for(loading, BOUND_S)).status_code == 200


async def test_a_load_timeout_and_a_full_queue_are_503_with_retry_after(
    start: Start, tiny_qwen2_vl: Path
) -> None:
    server = await start(delays={"a": 3.0}, load_timeout=0.5, max_waiting=2)
    await server.register("a", tiny_qwen2_vl)
    streaming = asyncio.create_task(server.complete("a", stream=True))
    plain = asyncio.create_task(server.complete("a"))
    while server.models.status("a").waiting < 2:
        await asyncio.sleep(0.01)
    overflow = await server.complete("a")
    assert "2 requests already wait for it (--max-waiting 2)" in assert_error(overflow, 503)
    for response in (await streaming, await plain):
        message = assert_error(response, 503, "model")
        assert "'a' is loading, not ready: not ready within --load-timeout 0.5 s" in message
        assert int(response.headers["retry-after"]) >= 1
        # A stream still waiting had sent nothing: a plain JSON error, no event stream.
        assert response.headers["content-type"] == "application/json"
    assert overflow.headers["retry-after"].isdigit()
    assert server.host.loads == ["a"]


async def test_a_b_a_a_c_loads_three_times(
    start: Start, tiny_qwen2_vl: Path, tiny_qwen2_5_vl: Path
) -> None:
    server = await start(max_loaded_models=2)
    for alias, folder in (("a", tiny_qwen2_vl), ("b", tiny_qwen2_5_vl), ("c", tiny_qwen2_vl)):
        await server.register(alias, folder)
    for alias in "abaac":
        assert (await server.complete(alias)).status_code == 200
    assert server.host.loads == ["a", "b", "c"]
    states = {m["id"]: m["state"] for m in (await server.client.get("/v1/models")).json()["data"]}
    assert states == {"a": "ready", "b": "registered", "c": "ready"}


async def test_one_model_at_a_time_under_continuous_traffic(
    start: Start, tiny_qwen2_vl: Path, tiny_qwen2_5_vl: Path
) -> None:
    """--max-loaded-models 1, continuous traffic to A, requests to B: every A request
    completes, every B request is served or refused in bounded time, nothing hangs."""
    server = await start(max_loaded_models=1, load_timeout=30, drain_timeout=30)
    await server.register("a", tiny_qwen2_vl)
    await server.register("b", tiny_qwen2_5_vl)
    assert (await server.complete("a")).status_code == 200
    stop = asyncio.Event()

    async def a_client() -> list[int]:
        statuses = []
        for _ in range(500):
            if stop.is_set():
                break
            statuses.append((await server.complete("a", max_tokens=8)).status_code)
        return statuses

    clients = [asyncio.create_task(a_client()) for _ in range(2)]
    b_outcomes = []
    for _ in range(2):
        begin = time.monotonic()
        response = await asyncio.wait_for(server.complete("b"), BOUND_S)
        b_outcomes.append((response.status_code, time.monotonic() - begin))
    stop.set()
    a_statuses = await asyncio.wait_for(asyncio.gather(*clients), BOUND_S)
    assert all(status == 200 for statuses in a_statuses for status in statuses)
    assert all(status in (200, 503) and seconds < 35 for status, seconds in b_outcomes)
    assert min(map(len, a_statuses)) >= 2


async def test_re_pointing_an_alias_fails_no_request(
    start: Start, tiny_qwen2_vl: Path, tiny_qwen2_5_vl: Path
) -> None:
    server = await start()
    await server.register("a", tiny_qwen2_vl)
    assert (await server.complete("a")).status_code == 200
    statuses: list[int] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        for _ in range(1000):
            if stop.is_set():
                return
            statuses.append((await server.complete("a", stream=len(statuses) % 2 == 0)).status_code)

    clients = [asyncio.create_task(traffic()) for _ in range(3)]
    change = {"model_name": str(tiny_qwen2_5_vl), "expected_revision": 1, "wait": True}
    replaced = await server.client.put("/v1/models/a", json=change, headers=ADMIN)
    assert replaced.status_code == 200, replaced.text
    card = replaced.json()
    assert (card["revision"], card["loaded_revision"], card["state"]) == (2, 2, "ready")
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*clients), BOUND_S)
    assert statuses and set(statuses) == {200}
    assert server.host.loads == ["a", "a"]


async def test_a_failed_new_version_leaves_the_old_one_serving(
    start: Start, tiny_qwen2_vl: Path
) -> None:
    server = await start()
    await server.register("a", tiny_qwen2_vl)
    assert (await server.complete("a")).status_code == 200
    change = {"model_name": "/nonexistent/model", "expected_revision": 1, "wait": True}
    replaced = await server.client.put("/v1/models/a", json=change, headers=ADMIN)
    card = replaced.json()
    assert (card["state"], card["revision"], card["loaded_revision"]) == ("ready", 2, 1)
    assert "revision 2 failed to load" in card["last_error"]
    assert "revision 1 keeps serving" in card["last_error"]
    assert (await server.complete("a")).status_code == 200


def stream_events(text: str) -> list[str]:
    return [event.removeprefix("data: ") for event in text.strip().split("\n\n")]


async def test_an_engine_killed_mid_stream_ends_the_stream_with_an_error_event(
    start: Start, tiny_qwen2_vl: Path
) -> None:
    server = await start()
    await server.register("a", tiny_qwen2_vl)
    assert (await server.complete("a")).status_code == 200
    engine = server.models._entries["a"].current.handle.engine  # type: ignore[union-attr]
    steps = 0
    real_step = engine.engine.step

    def step_then_die() -> Any:
        nonlocal steps
        steps += 1
        if steps > 3:
            raise SystemExit("killed")  # not an Exception: nothing in the loop catches it
        return real_step()

    engine.engine.step = step_then_die
    body = {"model": "a", "prompt": "Hello", "max_tokens": 200, "stream": True, "temperature": 0}
    response = await asyncio.wait_for(server.client.post("/v1/completions", json=body), BOUND_S)
    assert response.status_code == 200
    events = stream_events(response.text)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "engine_dead" and "engine loop stopped" in error["message"]
    assert len(events) >= 3  # tokens were streamed before it died
    # The registry notices: the model is failed (and its memory freed), then loads again
    # on an explicit /load.
    for _ in range(200):
        if (await server.card("a"))["state"] == "failed":
            break
        await asyncio.sleep(0.02)
    card = await server.card("a")
    assert card["state"] == "failed" and "engine loop stopped" in card["last_error"]
    assert_error(await server.complete("a"), 503, "model")
    reloaded = await server.client.post("/v1/models/a/load", json={"wait": True}, headers=ADMIN)
    assert reloaded.json()["state"] == "ready"
    assert (await server.complete("a")).status_code == 200


async def test_any_failure_after_the_first_byte_ends_the_stream_with_an_error_event(
    start: Start, tiny_qwen2_vl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only engine errors: a bug while shaping a chunk too (here: the third one)."""
    from vlmserve.api import streaming

    server = await start()
    await server.register("a", tiny_qwen2_vl)
    real, calls = streaming.DeltaTracker.deltas, 0

    def deltas_then_fail(self: streaming.DeltaTracker, output: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyError("a bug")
        return real(self, output)

    monkeypatch.setattr(streaming.DeltaTracker, "deltas", deltas_then_fail)
    body = {"model": "a", "prompt": "Hello", "max_tokens": 50, "stream": True, "temperature": 0}
    response = await asyncio.wait_for(server.client.post("/v1/completions", json=body), BOUND_S)
    events = stream_events(response.text)
    assert response.status_code == 200 and events[-1] == "[DONE]" and len(events) >= 3
    error = json.loads(events[-2])["error"]
    assert error == {
        "message": "the server failed while streaming: KeyError",
        "type": "server_error",
        "param": None,
        "code": "stream_failed",
    }
    assert server.models.status("a").in_flight == 0  # the request was released, not leaked
