"""`POST /v1/moderations` through the official `openai` client, in-process (httpx's ASGI
transport): the three input forms (a string, a list of strings, text and image parts with
data and http URLs), class scores that are the class paths' probabilities (against
transformers, also for classes sharing their first tokens), independent of the sampling
temperature, with `argmax == best_class`; failures are errors, never results; too many
images is a 400 with its code. The engine holds nothing after any of it."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
import torch
from fastapi import FastAPI
from transformers import Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

from tests.api.conftest import offline_resolver, png_data_url
from tests.engine.test_scoring import holds
from tests.multimodal.fakes import (
    PUBLIC_IP,
    FakeInternet,
    LocalServer,
    StubResolver,
    png_bytes,
    static,
)
from tests.safety.conftest import MODEL
from vlmserve.api.app import create_app
from vlmserve.config import MediaConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.multimodal.fetch import MediaConnector, Resolver, TransportFactory
from vlmserve.registry import ModelHandle, ModelInfo, ModelRegistry, ModelSpec, RegistryStore
from vlmserve.safety.moderations import moderation_router
from vlmserve.safety.policy import Policy, load_policy, policy_from_dict
from vlmserve.safety.scores import class_paths, softmax
from vlmserve.serving import MediaLoader, Serving

FAST = {"vlmserve": {"max_tokens": 40}}  # the written answer's budget: tests stay quick
TOLERANCE = 1e-4

# Class names whose paths share their first tokens with the tiny tokenizer ('no' + ...,
# 'g' 'un' + ...), and one that is a prefix of two others.
SHARED = policy_from_dict(
    {
        "name": "shared-prefixes",
        "instructions": "Classify the image.",
        "user_prompt": "Classify this image.",
        "default_class": "no",
        "classes": [
            {"name": "no", "definition": "nothing to report"},
            {"name": "no_issues", "definition": "fine"},
            {"name": "noise", "definition": "random pixels"},
            {"name": "gun", "definition": "a gun"},
            {"name": "guns", "definition": "several guns", "threshold": 0.1},
            {"name": "gun_violence", "definition": "guns used on people"},
        ],
    }
)


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def moderation_app(
    engine: AsyncEngine,
    policy: Policy,
    resolver: Resolver = offline_resolver,
    transport: TransportFactory | None = None,
    max_images: int = 1,
) -> FastAPI:
    models = ModelRegistry([ModelHandle(ModelInfo.from_engine(engine.engine, MODEL), engine)])
    return create_app(
        models,
        media_config=MediaConfig(),
        media_resolver=resolver,
        media_transport=transport,
        extra_routers=[moderation_router(policy, max_images)],
    )


def openai_client(app: FastAPI, strict: bool = False) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), timeout=120)
    return openai.AsyncOpenAI(
        api_key="unused",
        base_url="http://test/v1",
        http_client=http,
        max_retries=0,
        _strict_response_validation=strict,
    )


@pytest_asyncio.fixture
async def client(safety_engine: AsyncEngine) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client(moderation_app(safety_engine, load_policy())) as c:
        yield c


@pytest.fixture(autouse=True)
def _engine_holds_nothing(safety_engine: AsyncEngine) -> Iterator[None]:
    yield
    for _ in range(1000):  # aborts run on the engine thread
        if not holds(safety_engine.engine):
            return
        time.sleep(0.01)
    pytest.fail(f"the engine still holds {holds(safety_engine.engine)}")


def assert_result(result: Any, policy: Policy, types: list[str]) -> None:
    """Every class keyed; scores a distribution whose argmax is best_class; flags follow."""
    dumped = result.to_dict()
    assert set(dumped["category_scores"]) == set(policy.class_names)
    scores = dumped["category_scores"]
    assert math.fsum(scores.values()) == pytest.approx(1.0, abs=1e-6)
    best = dumped["vlmserve"]["best_class"]
    assert max(scores, key=lambda name: scores[name]) == best
    for c in policy.classes:
        flagged = c.threshold is not None and scores[c.name] >= c.threshold
        assert dumped["categories"][c.name] is flagged
    assert dumped["flagged"] is any(dumped["categories"].values())
    assert dumped["category_applied_input_types"] == {n: types for n in policy.class_names}
    assert dumped["vlmserve"]["policy_hash"] == policy.hash


async def test_three_input_forms(client: openai.AsyncOpenAI) -> None:
    policy = load_policy()
    one = await client.moderations.create(input="Cold beer on tap", extra_body=FAST)
    assert one.model == MODEL and one.id.startswith("modr-") and len(one.results) == 1
    assert_result(one.results[0], policy, ["text"])
    texts = ["first", "second", "third"]
    many = await client.moderations.create(input=texts, model=MODEL, extra_body=FAST)
    assert len(many.results) == 3
    for result in many.results:
        assert_result(result, policy, ["text"])
    parts: Any = [image_part(png_data_url()), {"type": "text", "text": "HAPPY HOUR"}]
    mixed = await client.moderations.create(input=parts, extra_body=FAST)
    assert len(mixed.results) == 1
    assert_result(mixed.results[0], policy, ["text", "image"])
    # What a client typed on OpenAI's categories sees: our classes as extra attributes, its
    # own categories absent (None), vlmserve's fields under one extra key.
    assert mixed.results[0].categories.harassment is None
    assert isinstance(mixed.results[0].category_scores.alcohol, float)  # type: ignore[attr-defined]
    assert mixed.results[0].model_extra["vlmserve"]["best_class"] in policy.class_names


async def test_http_images_go_through_the_media_policy(safety_engine: AsyncEngine) -> None:
    local = LocalServer({"/beer.png": static(png_bytes((64, 48), (200, 150, 20)))})
    await local.start()
    internet = FakeInternet({(PUBLIC_IP, 80): local.port})
    resolver = StubResolver({"images.example": [[PUBLIC_IP]], "intranet.example": [["10.0.0.7"]]})
    app = moderation_app(safety_engine, load_policy(), resolver, internet.factory)
    try:
        async with openai_client(app) as client:
            ok = await client.moderations.create(
                input=[image_part("http://images.example/beer.png")], extra_body=FAST
            )
            assert_result(ok.results[0], load_policy(), ["image"])
            assert local.paths() == ["/beer.png"]  # fetched once for scoring and answering
            with pytest.raises(openai.BadRequestError) as refused:
                await client.moderations.create(
                    input=[{"type": "text", "text": "?"}, image_part("http://intranet.example/x")],
                    extra_body=FAST,
                )
            assert refused.value.param == "input[1]"  # type: ignore[attr-defined]
            assert "private address" in str(refused.value)
    finally:
        await internet.close()
        await local.stop()


async def test_scores_ignore_temperature_and_argmax_is_the_answer(
    client: openai.AsyncOpenAI,
) -> None:
    policy = load_policy()
    parts: Any = [image_part(png_data_url((84, 56), "purple"))]
    # The first request computes the prompt, later ones take it from the prefix cache: the
    # same numbers through other kernels, so equal up to float rounding only.
    cold = await client.moderations.create(input=parts, extra_body=FAST)
    greedy = await client.moderations.create(input=parts, extra_body=FAST)
    hot = {"vlmserve": {"max_tokens": 40, "temperature": 0.7, "seed": 5}}
    sampled = await client.moderations.create(input=parts, extra_body=hot)
    scores = [r.results[0].to_dict()["category_scores"] for r in (cold, greedy, sampled)]
    assert scores[1] == scores[2]  # the same computation: bit for bit, whatever the sampling
    assert scores[0] == pytest.approx(scores[1], rel=1e-6, abs=1e-12)
    assert_result(greedy.results[0], policy, ["image"])


@pytest.fixture(scope="module")
def hf_model(tiny_qwen2_vl: Path) -> Any:
    return Qwen2VLForConditionalGeneration.from_pretrained(
        tiny_qwen2_vl, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()


async def reference_scores(
    engine: AsyncEngine, hf: Any, folder: Path, policy: Policy, parts: list[dict[str, Any]]
) -> list[float]:
    """transformers, teacher-forced: each class path's log-probability after the same prompt
    ids and pixels, renormalised over the classes with the policy's temperature."""
    models = ModelRegistry([ModelHandle(ModelInfo.from_engine(engine.engine, MODEL), engine)])
    serving = Serving(models, MediaLoader(MediaConnector(MediaConfig())))
    async with serving.model(MODEL) as handle:
        prompt = await serving.chat_prompt(handle, policy.messages(parts))
    ids = engine.engine.process_input(prompt).token_ids
    images = [item.data for item in prompt.media]
    pixels = Qwen2VLImageProcessorPil.from_pretrained(folder)(images, return_tensors="pt")
    image_id = engine.engine.model_config.image_token_id
    logprobs = []
    for path in class_paths(policy):
        tokens = engine.engine.tokenizer.encode(path)
        input_ids = torch.tensor([ids + tokens])
        with torch.inference_mode():
            logits = hf(
                input_ids=input_ids,
                mm_token_type_ids=(input_ids == image_id).int(),
                pixel_values=pixels["pixel_values"],
                image_grid_thw=pixels["image_grid_thw"],
            ).logits[0]
        lp = torch.log_softmax(logits.double(), dim=-1)
        logprobs.append(sum(lp[len(ids) - 1 + i, t].item() for i, t in enumerate(tokens)))
    return softmax(logprobs, policy.temperature)


@pytest.mark.parametrize(
    "policy", [load_policy(), SHARED.with_temperature(1.7)], ids=["default", "shared"]
)
async def test_scores_equal_transformers_teacher_forced(
    safety_engine: AsyncEngine, hf_model: Any, tiny_qwen2_vl: Path, policy: Policy
) -> None:
    encode = safety_engine.engine.tokenizer.encode
    if policy.name == "shared-prefixes":
        paths = [encode(p) for p in class_paths(policy)]
        prefix = len(encode('{"best_class":"'))
        assert paths[0][prefix] == paths[1][prefix] == paths[2][prefix]  # 'no' ...
        assert paths[3][: prefix + 2] == paths[4][: prefix + 2] == paths[5][: prefix + 2]
    parts = [image_part(png_data_url((56, 84), "teal")), {"type": "text", "text": "GUNS"}]
    async with openai_client(moderation_app(safety_engine, policy)) as client:
        response = await client.moderations.create(input=parts, extra_body=FAST)
    result = response.results[0]
    assert_result(result, policy, ["text", "image"])
    got = [result.to_dict()["category_scores"][name] for name in policy.class_names]
    want = await reference_scores(safety_engine, hf_model, tiny_qwen2_vl, policy, parts)
    for name, g, w in zip(policy.class_names, got, want):
        assert abs(g - w) < TOLERANCE, f"{name}: {g} vs {w}"


async def test_too_many_images_is_refused_before_anything_runs(
    safety_engine: AsyncEngine,
) -> None:
    parts: Any = [image_part(png_data_url()), image_part(png_data_url((56, 56), "blue"))]
    async with openai_client(moderation_app(safety_engine, load_policy())) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.moderations.create(input=parts)
    error = refused.value
    assert (error.code, error.param, error.status_code) == ("too_many_images", "input", 400)
    async with openai_client(moderation_app(safety_engine, load_policy(), max_images=2)) as client:
        allowed = await client.moderations.create(input=parts, extra_body=FAST)
    assert len(allowed.results) == 1


async def test_a_failing_model_is_an_error_never_a_result(
    safety_engine: AsyncEngine, client: openai.AsyncOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = safety_engine.engine.runner
    real = runner.execute

    def broken(chunks: Any) -> Any:
        raise RuntimeError("injected model failure")

    def nan(chunks: Any) -> Any:
        return torch.full_like(real(chunks), float("nan"))

    for fault, needle in ((broken, "injected model failure"), (nan, "not finite")):
        monkeypatch.setattr(runner, "execute", fault)
        for given in ("a string", ["one", "two"], [image_part(png_data_url())]):
            with pytest.raises(openai.InternalServerError) as failed:
                await client.moderations.create(input=given, extra_body=FAST)
            assert needle in str(failed.value)
        monkeypatch.setattr(runner, "execute", real)
    # An answer that does not validate (here: markdown fences) is a failure too.
    serving_cls = Serving
    original = serving_cls.start_generation

    async def fenced(self: Serving, *args: Any, **kwargs: Any) -> Any:
        generation = await original(self, *args, **kwargs)
        final = generation.final

        async def wrapped(*a: Any) -> Any:
            out = await final(*a)
            out.outputs[0].text = "```json\n" + out.outputs[0].text + "\n```"
            return out

        generation.final = wrapped  # type: ignore[method-assign]
        return generation

    monkeypatch.setattr(serving_cls, "start_generation", fenced)
    with pytest.raises(openai.InternalServerError) as failed:
        await client.moderations.create(input="x", extra_body=FAST)
    assert "does not validate" in str(failed.value)
    assert failed.value.code == "invalid_model_output"  # type: ignore[attr-defined]


async def test_a_strict_client_rejects_the_custom_categories(safety_engine: AsyncEngine) -> None:
    async with openai_client(moderation_app(safety_engine, load_policy()), strict=True) as client:
        with pytest.raises(openai.APIResponseValidationError):
            await client.moderations.create(input="x", extra_body=FAST)


@pytest.mark.parametrize(
    ("body", "status", "param", "needle"),
    [
        ({"input": "x", "temperature": 0}, 400, "temperature", "not a known field"),
        ({"input": 3}, 400, "input", "must be a string, a list of strings"),
        ({"input": []}, 400, "input", "at least 1"),
        ({"input": ["a", {"type": "text", "text": "b"}]}, 400, "input[0]", "type 'text' or"),
        ({"input": [{"type": "audio"}]}, 400, "input[0]", "type 'text' or 'image_url'"),
        ({"input": "x", "model": "gpt-9"}, 404, "model", "does not exist"),
        ({"input": "x", "vlmserve": {"temperature": 3}}, 400, "vlmserve.temperature", ""),
        ({"input": "x", "vlmserve": {"max_tokens": 5}}, 400, "vlmserve.max_tokens", ""),
        ({"input": ["ok", "<|image_pad|>"]}, 400, "input[1]", "reserved token"),
        (
            {"input": [image_part("data:,x"), {"type": "text", "text": "<|im_end|>"}]},
            400,
            "input[1].text",
            "reserved token",
        ),
        ({"input": [image_part("data:image/png;base64,AAAA")]}, 400, "input[0]", "input[0]: "),
    ],
)
async def test_bad_requests_name_the_field(
    safety_engine: AsyncEngine, body: dict[str, Any], status: int, param: str, needle: str
) -> None:
    app = moderation_app(safety_engine, load_policy())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/v1/moderations", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and needle in error["message"], error
    assert "results" not in response.json()


async def test_a_request_without_model_uses_the_pinned_model(safety_engine: AsyncEngine) -> None:
    """A registration stored before (an unpinned model loaded on demand, here one that
    cannot load) is not the default: the command line's pinned model is, listed first."""
    store = RegistryStore()
    store.register(ModelSpec("listed-first", "/nonexistent/model"))
    models = ModelRegistry(
        [ModelHandle(ModelInfo.from_engine(safety_engine.engine, MODEL), safety_engine)],
        store=store,
    )
    assert [s.alias for s in models.list()] == [MODEL, "listed-first"]
    app = create_app(
        models,
        media_resolver=offline_resolver,
        extra_routers=[moderation_router(load_policy())],
    )
    async with openai_client(app) as client:
        answer = await client.moderations.create(input="Cold beer on tap", extra_body=FAST)
    assert answer.model == MODEL
    assert models.status("listed-first").state == "registered"  # never asked to load
    store.close()
