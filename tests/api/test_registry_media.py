"""Per-model media policy overrides end to end: registered over the admin API (a wider one is
a 400 naming the field), stored with the registration, and applied to that model's requests
only — a host or an image size the model's registration refuses is a 400 for it while another
model on the same server fetches the same URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import assert_error, client_for
from tests.multimodal.fakes import (
    PUBLIC_IP,
    FakeInternet,
    LocalServer,
    StubResolver,
    png_bytes,
    static,
)
from vlmserve.api.app import create_app
from vlmserve.api.server_config import ServerConfig
from vlmserve.config import EngineConfig, MediaConfig, RegistryConfig
from vlmserve.registry import LocalEngineHost, ModelRegistry

ADMIN = {"Authorization": "Bearer admin-key"}
URL = "messages[0].content[0]"


@dataclass
class Server:
    client: httpx.AsyncClient
    local: LocalServer

    async def register(self, alias: str, folder: Path, **fields: Any) -> httpx.Response:
        body = {"alias": alias, "model_name": str(folder), "max_model_len": 512, **fields}
        return await self.client.post("/v1/models/register", json=body, headers=ADMIN)

    async def describe(self, model: str, url: str) -> httpx.Response:
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 2}
        return await self.client.post("/v1/chat/completions", json=body)


@pytest.fixture
async def server(tiny_qwen2_vl: Path) -> AsyncIterator[Server]:
    local = LocalServer(
        {"/big.png": static(png_bytes((64, 48))), "/small.png": static(png_bytes())}
    )
    await local.start()
    internet = FakeInternet({(PUBLIC_IP, 80): local.port})
    resolver = StubResolver({"img.example.com": [[PUBLIC_IP]], "cdn.example.com": [[PUBLIC_IP]]})
    host = LocalEngineHost(EngineConfig("unset", kv_cache_memory_bytes=8 << 20))
    models = ModelRegistry(host=host, config=RegistryConfig(tick=0.05))
    await models.start()
    app = create_app(
        models,
        ServerConfig(admin_api_key="admin-key"),
        MediaConfig(allowed_media_domains=("*.example.com",)),
        media_resolver=resolver,
        media_transport=internet.factory,
    )
    client = client_for(app)
    try:
        yield Server(client, local)
    finally:
        await client.aclose()
        await models.close(drain_timeout=5)
        host.close()
        await internet.close()
        await local.stop()


async def test_a_model_narrows_the_media_policy_for_its_own_requests(
    server: Server, tiny_qwen2_vl: Path
) -> None:
    narrow = {"allowed_media_domains": ["img.example.com"], "max_image_pixels": 1000}
    created = await server.register("narrow", tiny_qwen2_vl, media=narrow)
    assert created.status_code == 201, created.text
    assert created.json()["registration"]["media"] == narrow
    assert (await server.register("open", tiny_qwen2_vl)).status_code == 201

    outside = await server.describe("narrow", "http://cdn.example.com/small.png")
    assert "media.allowed_media_domains" in assert_error(outside, 400, URL)
    too_big = await server.describe("narrow", "http://img.example.com/big.png")  # 3072 pixels
    assert "max_image_pixels" in assert_error(too_big, 400, URL)
    assert (await server.describe("narrow", "http://img.example.com/small.png")).status_code == 200
    # The same URLs for a model that narrows nothing: the server's policy.
    for url in ("http://cdn.example.com/small.png", "http://img.example.com/big.png"):
        assert (await server.describe("open", url)).status_code == 200, url
    # Fetched: narrow's big (refused once decoded) and small, open's two. The host outside
    # narrow's list was never contacted.
    assert server.local.paths() == ["/big.png", "/small.png", "/small.png", "/big.png"]


async def test_overrides_wider_than_the_server_are_refused_by_name(
    server: Server, tiny_qwen2_vl: Path
) -> None:
    wider = {"allowed_media_domains": ["img.example.com", "intranet.corp"]}
    refused = await server.register("wide", tiny_qwen2_vl, media=wider)
    assert "outside the server's --allowed-media-domains" in assert_error(
        refused, 400, "media.allowed_media_domains[1]"
    )
    private = await server.register(
        "wide", tiny_qwen2_vl, media={"allow_private_media_addresses": True}
    )
    assert_error(private, 400, "media.allow_private_media_addresses")
    assert (await server.client.get("/v1/models")).json()["data"] == []

    created = await server.register("m", tiny_qwen2_vl, media={"max_image_pixels": 1000})
    change = {"model_name": str(tiny_qwen2_vl), "expected_revision": 1, "media": wider}
    put = await server.client.put("/v1/models/m", json=change, headers=ADMIN)
    assert created.status_code == 201 and put.status_code == 400
    assert put.json()["error"]["param"] == "media.allowed_media_domains[1]"
