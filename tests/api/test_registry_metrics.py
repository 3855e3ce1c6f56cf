"""/metrics with several models on the real engine host: every series about a model carries
its alias (engine gauges and counters, request timings and tokens, the registry's state and
lifecycle counts), an unloaded model's engine series disappear, and scraping never keeps an
unloaded engine alive."""

from __future__ import annotations

import gc
import re
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import client_for, offline_resolver
from tests.conftest import _created_in_test
from vlmserve.api.app import create_app
from vlmserve.api.server_config import ServerConfig
from vlmserve.config import EngineConfig, RegistryConfig
from vlmserve.registry import Loaded, LocalEngineHost, ModelHandle, ModelRegistry, ModelSpec

ADMIN = {"Authorization": "Bearer admin-key"}


@dataclass
class WatchedHost:
    """The real host, keeping a weak reference to every engine it built."""

    inner: LocalEngineHost
    engines: dict[str, list[weakref.ref[object]]] = field(default_factory=dict)

    async def load(self, spec: ModelSpec) -> Loaded:
        loaded = await self.inner.load(spec)
        engine = loaded.handle.engine
        refs = [weakref.ref(engine), weakref.ref(engine.engine)]
        self.engines.setdefault(spec.alias, []).extend(refs)
        return loaded

    async def unload(self, handle: ModelHandle) -> None:
        await self.inner.unload(handle)


@dataclass
class Server:
    client: httpx.AsyncClient
    host: WatchedHost
    models: ModelRegistry

    async def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, `name{labels}` -> value."""
        response = await self.client.get("/metrics", headers=ADMIN)
        assert response.status_code == 200
        samples = {}
        for line in response.text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    async def complete(self, model: str) -> httpx.Response:
        body = {"model": model, "prompt": "Hello", "max_tokens": 3}
        return await self.client.post("/v1/completions", json=body)


@pytest.fixture
async def server(tiny_qwen2_vl: Path, tiny_qwen2_5_vl: Path) -> AsyncIterator[Server]:
    inner = LocalEngineHost(EngineConfig("unset", kv_cache_memory_bytes=8 << 20))
    host = WatchedHost(inner)
    models = ModelRegistry(host=host, config=RegistryConfig(tick=0.05, max_loaded_models=2))
    await models.start()
    for alias, folder in (("a", tiny_qwen2_vl), ("b", tiny_qwen2_5_vl), ("c", tiny_qwen2_vl)):
        await models.register(ModelSpec(alias, str(folder), max_model_len=256))
    await models.register(ModelSpec("broken", "/nonexistent/model"))
    app = create_app(
        models, ServerConfig(admin_api_key="admin-key"), media_resolver=offline_resolver
    )
    client = client_for(app)
    try:
        yield Server(client, host, models)
    finally:
        await client.aclose()
        await models.close(drain_timeout=5)
        inner.close()


def labelled(samples: dict[str, float], name: str) -> dict[str, float]:
    """The samples of `name` by their `model` label."""
    found = {}
    for key, value in samples.items():
        match = re.fullmatch(name + r'\{(?:.*,)?model="([^"]+)"(?:,.*)?\}', key)
        if match:
            found[match.group(1)] = value
    return found


async def test_every_model_series_carries_its_alias(server: Server) -> None:
    assert (await server.complete("broken")).status_code == 503  # first: nothing to evict
    assert (await server.complete("a")).status_code == 200
    assert (await server.complete("b")).status_code == 200
    m = await server.metrics()
    for name in (
        "vlmserve_num_requests_running",
        "vlmserve_kv_cache_usage_ratio",
        "vlmserve_prefix_cache_queries_total",
        "vlmserve_time_to_first_token_seconds_count",
        "vlmserve_e2e_request_latency_seconds_count",
        "vlmserve_prompt_tokens_total",
        "vlmserve_generation_tokens_total",
        "vlmserve_model_loads_total",
        "vlmserve_model_load_seconds_count",
        "vlmserve_model_memory_bytes",
    ):
        assert set(labelled(m, name)) == {"a", "b"}, name
    assert labelled(m, "vlmserve_generation_tokens_total") == {"a": 3.0, "b": 3.0}
    assert m["vlmserve_models_loaded"] == 2
    assert m['vlmserve_model_state{model="a",state="ready"}'] == 1
    assert m['vlmserve_model_state{model="c",state="registered"}'] == 1
    assert m['vlmserve_model_state{model="broken",state="failed"}'] == 1
    assert labelled(m, "vlmserve_model_load_failures_total") == {"broken": 1.0}
    assert labelled(m, "vlmserve_model_memory_bytes")["a"] > 8 << 20
    assert sum(labelled(m, "vlmserve_model_load_seconds_sum").values()) > 0

    # One of a, b is evicted (which one: measured load time / idle time, timing-dependent).
    assert (await server.complete("c")).status_code == 200
    m = await server.metrics()
    [evicted] = labelled(m, "vlmserve_model_evictions_total")
    assert evicted in ("a", "b") and labelled(m, "vlmserve_model_evictions_total")[evicted] == 1
    assert m[f'vlmserve_model_state{{model="{evicted}",state="registered"}}'] == 1
    kept = ({"a", "b"} - {evicted}) | {"c"}
    assert set(labelled(m, "vlmserve_num_requests_running")) == kept
    assert m["vlmserve_models_loaded"] == 2


async def test_an_unloaded_engine_is_freed_though_metrics_were_scraped(server: Server) -> None:
    assert (await server.complete("a")).status_code == 200
    assert set(labelled(await server.metrics(), "vlmserve_num_requests_running")) == {"a"}
    refs = server.host.engines["a"]
    assert all(ref() is not None for ref in refs)
    unloaded = await server.client.post("/v1/models/a/unload", headers=ADMIN)
    assert unloaded.json()["state"] == "registered"
    m = await server.metrics()
    assert labelled(m, "vlmserve_model_unloads_total") == {"a": 1.0}
    assert labelled(m, "vlmserve_num_requests_running") == {}
    assert m["vlmserve_models_loaded"] == 0
    # The test harness keeps every engine built in a test (to check it is idle afterwards):
    # it lets go of this one, so that only the server could still hold it.
    built = [ref() for ref in refs]
    _created_in_test[:] = [e for e in _created_in_test if all(e is not b for b in built)]
    del built
    gc.collect()
    assert [ref() for ref in refs] == [None, None], "something keeps the unloaded engine alive"
