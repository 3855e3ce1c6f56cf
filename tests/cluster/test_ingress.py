"""The whole vlmserve application on a real Ray instance: our ingress (the OpenAI API) and the
reconciler in front of model applications, over Serve's HTTP proxy. Two models behind one
ingress (streaming too), a registration through the admin API that leaves the running model's
replicas alone under traffic, moderations scored in a replica, a broken model beside working
ones, and a `serve shutdown` after which a restart brings every registered model back (the
registry is the source of truth). The media attacks through the ingress: test_media_attacks.py.

The module shares one vlmserve application; the shutdown test runs last and restores Serve
as the session started it.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray import serve

from tests.cluster.conftest import (
    STARTUP_S,
    RayInstance,
    async_wait_for,
    replicas,
    start_serve,
    wait_for,
)
from tests.cluster.vlmserve_app import ADMIN, CHAT, USER, Deployed, deployed, options
from vlmserve.cluster import apps
from vlmserve.cluster.ingress import APP_NAME, application
from vlmserve.config import MediaConfig
from vlmserve.registry import ModelSpec, RegistryStore
from vlmserve.safety.moderations import moderation_router
from vlmserve.safety.policy import load_policy

pytestmark = pytest.mark.ray


def chat(model: str, content: object = "Hello", **fields: object) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
        "temperature": 0,
        **fields,
    }


@pytest.fixture(scope="module")
def vlmserve_app(
    ray_instance: RayInstance, tmp_path_factory: pytest.TempPathFactory, tiny_qwen2_vl: Path
) -> Iterator[Deployed]:
    """The vlmserve application, with model `alpha` registered before it starts (pinned:
    it keeps one replica)."""
    # Room for the moderation policy's prompt.
    alpha = ModelSpec("alpha", str(tiny_qwen2_vl), max_model_len=4096, pinned=True)
    registry = tmp_path_factory.mktemp("ray-registry") / "registry.db"
    with deployed(
        ray_instance,
        options(
            registry,
            [alpha],
            tiny_qwen2_vl,
            media=MediaConfig(),
            extra_routers=lambda: [moderation_router(load_policy())],
        ),
    ) as app:
        yield app


@dataclass
class _App:
    alias: str
    deployment_name: str


def replica_pids(instance: RayInstance, alias: str) -> set[int]:
    """The PIDs of a model's live replicas (of its current deployment)."""
    deployed = apps.deployed().get(alias)
    if deployed is None:
        return set()
    app = _App(alias, apps.DEPLOYMENT_PREFIX + deployed.fingerprint)
    return {r.pid for r in replicas(instance, app)}


async def answer(client: httpx.AsyncClient, model: str) -> httpx.Response:
    return await client.post(CHAT, json=chat(model), headers=USER, timeout=STARTUP_S + 60)


async def streamed(client: httpx.AsyncClient, model: str) -> list[Any]:
    body = chat(model, stream=True)
    events: list[Any] = []
    async with client.stream("POST", CHAT, json=body, headers=USER, timeout=STARTUP_S) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def register(client: httpx.AsyncClient, alias: str, model: Path, **fields: Any) -> None:
    body = {"alias": alias, "model_name": str(model), **fields}
    response = await client.post("/v1/models/register", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text


async def test_two_models_behind_one_ingress_and_streaming(
    vlmserve_app: Deployed, ray_instance: RayInstance, tiny_qwen2_vl: Path
) -> None:
    async with httpx.AsyncClient(base_url=vlmserve_app.url, timeout=60) as client:
        assert (await client.get("/health")).status_code == 200
        # Keys are the ingress's: no key, no answer; the admin routes want the admin key.
        refused = await client.post(CHAT, json=chat("alpha"))
        assert refused.status_code == 401, refused.text
        body = {"alias": "beta", "model_name": str(tiny_qwen2_vl)}
        user_register = await client.post("/v1/models/register", json=body, headers=USER)
        assert user_register.status_code in (401, 403), user_register.text
        await register(client, "beta", tiny_qwen2_vl)
        # Registered, deployed, no replica: a min_replicas 0 model waits for its first request.
        assert "beta" in apps.deployed() and not replica_pids(ray_instance, "beta")
        listed = (await client.get("/v1/models", headers=USER)).json()
        assert {"alpha", "beta"} <= {m["id"] for m in listed["data"]}

        whole, events = await asyncio.gather(answer(client, "alpha"), streamed(client, "beta"))
        assert whole.status_code == 200, whole.text
        text = whole.json()["choices"][0]["message"]["content"]
        assert events[-1] == "[DONE]" and len(events) >= 3
        chunks = [e for e in events[:-1] if e["choices"]]
        assert {e["model"] for e in chunks} == {"beta"}
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == text
        assert replica_pids(ray_instance, "beta")  # scaled up from zero for that request

        unknown = await client.post(CHAT, json=chat("gamma"), headers=USER)
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
        bad = await client.post(CHAT, json=chat("alpha", max_tokens=0), headers=USER)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens", bad.text


async def test_registering_a_model_leaves_the_running_one_alone(
    vlmserve_app: Deployed, ray_instance: RayInstance, tiny_qwen2_vl: Path
) -> None:
    before = await async_wait_for(
        lambda: replica_pids(ray_instance, "alpha"), STARTUP_S, "alpha's replica"
    )
    outcomes: list[int] = []
    done = asyncio.Event()
    async with httpx.AsyncClient(base_url=vlmserve_app.url, timeout=60) as client:

        async def traffic() -> None:
            while not done.is_set():
                outcomes.append((await answer(client, "alpha")).status_code)

        load = [asyncio.create_task(traffic()) for _ in range(2)]
        await asyncio.sleep(1)
        await register(client, "delta", tiny_qwen2_vl, pinned=True)
        await async_wait_for(
            lambda: replica_pids(ray_instance, "delta"), STARTUP_S, "the new model's replica"
        )
        second = await answer(client, "delta")
        assert second.status_code == 200, second.text
        done.set()
        await asyncio.gather(*load)
    assert outcomes and set(outcomes) == {200}, outcomes
    assert replica_pids(ray_instance, "alpha") == before


async def test_moderations_score_in_the_replica(vlmserve_app: Deployed) -> None:
    """The safety app's route through the ingress: class scores from a teacher-forced pass
    that runs in the model's replica."""
    body = {"model": "alpha", "input": "Cold beer on tap", "vlmserve": {"max_tokens": 40}}
    async with httpx.AsyncClient(base_url=vlmserve_app.url, timeout=STARTUP_S) as client:
        response = await client.post("/v1/moderations", json=body, headers=USER)
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    scores = result["category_scores"]
    assert set(scores) == set(load_policy().class_names)
    assert math.fsum(scores.values()) == pytest.approx(1.0, abs=1e-6)


async def test_a_broken_model_gets_503s_and_the_ingress_stays_ready(
    vlmserve_app: Deployed, tmp_path: Path
) -> None:
    """A registration whose replicas cannot start (no model in its folder): its requests
    get a 503 naming Serve's reason once Serve gives up, while the ingress stays ready and
    the other models serve."""
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    async with httpx.AsyncClient(base_url=vlmserve_app.url, timeout=60) as client:
        await register(client, "broken", broken)
        refused = await answer(client, "broken")
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["code"] == "model_unavailable" and error["param"] == "model", error
        assert (await client.get("/ready")).status_code == 200
        assert (await client.get("/health")).status_code == 200
        assert (await answer(client, "alpha")).status_code == 200


async def test_serve_shutdown_then_a_restart_brings_the_models_back(
    vlmserve_app: Deployed, ray_instance: RayInstance
) -> None:
    store = RegistryStore(vlmserve_app.options.registry_path)
    registered = {stored.spec.alias for stored in store.models()}
    store.close()
    assert "alpha" in registered and registered <= set(apps.deployed())
    serve.shutdown()
    start_serve(ray_instance)
    assert not registered & set(apps.deployed())
    started = time.monotonic()
    serve.run(application(vlmserve_app.options), name=APP_NAME, route_prefix="/")
    # The reconciler's first pass deploys every registered model again.
    wait_for(lambda: registered <= set(apps.deployed()), 60, "the models back")
    print(f"models back {time.monotonic() - started:.1f} s after the restart")
    async with httpx.AsyncClient(base_url=vlmserve_app.url) as client:
        response = await answer(client, "alpha")
    assert response.status_code == 200, response.text
