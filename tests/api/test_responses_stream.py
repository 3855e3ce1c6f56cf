"""The Responses API's event stream when the engine goes away mid-answer: an `error` event,
then `response.failed` carrying the same error, sequence numbers still rising, and nothing
stored for the failed response."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.api.conftest import MODEL, client_for, offline_resolver
from vlmserve.api.app import create_app
from vlmserve.api.server_config import ServerConfig
from vlmserve.config import EngineConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.engine.engine import build_engine
from vlmserve.registry import ModelHandle, ModelInfo, ModelRegistry


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event type, data) of each `event:` / `data:` pair, checking the two agree."""
    out = []
    for block in text.strip().split("\n\n"):
        kind_line, data_line = block.split("\n")
        kind = kind_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == kind
        out.append((kind, data))
    return out


async def test_a_failure_mid_stream_is_an_error_event_then_failed(
    tiny_qwen2_vl: Path, tmp_path: Path
) -> None:
    engine = AsyncEngine(build_engine(EngineConfig(str(tiny_qwen2_vl), max_model_len=1024)))
    models = ModelRegistry(
        [ModelHandle(ModelInfo.from_engine(engine.engine, MODEL), engine.start())]
    )
    app = create_app(models, ServerConfig(data_dir=str(tmp_path)), media_resolver=offline_resolver)
    body = {
        "model": MODEL,
        "input": "Hello",
        "stream": True,
        "temperature": 0,
        "max_output_tokens": 900,
    }
    async with client_for(app) as client:
        streaming = asyncio.create_task(client.post("/v1/responses", json=body))
        for _ in range(6000):  # bounded: 60 s on a loaded machine
            if engine.engine.requests:
                break
            await asyncio.sleep(0.01)
        assert engine.engine.requests, "the request never reached the engine"
        await models.close(drain_timeout=0.05)
        response = await asyncio.wait_for(streaming, 60)
        assert response.status_code == 200  # the status line went out with the first event
        stream = events(response.text)
        kinds = [kind for kind, _ in stream]
        assert kinds[:2] == ["response.created", "response.in_progress"]
        assert kinds[-2:] == ["error", "response.failed"], kinds
        assert [data["sequence_number"] for _, data in stream] == list(range(len(stream)))
        error, failed = stream[-2][1], stream[-1][1]["response"]
        assert error["code"] == "engine_closed" and error["message"]
        assert failed["status"] == "failed"
        assert failed["error"] == {"code": error["code"], "message": error["message"]}
        assert failed["id"] == stream[0][1]["response"]["id"]
        # A failed response is not kept: nothing to continue from or to retrieve.
        stored = await client.get(f"/v1/responses/{failed['id']}")
        assert stored.status_code == 404, stored.text
