"""The serving layer on its own, as the safety app or a Ray replica would use it: no HTTP,
plain dataclasses in, `RequestOutput`s out, every refusal a `ServingError` with the status,
message and param the HTTP API shows."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.serving.conftest import MODEL
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.serving import (
    ChatRequest,
    ClientDisconnected,
    CompletionRequest,
    Serving,
    ServingError,
)
from vlmserve.types import RequestOutput, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=6)


def data_url(color: str = "red") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def user(*parts: object) -> list[dict[str, object]]:
    return [{"role": "user", "content": list(parts)}]


def image(url: str) -> dict[str, object]:
    return {"type": "image_url", "image_url": {"url": url}}


def text(value: str) -> dict[str, object]:
    return {"type": "text", "text": value}


async def test_chat_with_an_image_and_a_completion(serving: Serving, engine: AsyncEngine) -> None:
    chat = await serving.chat(MODEL, ChatRequest(user(image(data_url()), text("Which?")), GREEDY))
    assert chat.finished and chat.request_id.startswith("chatcmpl-")
    image_id = engine.engine.model_config.image_token_id
    assert chat.prompt_token_ids.count(image_id) > 1  # the placeholder was expanded
    done = await serving.completion(MODEL, CompletionRequest([5, 6, 7], GREEDY))
    assert done.prompt_token_ids == [5, 6, 7] and done.request_id.startswith("cmpl-")
    assert serving.models.status(MODEL).in_flight == 0


async def test_streamed_outputs_grow_and_match_the_whole_answer(serving: Serving) -> None:
    request = ChatRequest(user(text("Count.")), SamplingParams(temperature=0, max_tokens=8))
    whole = await serving.chat(MODEL, request)
    seen: list[RequestOutput] = []
    async with serving.model(MODEL) as handle:
        generation = await serving.start_chat(
            handle, ChatRequest(request.messages, request.params), observe=seen.append
        )
        outputs = [out async for out in generation.outputs()]
    assert outputs[-1].finished and outputs == seen
    assert outputs[-1].outputs[0].token_ids == whole.outputs[0].token_ids


@pytest.mark.parametrize(
    ("alias", "messages", "status", "param", "message"),
    [
        ("gpt-9", user(text("x")), 404, "model", "the model 'gpt-9' does not exist"),
        (MODEL, [], 400, "messages", "messages must be a non-empty list"),
        (
            MODEL,
            user(image(data_url()), image(data_url("blue"))),
            400,
            "messages",
            "2 images in one request; this server allows at most 1",
        ),
        (
            MODEL,
            user(text("<|image_pad|>")),
            400,
            "messages[0].content[0].text",
            "reserved token",
        ),
        (
            MODEL,
            user(image("http://127.0.0.1/x.png")),
            400,
            "messages[0].content[0]",
            "messages[0].content[0]: ",
        ),
    ],
)
async def test_refusals_are_serving_errors(
    serving: Serving,
    alias: str,
    messages: list[dict[str, object]],
    status: int,
    param: str,
    message: str,
) -> None:
    with pytest.raises(ServingError) as raised:
        await serving.chat(alias, ChatRequest(messages, GREEDY))
    error = raised.value
    assert (error.status, error.param) == (status, param)
    assert message in error.message
    if status == 404:
        assert error.code == "model_not_found"


async def test_engine_refusals_keep_their_field(serving: Serving, engine: AsyncEngine) -> None:
    too_long = SamplingParams(max_tokens=10_000)
    with pytest.raises(ServingError) as raised:
        await serving.completion(MODEL, CompletionRequest("hi", too_long))
    assert (raised.value.status, raised.value.param) == (400, "max_tokens")
    with pytest.raises(ServingError) as raised:
        await serving.completion(MODEL, CompletionRequest("a <|image_pad|>", GREEDY))
    assert (raised.value.status, raised.value.param) == (400, "prompt")
    engine.max_waiting = 0
    try:
        with pytest.raises(ServingError) as raised:
            await serving.completion(MODEL, CompletionRequest("hi", GREEDY))
    finally:
        engine.max_waiting = 1024
    assert raised.value.status == 429 and raised.value.headers["Retry-After"].isdigit()


async def test_a_caller_that_leaves_aborts_the_request(
    serving: Serving, engine: AsyncEngine
) -> None:
    async def gone() -> bool:
        return True

    long = SamplingParams(max_tokens=400, ignore_eos=True)
    async with serving.model(MODEL) as handle:
        generation = await serving.start_completion(handle, CompletionRequest("go", long))
        with pytest.raises(ClientDisconnected):
            await generation.final(gone)
    for _ in range(500):
        if not engine.engine.requests:
            break
        await asyncio.sleep(0.01)
    assert not engine.engine.requests


# Runs the serving layer in a process where importing a web framework fails.
WITHOUT_WEB_STACK = """
import asyncio, base64, io, json, sys
from importlib.abc import MetaPathFinder

BANNED = ("fastapi", "starlette", "pydantic", "uvicorn")

class NoWebStack(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BANNED:
            raise ImportError(f"{name} is not available here")
        return None

sys.meta_path.insert(0, NoWebStack())
from PIL import Image
from vlmserve.config import EngineConfig, MediaConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.engine.engine import build_engine
from vlmserve.multimodal.fetch import MediaConnector
from vlmserve.registry import ModelHandle, ModelInfo, ModelRegistry
from vlmserve.serving import ChatRequest, MediaLoader, Serving, ServingError
from vlmserve.types import SamplingParams

async def main():
    engine = AsyncEngine(build_engine(EngineConfig(sys.argv[1], max_model_len=512))).start()
    models = ModelRegistry([ModelHandle(ModelInfo.from_engine(engine.engine, "m"), engine)])
    serving = Serving(models, MediaLoader(MediaConnector(MediaConfig())))
    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), "red").save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]
    messages = [{"role": "user", "content": content}]
    out = await serving.chat("m", ChatRequest(messages, SamplingParams(max_tokens=4)))
    try:
        await serving.chat("nope", ChatRequest(messages, SamplingParams(max_tokens=4)))
    except ServingError as exc:
        refused = exc.status
    await models.close(drain_timeout=10)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BANNED)
    print(json.dumps({"finished": out.finished, "refused": refused, "loaded": loaded}))

asyncio.run(main())
"""


def test_serving_runs_without_any_web_framework(tiny_qwen2_vl: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_WEB_STACK, str(tiny_qwen2_vl)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"finished": True, "refused": 404, "loaded": []}
