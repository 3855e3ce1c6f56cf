"""Model applications on a real Ray instance, driven the way the ingress drives them: the
serving layer's `Generation` over a `RemoteEngine`. Two models side by side, streaming,
scale to zero that is really zero, and a new model that leaves the running one alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import STARTUP_S, RayInstance, async_wait_for, replicas
from vlmserve.cluster import apps
from vlmserve.cluster.remote import RemoteEngine, RemotePolicy
from vlmserve.serving import Generation
from vlmserve.types import Prompt, RequestOutput, SamplingParams

pytestmark = pytest.mark.ray

POLICY = RemotePolicy(load_timeout=STARTUP_S, request_timeout=STARTUP_S + 60)
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


async def answer(engine: RemoteEngine, request_id: str, params: SamplingParams = GREEDY) -> Any:
    generation = Generation(engine, Prompt(text="Hello there"), params, request_id)
    await generation.start()
    return await generation.final()


async def stream(engine: RemoteEngine, request_id: str) -> list[RequestOutput]:
    generation = Generation(engine, Prompt(text="Hello there"), GREEDY, request_id)
    await generation.start()
    return [output async for output in generation.outputs()]


async def test_two_models_answer_and_stream_side_by_side(
    ray_instance: RayInstance, deploy: Callable[..., Any], tiny_qwen2_vl: Path
) -> None:
    a = deploy("tiny-a", tiny_qwen2_vl)
    b = deploy("tiny-b/with-slash", tiny_qwen2_vl)
    # min_replicas 0: deployed means no replica at all, until a request comes.
    assert replicas(ray_instance, a) == [] and replicas(ray_instance, b) == []
    engine_a, engine_b = RemoteEngine(a.alias, POLICY), RemoteEngine(b.alias, POLICY)
    whole, streamed = await asyncio.gather(answer(engine_a, "a-1"), stream(engine_b, "b-1"))
    assert whole.finished and len(whole.outputs[0].token_ids) == 12
    assert len(streamed) >= 2 and streamed[-1].finished
    tokens = [out.outputs[0].token_ids for out in streamed]
    assert all(tokens[i] == tokens[i + 1][: len(tokens[i])] for i in range(len(tokens) - 1))
    # Same weights, greedy: both applications give the same answer.
    assert tokens[-1] == whole.outputs[0].token_ids
    assert len(replicas(ray_instance, a)) == 1 and len(replicas(ray_instance, b)) == 1
    facts = await engine_a.facts()
    assert facts.info.name == a.alias and facts.fingerprint == a.fingerprint
    assert facts.pid == replicas(ray_instance, a)[0].pid


async def test_deploying_another_model_leaves_the_first_alone(
    ray_instance: RayInstance, deploy: Callable[..., Any], tiny_qwen2_vl: Path
) -> None:
    a = deploy("steady", tiny_qwen2_vl, min_replicas=1, max_replicas=1)
    await async_wait_for(lambda: replicas(ray_instance, a), STARTUP_S, "the steady model's replica")
    before = {r.pid for r in replicas(ray_instance, a)}
    engine = RemoteEngine(a.alias, POLICY)
    outcomes: list[Any] = []
    done = asyncio.Event()

    async def traffic() -> None:
        n = 0
        while not done.is_set():
            n += 1
            try:
                outcomes.append(await answer(engine, f"steady-{n}"))
            except Exception as exc:
                outcomes.append(exc)

    load = asyncio.create_task(traffic())
    b = deploy("newcomer", tiny_qwen2_vl, min_replicas=1, max_replicas=1)
    await async_wait_for(lambda: replicas(ray_instance, b), STARTUP_S, "the new model's replica")
    await asyncio.sleep(1)
    done.set()
    await load
    assert outcomes and all(not isinstance(o, Exception) for o in outcomes), outcomes
    assert {r.pid for r in replicas(ray_instance, a)} == before
    assert apps.deployed()[a.alias].fingerprint == a.fingerprint
