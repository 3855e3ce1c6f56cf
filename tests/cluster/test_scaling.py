"""Autoscaling on a real Ray instance: from zero to two replicas under load and back to zero
when idle, a long stream that outlives the downscale of its replica, and a flood that gets
answers or quick refusals, never a hang."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ray import serve

from tests.cluster.conftest import STARTUP_S, RayInstance, async_wait_for, replicas
from tests.cluster.paced import PACE_S, PacedModelServer
from vlmserve.cluster.remote import RemoteEngine, RemotePolicy
from vlmserve.serving import Generation, ServingError
from vlmserve.types import Prompt, RequestOutput, SamplingParams

pytestmark = pytest.mark.ray

POLICY = RemotePolicy(load_timeout=STARTUP_S, request_timeout=STARTUP_S + 60)


def tokens(n: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


async def answer(engine: RemoteEngine, request_id: str, n: int = 12) -> RequestOutput:
    generation = Generation(engine, Prompt(text="Hello there"), tokens(n), request_id)
    await generation.start()
    return await generation.final()


async def test_from_zero_to_two_replicas_under_load_and_back_to_zero(
    ray_instance: RayInstance, deploy: Callable[..., Any], tiny_qwen2_vl: Path
) -> None:
    app = deploy(
        "elastic", tiny_qwen2_vl, server=PacedModelServer, max_replicas=2,
        target_ongoing_requests=1.0, max_ongoing_requests=4,
    )  # fmt: skip
    await asyncio.sleep(2)
    assert replicas(ray_instance, app) == [], "a replica started with nothing to do"
    engine = RemoteEngine(app.alias, POLICY)
    started = time.monotonic()
    await answer(engine, "first")
    print(f"scale from zero to a first answer: {time.monotonic() - started:.1f} s")
    assert len(replicas(ray_instance, app)) == 1

    done = asyncio.Event()
    failures: list[BaseException] = []

    async def client(k: int) -> int:
        n = 0
        while not done.is_set():
            n += 1
            try:
                await answer(engine, f"load-{k}-{n}")
            except Exception as exc:
                failures.append(exc)
        return n

    clients = [asyncio.create_task(client(k)) for k in range(4)]
    try:
        await async_wait_for(lambda: len(replicas(ray_instance, app)) == 2, STARTUP_S, "2 replicas")
    finally:
        done.set()
        served = sum(await asyncio.gather(*clients))
    assert not failures and served > 0, failures
    await async_wait_for(lambda: not replicas(ray_instance, app), STARTUP_S, "back to 0 replicas")


async def test_a_long_stream_outlives_the_downscale_of_its_replica(
    ray_instance: RayInstance, deploy: Callable[..., Any], tiny_qwen2_vl: Path
) -> None:
    """One request per replica; when the short stream on the first replica ends, the
    autoscaler wants one replica and Serve stops the newest, the one whose 30 s stream is
    still running: the stream must end whole."""
    app = deploy(
        "shrinking", tiny_qwen2_vl, server=PacedModelServer, engine={"max_model_len": 1024},
        min_replicas=1, max_replicas=2, max_ongoing_requests=1, target_ongoing_requests=1.0,
        downscale_delay_s=1.0,
    )  # fmt: skip
    await async_wait_for(lambda: replicas(ray_instance, app), STARTUP_S, "the first replica")
    first = {r.pid for r in replicas(ray_instance, app)}
    engine = RemoteEngine(app.alias, POLICY)
    long_tokens = round(30 / PACE_S)

    async def begin(request_id: str, n: int) -> Generation:
        generation = Generation(engine, Prompt(text="Once upon"), tokens(n), request_id)
        await generation.start()
        return generation

    async def rest(generation: Generation) -> list[RequestOutput]:
        return [out async for out in generation.outputs()]

    async def streamed(request_id: str, n: int) -> list[RequestOutput]:
        return await rest(await begin(request_id, n))

    # The long stream is sent only once the short one has output from the first replica:
    # sent together, both would wait in the new handle's router until it learns of that
    # replica, which may then take the long one (the short one then goes to the second
    # replica, and the downscale comes only after both ended).
    short = asyncio.create_task(rest(await begin("short", round(15 / PACE_S))))
    long = asyncio.create_task(streamed("long", long_tokens))
    started = time.monotonic()
    await async_wait_for(
        lambda: len(replicas(ray_instance, app)) == 2, STARTUP_S, "a second replica"
    )
    second = {r.pid for r in replicas(ray_instance, app)} - first
    await short

    def stopping() -> bool:
        states = serve.status().applications[app.alias].deployments[app.deployment_name]
        return states.replica_states.get("STOPPING", 0) == 1

    await async_wait_for(stopping, 120, "the downscale to start")
    assert not long.done(), "the stream ended before the downscale began"
    outputs = await long
    final = outputs[-1].outputs[0]
    assert len(final.token_ids) == long_tokens and final.finish_reason == "length"
    assert time.monotonic() - started >= 30 * 0.9
    await async_wait_for(
        lambda: {r.pid for r in replicas(ray_instance, app)} == first, STARTUP_S, "one replica left"
    )
    assert second and not second & {r.pid for r in replicas(ray_instance, app)}


@pytest.mark.parametrize("status", [503, 429])
async def test_a_flood_gets_answers_or_quick_refusals(
    status: int, ray_instance: RayInstance, deploy: Callable[..., Any], tiny_qwen2_vl: Path
) -> None:
    app = deploy(
        f"flooded-{status}", tiny_qwen2_vl, server=PacedModelServer, min_replicas=1,
        max_replicas=1, max_ongoing_requests=2, max_queued_requests=4,
    )  # fmt: skip
    await async_wait_for(lambda: replicas(ray_instance, app), STARTUP_S, "a replica")
    engine = RemoteEngine(app.alias, RemotePolicy(60, 180, overload_status=status))

    async def one(k: int) -> int:
        try:
            await answer(engine, f"flood-{k}", n=8)
        except ServingError as exc:
            assert exc.status in (status, 503) and exc.headers.get("Retry-After"), exc.message
            return exc.status
        return 200

    started = time.monotonic()
    outcomes = await asyncio.wait_for(asyncio.gather(*(one(k) for k in range(40))), 300)
    assert time.monotonic() - started < 240
    assert set(outcomes) <= {200, status, 503} and 200 in outcomes and status in outcomes
    print({code: outcomes.count(code) for code in set(outcomes)})
