"""`Generation` over an engine that answers from elsewhere (as a Ray replica does): a lost
engine costs a whole answer one rerun, a stream its tail (with the error), and the errors a
remote engine raises itself pass through unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from vlmserve.engine.errors import EngineLost
from vlmserve.serving import Generation, ServingError
from vlmserve.types import CompletionOutput, Prompt, RequestOutput, SamplingParams

PARAMS = SamplingParams(max_tokens=3)


def output(tokens: list[int], finished: bool) -> RequestOutput:
    reason = "length" if finished else None
    completion = CompletionOutput(0, "x" * len(tokens), tokens, None, None, reason)
    return RequestOutput("r", None, [1], [completion], finished)


class FlakyEngine:
    """Loses the first `losses` runs after one token, then answers three tokens."""

    def __init__(self, losses: int, error: Exception | None = None) -> None:
        self.losses = losses
        self.error = error or EngineLost("the replica died")
        self.runs = 0

    async def generate(
        self, prompt: Prompt, params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        self.runs += 1
        yield output([7], False)
        if self.runs <= self.losses:
            raise self.error
        yield output([7, 8], False)
        yield output([7, 8, 9], True)


async def started(engine: FlakyEngine) -> Generation:
    generation = Generation(engine, Prompt(text="hi"), PARAMS, "r")
    await generation.start()
    return generation


async def test_a_whole_answer_runs_again_once_after_its_engine_is_lost() -> None:
    engine = FlakyEngine(losses=1)
    final = await (await started(engine)).final()
    assert final.finished and final.outputs[0].token_ids == [7, 8, 9]
    assert engine.runs == 2


async def test_a_second_loss_is_the_error() -> None:
    engine = FlakyEngine(losses=2)
    generation = await started(engine)
    with pytest.raises(ServingError) as caught:
        await generation.final()
    assert caught.value.status == 503 and caught.value.code == "engine_lost"
    assert caught.value.headers.get("Retry-After")
    assert engine.runs == 2


async def test_a_stream_keeps_what_it_sent_and_ends_with_the_error() -> None:
    engine = FlakyEngine(losses=1)
    generation = await started(engine)
    seen = []
    with pytest.raises(ServingError) as caught:
        async for out in generation.outputs():
            seen.append(out.outputs[0].token_ids)
    assert seen == [[7]] and caught.value.code == "engine_lost"
    assert engine.runs == 1  # never rerun: the client has its first token


async def test_other_failures_are_not_rerun_and_serving_errors_pass_through() -> None:
    refusal = ServingError(429, "the replica's queue is full", code="overloaded")
    engine = FlakyEngine(losses=1, error=refusal)
    generation = await started(engine)
    with pytest.raises(ServingError) as caught:
        await generation.final()
    assert caught.value is refusal
    assert engine.runs == 1
