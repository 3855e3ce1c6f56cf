"""POST /v1/completions end to end: lists of prompts (choices prompt-major), echo, and
logprobs in OpenAI's legacy shape (the sampled token always among `top_logprobs`)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.api.conftest import MODEL
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.types import Prompt, SamplingParams

URL = "/v1/completions"


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "def f(x):", "max_tokens": 5, "temperature": 0, **fields}


async def complete(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post(URL, json=body(**fields))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def stream(client: httpx.AsyncClient, **fields: Any) -> list[dict[str, Any]]:
    fields = {**fields, "stream": True, "stream_options": {"include_usage": True}}
    response = await client.post(URL, json=body(**fields))
    assert response.status_code == 200, response.text
    events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def joined(chunks: list[dict[str, Any]], count: int) -> tuple[list[str], list[str | None]]:
    texts: list[str] = [""] * count
    reasons: list[str | None] = [None] * count
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["text"]
            reasons[choice["index"]] = choice["finish_reason"] or reasons[choice["index"]]
    return texts, reasons


async def test_a_list_of_prompts_answers_prompt_major(client: httpx.AsyncClient) -> None:
    prompts = ["def f(x):", "import os\n", "class A:"]
    answers = [await complete(client, prompt=p) for p in prompts]
    alone = [a["choices"][0]["text"] for a in answers]
    single = await complete(client, prompt=["def f(x):"])
    assert [c["text"] for c in single["choices"]] == alone[:1]
    together = await complete(client, prompt=prompts, n=2, seed=1)
    assert [c["index"] for c in together["choices"]] == list(range(6))
    # Greedy: both samples of prompt i are prompt i's answer alone.
    assert [c["text"] for c in together["choices"]] == [t for t in alone for _ in range(2)]
    usage = together["usage"]
    assert usage["prompt_tokens"] == sum(a["usage"]["prompt_tokens"] for a in answers)
    assert usage["completion_tokens"] == 6 * 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    chunks = await stream(client, prompt=prompts, n=2, seed=1)
    texts, reasons = joined(chunks[:-1], 6)
    assert texts == [c["text"] for c in together["choices"]]
    assert reasons == ["length"] * 6
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == usage


async def test_token_id_prompts(client: httpx.AsyncClient) -> None:
    one = await complete(client, prompt=[100, 200, 300])
    assert len(one["choices"]) == 1 and one["usage"]["prompt_tokens"] == 3
    two = await complete(client, prompt=[[100, 200, 300], [7, 8]])
    assert two["choices"][0]["text"] == one["choices"][0]["text"]
    assert two["usage"]["prompt_tokens"] == 5 and len(two["choices"]) == 2


async def test_echo_puts_the_prompt_first(client: httpx.AsyncClient) -> None:
    plain = await complete(client, prompt=["def f(x):", "import os\n"])
    echoed = await complete(client, prompt=["def f(x):", "import os\n"], echo=True)
    assert [c["text"] for c in echoed["choices"]] == [
        "def f(x):" + plain["choices"][0]["text"],
        "import os\n" + plain["choices"][1]["text"],
    ]
    assert echoed["usage"] == plain["usage"]
    chunks = await stream(client, prompt=["def f(x):", "import os\n"], echo=True)
    texts, _ = joined(chunks[:-1], 2)
    assert texts == [c["text"] for c in echoed["choices"]]
    # A token-id prompt is echoed as its text.
    tokens = await complete(client, prompt=[100, 200, 300], echo=True, max_tokens=1)
    alone = await complete(client, prompt=[100, 200, 300], max_tokens=1)
    text = tokens["choices"][0]["text"]
    assert text.endswith(alone["choices"][0]["text"])
    assert len(text) > len(alone["choices"][0]["text"])


async def test_top_logprobs_always_hold_the_sampled_token(client: httpx.AsyncClient) -> None:
    sampled_only = (await complete(client, logprobs=0))["choices"][0]["logprobs"]
    assert all(
        list(top) == [token]
        for top, token in zip(sampled_only["top_logprobs"], sampled_only["tokens"], strict=True)
    )
    assert [top[t] for top, t in zip(sampled_only["top_logprobs"], sampled_only["tokens"])] == (
        sampled_only["token_logprobs"]
    )
    # Sampled at temperature 1, the chosen token is often outside the top 2: then 3 entries.
    sampled = await complete(client, logprobs=2, temperature=1.0, seed=5, max_tokens=16)
    logprobs = sampled["choices"][0]["logprobs"]
    sizes = set()
    for top, token, lp in zip(
        logprobs["top_logprobs"], logprobs["tokens"], logprobs["token_logprobs"], strict=True
    ):
        assert top[token] == lp and 2 <= len(top) <= 3
        assert list(top.values()) == sorted(top.values(), reverse=True)
        sizes.add(len(top))
    assert 3 in sizes


async def test_echo_with_logprobs_scores_the_prompt(
    client: httpx.AsyncClient, async_engine: AsyncEngine
) -> None:
    # The greedy continuation of A, appended to A: echoed, its tokens' logprobs are the ones
    # they had when generated (teacher-forced through the engine's scoring pass).
    a = [100, 200, 300]
    greedy = SamplingParams(temperature=0.0, max_tokens=3, logprobs=2, ignore_eos=True)
    final = None
    async for output in async_engine.generate(Prompt(token_ids=a), greedy, "echo-reference"):
        final = output
    assert final is not None
    (generated,) = final.outputs
    prompt = a + generated.token_ids
    answer = await complete(client, prompt=prompt, echo=True, logprobs=2, max_tokens=2)
    (choice,) = answer["choices"]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(prompt) + 2
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert logprobs["text_offset"][0] == 0
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"])
    assert "".join(logprobs["tokens"]) == choice["text"]
    for i, token_id in enumerate(generated.token_ids):
        expected = generated.logprobs[i][token_id].logprob  # type: ignore[index]
        assert abs(logprobs["token_logprobs"][len(a) + i] - expected) < 1e-3
    for top, token, lp in list(
        zip(logprobs["top_logprobs"], logprobs["tokens"], logprobs["token_logprobs"], strict=True)
    )[1:]:
        assert top[token] == lp and 2 <= len(top) <= 3
        assert list(top.values()) == sorted(top.values(), reverse=True)
    # Streamed, the first chunk of each choice carries the prompt's part.
    chunks = await stream(
        client, prompt=[prompt, a], echo=True, logprobs=2, max_tokens=2, temperature=0
    )
    streamed: list[dict[str, list[Any]]] = [
        {"tokens": [], "token_logprobs": []},
        {"tokens": [], "token_logprobs": []},
    ]
    for chunk in chunks[:-1]:
        for c in chunk["choices"]:
            for key in ("tokens", "token_logprobs"):
                streamed[c["index"]][key] += c["logprobs"][key]
    assert streamed[0] == {k: logprobs[k] for k in ("tokens", "token_logprobs")}
    assert len(streamed[1]["tokens"]) == len(a) + 2
    # A one-token prompt has nothing to score: its only token has no logprob.
    single = await complete(client, prompt=[100], echo=True, logprobs=0, max_tokens=1)
    assert single["choices"][0]["logprobs"]["token_logprobs"][0] is None
