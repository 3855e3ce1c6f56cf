"""Models, probes, version, metrics, OpenAPI, completions and API keys."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

import vlmserve
from tests.api.conftest import MODEL, assert_error, chat_body, client_for, make_app
from tests.api.test_chat import sse_events
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.registry import ModelInfo


async def test_models(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"] == MODEL and card["object"] == "model" and card["max_model_len"] == 1024
    assert (await client.get(f"/v1/models/{MODEL}")).json() == card
    assert_error(await client.get("/v1/models/other"), 404, "model")
    # The model was loaded from a folder on the server: its path is nobody's business.
    assert card["root"] == MODEL


def test_model_root_is_the_hub_id_or_the_served_name(async_engine: AsyncEngine) -> None:
    engine = async_engine.engine
    hub = SimpleNamespace(
        tokenizer=engine.tokenizer,
        config=replace(engine.config, model="Qwen/Qwen2-VL-2B-Instruct"),
        max_model_len=engine.max_model_len,
    )
    assert ModelInfo.from_engine(hub, "qwen").root == "Qwen/Qwen2-VL-2B-Instruct"  # type: ignore[arg-type]
    local = ModelInfo.from_engine(engine, None)  # served under its folder's path, as given
    assert local.root == local.name == engine.config.model
    assert ModelInfo.from_engine(engine, "tiny").root == "tiny"


async def test_probes_and_version(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).json() == {"status": "ready"}
    assert (await client.get("/version")).json() == {"version": vlmserve.__version__}
    schema = (await client.get("/openapi.json")).json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(schema["paths"])


async def test_ready_is_503_when_the_engine_loop_is_gone(
    client: httpx.AsyncClient, async_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(type(async_engine), "alive", property(lambda _: False))
    assert_error(await client.get("/ready"), 503)
    assert (await client.get("/health")).status_code == 200


async def test_metrics(client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", json=chat_body(stream=True))
    await client.post("/v1/chat/completions", json=chat_body(temperature=9))
    await client.get("/nowhere")
    text = (await client.get("/metrics")).text
    for name in (
        'vlmserve_http_requests_total{route="/v1/chat/completions",status="200"} 1.0',
        'vlmserve_http_requests_total{route="/v1/chat/completions",status="400"} 1.0',
        'vlmserve_http_requests_total{route="other",status="404"} 1.0',
        f'vlmserve_time_to_first_token_seconds_count{{model="{MODEL}"}} 1.0',
        f'vlmserve_inter_token_latency_seconds_count{{model="{MODEL}"}}',
        f'vlmserve_e2e_request_latency_seconds_count{{model="{MODEL}"}} 1.0',
        f'vlmserve_prompt_tokens_total{{model="{MODEL}"}}',
        f'vlmserve_generation_tokens_total{{model="{MODEL}"}}',
        f'vlmserve_forced_tokens_total{{model="{MODEL}"}} 0.0',
        "vlmserve_num_requests_waiting",
        "vlmserve_num_requests_running",
        "vlmserve_kv_cache_usage_ratio",
        "vlmserve_prefix_cache_hits_total",
        "vlmserve_grammar_compile_seconds_total",
        "vlmserve_grammar_compiles_total",
        "vlmserve_grammar_cache_hits_total",
        "vlmserve_media_fetch_seconds_count",
        "vlmserve_media_fetch_bytes_total",
    ):
        assert name in text, name


async def test_completions(client: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "prompt": "def main(", "max_tokens": 5, "temperature": 0}
    whole = (await client.post("/v1/completions", json=body)).json()
    assert whole["id"].startswith("cmpl-") and whole["object"] == "text_completion"
    (choice,) = whole["choices"]
    assert choice["finish_reason"] in ("stop", "length") and choice["logprobs"] is None
    assert whole["usage"]["completion_tokens"] <= 5
    events = sse_events((await client.post("/v1/completions", json={**body, "stream": True})).text)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == choice["text"]
    ids = (await client.post("/v1/completions", json={**body, "prompt": [5, 6, 7]})).json()
    assert ids["usage"]["prompt_tokens"] == 3
    lp = (await client.post("/v1/completions", json={**body, "logprobs": 2, "n": 2})).json()
    for c in lp["choices"]:
        logprobs = c["logprobs"]
        assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"])
        assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
        assert "".join(logprobs["tokens"]) == c["text"] or c["finish_reason"] == "stop"
        assert logprobs["text_offset"][0] == 0


@pytest.fixture
def keyed_app(async_engine: AsyncEngine) -> FastAPI:
    return make_app(async_engine, api_key="user-key", admin_api_key="admin-key")


async def test_api_keys(keyed_app: FastAPI) -> None:
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async with client_for(keyed_app) as client:
        response = await client.get("/v1/models")
        assert_error(response, 401)
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert_error(await client.get("/v1/models", headers=auth("wrong")), 401)
        assert_error(await client.get("/v1/models", headers={"Authorization": "user-key"}), 401)
        assert (await client.get("/v1/models", headers=auth("user-key"))).status_code == 200
        assert (await client.get("/v1/models", headers=auth("admin-key"))).status_code == 200
        chat = await client.post("/v1/chat/completions", json=chat_body())
        assert_error(chat, 401)
        assert_error(await client.post("/v1/completions", json={}), 401)
        assert_error(await client.get("/metrics"), 401)
        assert_error(await client.get("/metrics", headers=auth("user-key")), 401)
        assert (await client.get("/metrics", headers=auth("admin-key"))).status_code == 200
        for open_route in ("/health", "/ready", "/version", "/openapi.json"):
            assert (await client.get(open_route)).status_code == 200
