"""The official `openai` client against the app: shapes parse, errors map to its classes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import openai
import pydantic
import pytest
from fastapi import FastAPI

from tests.api.conftest import MODEL, make_app, png_data_url
from vlmserve.engine.async_engine import AsyncEngine

USER = [{"role": "user", "content": "Say something"}]


def openai_client(app: FastAPI, api_key: str = "unused") -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), timeout=60)
    # No retries: a 429 or 500 must surface as its exception, not be retried away.
    return openai.AsyncOpenAI(
        api_key=api_key, base_url="http://test/v1", http_client=http, max_retries=0
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client(app) as c:
        yield c


async def test_chat_and_image(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_tokens=6,
        temperature=0,  # type: ignore[arg-type]
    )
    assert completion.object == "chat.completion"
    assert isinstance(completion.choices[0].message.content, str)
    assert completion.usage is not None and completion.usage.completion_tokens <= 6
    content: Any = [
        {"type": "image_url", "image_url": {"url": png_data_url()}},
        {"type": "text", "text": "What is this?"},
    ]
    with_image = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=4
    )
    assert with_image.usage is not None
    assert with_image.usage.prompt_tokens > completion.usage.prompt_tokens
    # The SDK's own fields: a 56×56 image is 4×4 patches, 4 tokens after the 2×2 merge.
    details = with_image.usage.prompt_tokens_details
    assert details is not None and details.image_tokens == 4
    assert isinstance(details.cached_tokens, int) and details.model_extra == {}


async def test_stream_n_and_logprobs(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_tokens=6,
        temperature=0,
        n=2,
        stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
        logprobs=True,
        top_logprobs=2,
    )
    texts = ["", ""]
    finished = set()
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason is not None:
                finished.add(choice.index)
            if choice.logprobs and choice.logprobs.content:
                assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    assert finished == {0, 1} and usage is not None
    whole = await client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_tokens=6,
        temperature=0,
        n=2,
        logprobs=True,  # type: ignore[arg-type]
        top_logprobs=2,
    )
    assert [c.message.content for c in whole.choices] == texts
    logprobs = whole.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert len(logprobs.content[0].top_logprobs) == 2


async def test_completions_and_models(client: openai.AsyncOpenAI) -> None:
    completion = await client.completions.create(model=MODEL, prompt="x = ", max_tokens=3)
    assert completion.object == "text_completion" and len(completion.choices) == 1
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert (await client.models.retrieve(MODEL)).id == MODEL


async def test_errors_map_to_openai_exceptions(
    client: openai.AsyncOpenAI, async_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model=MODEL, messages=USER, temperature=5)  # type: ignore[arg-type]
    assert bad.value.param == "temperature"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="gpt-9", messages=USER)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-9")
    monkeypatch.setattr(async_engine, "max_waiting", 0)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]


async def test_auth_and_server_errors(
    async_engine: AsyncEngine, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyed = make_app(async_engine, api_key="secret")
    async with openai_client(keyed, api_key="wrong") as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()
    async with openai_client(keyed, api_key="secret") as right:
        assert (await right.models.list()).data[0].id == MODEL

    async def broken(*_: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(app.state.vlm.media, "prompt", broken)
    async with openai_client(app) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]


class Label(pydantic.BaseModel):
    category: Literal["animal", "food", "vehicle", "other"]
    confidence: float = pydantic.Field(ge=0, le=1)


class Review(pydantic.BaseModel):
    stars: int
    summary: str


async def test_parse_and_budget_closed_answers(client: openai.AsyncOpenAI) -> None:
    """`parse()` returns the typed object; an answer the budget closed keeps
    `finish_reason: "length"`, so the SDK raises LengthFinishReasonError — and the JSON the
    exception carries still validates (the documented workaround, docs/api.md)."""
    parsed = await client.chat.completions.parse(
        model=MODEL, messages=USER, response_format=Label, max_tokens=40, temperature=0
    )
    choice = parsed.choices[0]
    assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Label)
    # A budget of exactly the shortest valid answer always ends at "length": the engine
    # closes the JSON with the last token. The 400 for a smaller budget says how many.
    with pytest.raises(openai.BadRequestError) as small:
        await client.chat.completions.parse(
            model=MODEL, messages=USER, response_format=Review, max_tokens=1
        )
    needed = re.search(r"the shortest needs (\d+) tokens", str(small.value))
    assert needed is not None
    shortest = int(needed.group(1))
    with pytest.raises(openai.LengthFinishReasonError) as cut:
        await client.chat.completions.parse(
            model=MODEL, messages=USER, response_format=Review, max_tokens=shortest, temperature=0
        )
    completion = cut.value.completion
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == shortest
    review = Review.model_validate_json(completion.choices[0].message.content or "")
    assert isinstance(review.stars, int)
