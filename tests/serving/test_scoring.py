"""`Serving.score`: continuations given as text after a prompt rendered once (`chat_prompt`),
scored by the engine's teacher-forced pass; the same prompt then generates. Refusals are
`ServingError`s naming the field; an engine that fails is a 500, never a result."""

from __future__ import annotations

import asyncio
import math

import pytest

from tests.serving.conftest import MODEL
from tests.serving.test_serving import GREEDY, data_url, image, text, user
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.serving import ScoreRequest, Serving, ServingError
from vlmserve.types import SamplingParams

PATHS = ['{"best_class":"no"', '{"best_class":"no_issues"', '{"best_class":"alcohol"']


async def test_score_then_generate_from_one_prompt(serving: Serving, engine: AsyncEngine) -> None:
    async with serving.model(MODEL) as handle:
        prompt = await serving.chat_prompt(handle, user(image(data_url()), text("Which?")))
        scored = await serving.score(handle, ScoreRequest(prompt, PATHS))
        generation = await serving.start_generation(handle, prompt, GREEDY)
        answer = await generation.final()
    assert [c.text for c in scored.outputs] == PATHS
    encode = engine.engine.tokenizer.encode
    assert [c.token_ids for c in scored.outputs] == [encode(p) for p in PATHS]
    for completion in scored.outputs:
        assert completion.logprobs is not None and completion.cumulative_logprob is not None
        assert math.isfinite(completion.cumulative_logprob) and completion.cumulative_logprob < 0
        assert completion.cumulative_logprob == pytest.approx(
            sum(next(iter(e.values())).logprob for e in completion.logprobs)
        )
    # The same ids, straight to the engine: the serving layer adds nothing but tokenizing.
    direct = await engine.score(prompt, [c.token_ids for c in scored.outputs], "direct")
    assert [c.cumulative_logprob for c in direct.outputs] == [
        c.cumulative_logprob for c in scored.outputs
    ]
    assert answer.finished and answer.prompt_token_ids == scored.prompt_token_ids


async def test_refusals_and_failures(serving: Serving, engine: AsyncEngine) -> None:
    async with serving.model(MODEL) as handle:
        prompt = await serving.chat_prompt(handle, user(text("Which?")))
        with pytest.raises(ServingError) as raised:
            await serving.score(handle, ScoreRequest(prompt, ["a", ""]))
        assert (raised.value.status, raised.value.param) == (400, "continuations[1]")
        with pytest.raises(ServingError) as raised:
            await serving.score(handle, ScoreRequest(prompt, []))
        assert (raised.value.status, raised.value.param) == (400, "continuations")
        too_long = ScoreRequest(prompt, ["x" * 5000])
        with pytest.raises(ServingError) as raised:
            await serving.score(handle, too_long)
        assert (raised.value.status, raised.value.param) == (400, "continuations")

        runner = engine.engine.runner

        def broken(*args: object) -> None:
            raise RuntimeError("injected model failure")

        original = runner.execute
        runner.execute = broken  # type: ignore[method-assign]
        try:
            with pytest.raises(ServingError) as raised:
                await serving.score(handle, ScoreRequest(prompt, PATHS))
        finally:
            runner.execute = original  # type: ignore[method-assign]
        assert raised.value.status == 500 and "injected model failure" in raised.value.message
    for _ in range(500):
        if not engine.engine.requests:
            break
        await asyncio.sleep(0.01)
    assert not engine.engine.requests


async def test_scores_ignore_the_sampling_parameters_used_around_them(serving: Serving) -> None:
    async with serving.model(MODEL) as handle:
        prompt = await serving.chat_prompt(handle, user(text("Which?")))
        await serving.score(handle, ScoreRequest(prompt, PATHS))  # the prompt is cached now
        first = await serving.score(handle, ScoreRequest(prompt, PATHS))
        hot = SamplingParams(temperature=0.7, top_p=0.5, seed=1, max_tokens=4)
        await (await serving.start_generation(handle, prompt, hot)).final()
        second = await serving.score(handle, ScoreRequest(prompt, PATHS))
    assert [c.cumulative_logprob for c in first.outputs] == [
        c.cumulative_logprob for c in second.outputs
    ]
