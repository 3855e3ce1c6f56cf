"""Several keys, each a tenant: isolation of media UUIDs and of the prefix cache, per-key
rate and concurrency limits (429 with Retry-After), a keys file re-read when it changes
(issue 9, "what to build")."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.api.conftest import assert_error, chat_body, client_for, make_app, png_data_url
from vlmserve.api.server_config import ServerConfig
from vlmserve.api.tenants import Grant, Limiter, Tenant, cache_salt, key_digest, load_keys_file
from vlmserve.engine.async_engine import AsyncEngine

CHAT = "/v1/chat/completions"
ALICE, BOB, SLOW, ONE_AT_A_TIME = "sk-alice-1", "sk-bob-1", "sk-slow-1", "sk-single-1"
KEYS = f"""
{ALICE}: {{tenant: alice}}
{BOB}: {{tenant: bob}}
{SLOW}: {{tenant: carol, requests_per_minute: 1}}
{ONE_AT_A_TIME}: {{tenant: carol, max_concurrent: 1}}
"""


def write_keys(path: Path, text: str, bump: int = 0) -> None:
    path.write_text(text)
    # A distinct modification time even on coarse clocks: the reload keys on it.
    stamp = path.stat().st_mtime_ns + bump * 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    write_keys(path, KEYS)
    return path


@pytest.fixture
def app(async_engine: AsyncEngine, keys_file: Path) -> FastAPI:
    return make_app(
        async_engine, api_key="sk-static", admin_api_key="sk-admin", api_keys_file=str(keys_file)
    )


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def chat(client: httpx.AsyncClient, key: str, content: Any, **fields: Any) -> httpx.Response:
    body = chat_body(content, **fields)
    if isinstance(content, list) and content and content[0].get("type") == "text":
        body["messages"] = [{"role": "system", "content": content}]  # see below
    return await client.post(CHAT, json=body, headers=auth(key))


def cached(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return int(response.json()["usage"]["prompt_tokens_details"]["cached_tokens"])


async def test_every_configured_key_works_and_nothing_else(client: httpx.AsyncClient) -> None:
    for key in (ALICE, BOB, "sk-static", "sk-admin"):
        assert (await chat(client, key, "hi")).status_code == 200, key
    assert_error(await client.post(CHAT, json=chat_body()), 401)
    assert_error(await chat(client, "sk-alice-2", "hi"), 401)
    # /metrics stays the admin key's.
    assert (await client.get("/metrics", headers=auth(ALICE))).status_code == 401
    assert (await client.get("/metrics", headers=auth("sk-admin"))).status_code == 200


async def test_a_tenant_cannot_use_another_tenants_media_uuid(client: httpx.AsyncClient) -> None:
    name = f"sku-{uuid.uuid4().hex}"
    with_data = [{"type": "image_url", "image_url": {"url": png_data_url(), "uuid": name}}]
    by_uuid = [{"type": "image_url", "image_url": {"uuid": name}}]
    assert (await chat(client, ALICE, with_data)).status_code == 200
    message = assert_error(await chat(client, BOB, by_uuid), 400, "messages[0].content[0]")
    assert "not in the media cache" in message
    assert (await chat(client, ALICE, by_uuid)).status_code == 200
    # Nor with a cache_salt of its own: the salt narrows a tenant's namespace, never widens.
    assert_error(await chat(client, ALICE, by_uuid, cache_salt="other"), 400)


async def test_no_cache_hit_on_another_tenants_prompt(client: httpx.AsyncClient) -> None:
    # A system turn of its own: nothing of this prompt was ever cached, not even the
    # template's default system turn.
    prompt = [{"type": "text", "text": f"{uuid.uuid4().hex} " * 12}]  # several full blocks
    assert cached(await chat(client, ALICE, prompt)) == 0
    assert cached(await chat(client, ALICE, prompt)) > 0  # alice's own prefix is cached
    assert cached(await chat(client, BOB, prompt)) == 0  # ... and means nothing to bob
    assert cached(await chat(client, "sk-static", prompt)) == 0
    # A request's own cache_salt (vLLM's name) separates requests of one tenant.
    assert cached(await chat(client, ALICE, prompt, cache_salt="session-2")) == 0
    assert cached(await chat(client, ALICE, prompt, cache_salt="session-2")) > 0
    text = prompt[0]["text"]
    completion = {"model": "tiny", "prompt": text, "max_tokens": 2}
    response = await client.post("/v1/completions", json=completion, headers=auth(BOB))
    assert cached(response) == 0
    response = await client.post("/v1/completions", json=completion, headers=auth(BOB))
    assert cached(response) > 0


async def test_requests_per_minute_answer_429_with_retry_after(client: httpx.AsyncClient) -> None:
    assert (await chat(client, SLOW, "hi")).status_code == 200
    response = await chat(client, SLOW, "hi")
    assert "1 requests per minute" in assert_error(response, 429)
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    # Another key of the same tenant has its own limits.
    assert (await chat(client, ONE_AT_A_TIME, "hi")).status_code == 200


async def test_concurrent_requests_answer_429_until_one_ends(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    limiter = app.state.tenants.limiter
    first = asyncio.ensure_future(chat(client, ONE_AT_A_TIME, "story", max_tokens=200))
    for _ in range(500):  # bounded: until the first request holds its slot
        if limiter._active:
            break
        await asyncio.sleep(0.01)
    response = await chat(client, ONE_AT_A_TIME, "hi")
    assert_error(response, 429)
    assert response.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert response.headers["retry-after"] == "1"
    assert (await first).status_code == 200
    assert not limiter._active  # released when the response ended
    stream = await chat(client, ONE_AT_A_TIME, "hi", stream=True)
    assert stream.status_code == 200 and not limiter._active
    assert (await chat(client, ONE_AT_A_TIME, "hi")).status_code == 200


async def test_the_keys_file_is_reread_when_it_changes(
    client: httpx.AsyncClient, keys_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dave = "sk-dave-1"
    assert_error(await chat(client, dave, "hi"), 401)
    write_keys(keys_file, f"{ALICE}: {{tenant: alice}}\n{dave}: {{tenant: dave}}\n", bump=1)
    assert (await chat(client, dave, "hi")).status_code == 200
    assert_error(await chat(client, BOB, "hi"), 401)  # revoked
    # A file that does not load keeps the keys loaded before, loudly.
    with caplog.at_level(logging.ERROR):
        write_keys(keys_file, f"{dave}: [not, a, mapping\n", bump=2)
        assert (await chat(client, dave, "hi")).status_code == 200
    assert "keeping the previous API keys" in caplog.text
    assert dave not in caplog.text  # keys never reach the logs


def test_keys_file_validation_names_the_problem_not_the_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    digest = key_digest("sk-hashed").hex()
    path.write_text(f'{{"sk-plain": {{"tenant": "a"}}, "sha256:{digest}": {{"tenant": "b"}}}}')
    grants = load_keys_file(path)
    assert grants[key_digest("sk-hashed")].tenant == Tenant("b")  # the file holds no secret
    for text, needle in (
        ('{"sk-secret-123": {"tenant": "a", "requests_per_minute": 0}}', "positive integer"),
        ('{"sk-secret-123": {"tenant": "a", "burst": 3}}', "unknown fields"),
        ('{"sk-secret-123": "a"}', "needs a mapping"),
        ('{"sha256:abc": {"tenant": "a"}}', "64 hex digits"),
        ("[]", "must map keys"),
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match=needle) as info:
            load_keys_file(path)
        assert "sk-secret-123" not in str(info.value)
    with pytest.raises(ValueError, match="must map keys"):
        ServerConfig(api_keys_file=str(path))  # a bad file stops the server at start


def test_rate_limit_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = Limiter(clock=lambda: now[0])
    grant = Grant(Tenant("t"), "t", b"k", requests_per_minute=2)
    for _ in range(2):
        with limiter.admit(grant):
            pass
    with pytest.raises(Exception) as info, limiter.admit(grant):
        pass
    assert getattr(info.value, "headers", {}) == {"Retry-After": "30"}
    now[0] = 30.0  # one token back after 60 s / 2
    with limiter.admit(grant):
        pass


def test_cache_salt_is_unambiguous_per_tenant() -> None:
    assert cache_salt(None, None) is None and cache_salt(None, "s") == "s"
    assert cache_salt(Tenant("a"), None) != cache_salt(Tenant("b"), None)
    assert cache_salt(Tenant("a,b"), "c") != cache_salt(Tenant("a"), "b,c")


async def test_without_keys_requests_have_no_tenant(async_engine: AsyncEngine) -> None:
    async with client_for(make_app(async_engine)) as client:
        assert (await client.post(CHAT, json=chat_body())).status_code == 200
