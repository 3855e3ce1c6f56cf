"""The admin API over HTTP (with a fake engine host: these tests are about the contract):
the serverless payload, 201/200/409 on registration, revisions, every route behind the
admin key, every bad field named, and the model list's lifecycle fields."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.api.conftest import assert_error, client_for, offline_resolver
from tests.registry.fakes import MIB, FakeHost
from vlmserve.api.app import create_app
from vlmserve.api.server_config import ServerConfig
from vlmserve.config import RegistryConfig
from vlmserve.registry import ModelRegistry

ADMIN = {"Authorization": "Bearer admin-key"}
USER = {"Authorization": "Bearer user-key"}
SERVERLESS = {
    "alias": "qwen",
    "model_name": "Qwen/Qwen2-VL-2B-Instruct",
    "max_model_len": 4096,
    "gpu_memory_utilization": 0.85,
}


@pytest.fixture
async def admin_client() -> AsyncIterator[tuple[httpx.AsyncClient, FakeHost]]:
    host = FakeHost(load_s=0.05)
    models = ModelRegistry(host=host, config=RegistryConfig(tick=0.05))
    await models.start()
    config = ServerConfig(api_key="user-key", admin_api_key="admin-key")
    app = create_app(models, config, media_resolver=offline_resolver)
    async with client_for(app) as client:
        yield client, host
    await models.close(drain_timeout=1)


async def register(client: httpx.AsyncClient, **fields: Any) -> httpx.Response:
    return await client.post("/v1/models/register", json={**SERVERLESS, **fields}, headers=ADMIN)


async def test_registration_with_the_serverless_payload_loads_nothing(
    admin_client: tuple[httpx.AsyncClient, FakeHost],
) -> None:
    client, host = admin_client
    created = await register(client)
    assert created.status_code == 201, created.text
    card = created.json()
    assert (card["id"], card["state"], card["revision"], card["memory_bytes"]) == (
        "qwen",
        "registered",
        1,
        None,
    )
    assert card["registration"]["gpu_memory_utilization"] == 0.85
    assert card["root"] == "Qwen/Qwen2-VL-2B-Instruct"  # a hub id is no server path
    assert host.loads == []
    again = await register(client)
    assert again.status_code == 200 and again.json()["revision"] == 1
    conflict = await register(client, max_model_len=2048)
    assert_error(conflict, 409)
    assert "registered with another spec (revision 1)" in conflict.json()["error"]["message"]
    listed = (await client.get("/v1/models", headers=USER)).json()["data"]
    assert [(m["id"], m["state"]) for m in listed] == [("qwen", "registered")]
    assert host.loads == []


async def test_a_request_loads_it_and_the_list_shows_what_was_measured(
    admin_client: tuple[httpx.AsyncClient, FakeHost],
) -> None:
    client, host = admin_client
    await register(client, keep_alive="10m")
    body = {"model": "qwen", "prompt": [1, 2, 3], "max_tokens": 2}
    response = await client.post("/v1/completions", json=body, headers=USER)
    assert response.status_code == 200, response.text
    [card] = (await client.get("/v1/models", headers=USER)).json()["data"]
    assert card["state"] == "ready" and card["in_flight"] == 0 and card["last_error"] is None
    assert card["memory_bytes"] == 100 * MIB and card["load_seconds"] > 0
    assert card["loaded_at"] and 590 <= card["expires_at"] - card["loaded_at"] <= 601
    one = (await client.get("/v1/models/qwen", headers=USER)).json()
    assert one["state"] == "ready" and "registration" not in one  # users see no settings
    assert host.loads == ["qwen"]


async def test_load_unload_replace_and_remove(
    admin_client: tuple[httpx.AsyncClient, FakeHost],
) -> None:
    client, host = admin_client
    await register(client)
    loaded = await client.post("/v1/models/qwen/load", json={"wait": True}, headers=ADMIN)
    assert loaded.status_code == 200 and loaded.json()["state"] == "ready"
    unloaded = await client.post("/v1/models/qwen/unload", headers=ADMIN)
    assert unloaded.json()["state"] == "registered" and host.unloads == ["qwen"]

    change = {"model_name": "/models/qwen-v2", "expected_revision": 1}
    replaced = await client.put("/v1/models/qwen", json=change, headers=ADMIN)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["revision"] == 2
    assert replaced.json()["registration"]["max_model_len"] is None  # a PUT replaces it all
    stale = await client.put("/v1/models/qwen", json=change, headers=ADMIN)
    assert_error(stale, 409)
    assert "expected_revision 1 is not the current revision" in stale.json()["error"]["message"]
    missing = await client.put("/v1/models/nope", json=change, headers=ADMIN)
    assert_error(missing, 404, "model")

    removed = await client.delete("/v1/models/qwen", headers=ADMIN)
    assert removed.json() == {"id": "qwen", "object": "model", "deleted": True}
    assert_error(await client.get("/v1/models/qwen", headers=USER), 404, "model")
    assert_error(await client.delete("/v1/models/qwen", headers=ADMIN), 404, "model")


async def test_aliases_with_slashes_and_load_failures(
    admin_client: tuple[httpx.AsyncClient, FakeHost],
) -> None:
    client, host = admin_client
    host.broken.add("org/broken")
    await register(client, alias="org/broken")
    failed = await client.post("/v1/models/org/broken/load", json={"wait": True}, headers=ADMIN)
    assert_error(failed, 503, "model")
    assert failed.headers["retry-after"] == "10"
    assert "its last load failed (FileNotFoundError" in failed.json()["error"]["message"]
    card = (await client.get("/v1/models/org/broken", headers=USER)).json()
    assert card["state"] == "failed" and card["last_error"].startswith("FileNotFoundError")


ROUTES = [
    ("POST", "/v1/models/register", SERVERLESS),
    ("PUT", "/v1/models/qwen", {"model_name": "x", "expected_revision": 1}),
    ("POST", "/v1/models/qwen/load", None),
    ("POST", "/v1/models/qwen/unload", None),
    ("DELETE", "/v1/models/qwen", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_every_admin_route_needs_the_admin_key(
    admin_client: tuple[httpx.AsyncClient, FakeHost], method: str, path: str, body: object
) -> None:
    client, _ = admin_client
    for headers, status in (
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Basic admin-key"}, 401),
        (USER, 403),
    ):
        response = await client.request(method, path, json=body, headers=headers)
        assert_error(response, status)
    allowed = await client.request(method, path, json=body, headers=ADMIN)
    assert allowed.status_code not in (401, 403)


async def test_without_an_admin_key_administration_is_off() -> None:
    models = ModelRegistry(host=FakeHost())
    app = create_app(models, ServerConfig(), media_resolver=offline_resolver)
    async with client_for(app) as client:
        for method, path, body in ROUTES:
            response = await client.request(method, path, json=body, headers=ADMIN)
            message = assert_error(response, 403)
            assert "start it with --admin-api-key" in message
            assert response.json()["error"]["code"] == "admin_disabled"
        assert (await client.get("/v1/models")).status_code == 200  # users unaffected
    await models.close(drain_timeout=1)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"alias": None}, "alias"),
        ({"alias": ""}, "alias"),
        ({"alias": "trailing "}, "alias"),
        ({"model_name": 7}, "model_name"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"max_model_len": "4096"}, "max_model_len"),
        ({"gpu_memory_utilization": 1.2}, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": "high"}, "gpu_memory_utilization"),
        ({"max_num_seqs": -1}, "max_num_seqs"),
        ({"dtype": "int4"}, "dtype"),
        ({"device": "tpu"}, "device"),
        ({"kv_cache_memory_bytes": 0}, "kv_cache_memory_bytes"),
        ({"limit_mm_per_prompt": {"audio": 1}}, "limit_mm_per_prompt.audio"),
        ({"limit_mm_per_prompt": {"image": "2"}}, "limit_mm_per_prompt.image"),
        ({"keep_alive": "forever"}, "keep_alive"),
        ({"keep_alive": -2}, "keep_alive"),
        ({"max_waiting": 0}, "max_waiting"),
        ({"pinned": "yes"}, "pinned"),
        ({"load_now": 1}, "load_now"),
        ({"quantization": "awq"}, "quantization"),
        ({"media": "strict"}, "media"),
        ({"media": {"max_pixels": 5}}, "media.max_pixels"),
        ({"media": {"max_image_pixels": "5"}}, "media.max_image_pixels"),
        ({"media": {"max_bytes_per_item": 0}}, "media.max_bytes_per_item"),
        ({"media": {"allowed_media_domains": []}}, "media.allowed_media_domains"),
        (
            {"media": {"allowed_media_domains": ["ok.example", "*"]}},
            "media.allowed_media_domains[1]",
        ),
        ({"media": {"allowed_media_ports": [443, 0]}}, "media.allowed_media_ports[1]"),
        ({"media": {"allowed_image_formats": ["PNG", "../x"]}}, "media.allowed_image_formats[1]"),
        # Wider than the server (the default policy): never granted.
        ({"media": {"allow_private_media_addresses": True}}, "media.allow_private_media_addresses"),
        ({"media": {"allowed_media_ports": [443, 8080]}}, "media.allowed_media_ports[1]"),
        ({"media": {"media_max_redirects": 2}}, "media.media_max_redirects"),
        ({"media": {"max_image_pixels": 10**9}}, "media.max_image_pixels"),
        ({"media": {"allowed_image_formats": ["PNG", "TIFF"]}}, "media.allowed_image_formats[1]"),
    ],
)
async def test_every_bad_payload_is_a_400_naming_the_field(
    admin_client: tuple[httpx.AsyncClient, FakeHost], fields: dict[str, Any], param: str
) -> None:
    client, host = admin_client
    body = {**SERVERLESS, **fields}
    if fields.get("alias", "") is None:
        del body["alias"]
    response = await client.post("/v1/models/register", json=body, headers=ADMIN)
    message = assert_error(response, 400, param)
    assert param in message
    assert host.loads == [] and (await client.get("/v1/models", headers=USER)).json()["data"] == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model_name": "x"}, "expected_revision"),
        ({"model_name": "x", "expected_revision": 0}, "expected_revision"),
        ({"model_name": "x", "expected_revision": 1, "alias": "other"}, "alias"),
        ({"expected_revision": 1}, "model_name"),
    ],
)
async def test_bad_replacements_name_the_field(
    admin_client: tuple[httpx.AsyncClient, FakeHost], body: dict[str, Any], param: str
) -> None:
    client, _ = admin_client
    await register(client)
    assert_error(await client.put("/v1/models/qwen", json=body, headers=ADMIN), 400, param)
    bad_load = await client.post("/v1/models/qwen/load", json={"wait": "no"}, headers=ADMIN)
    assert_error(bad_load, 400, "wait")


async def test_a_request_with_a_bad_keep_alive_is_refused_before_any_load(
    admin_client: tuple[httpx.AsyncClient, FakeHost],
) -> None:
    client, host = admin_client
    await register(client)
    body = {"model": "qwen", "prompt": "hi", "max_tokens": 1, "keep_alive": "a while"}
    message = assert_error(await client.post("/v1/completions", json=body, headers=USER), 400)
    assert "keep_alive" in message and host.loads == []


@pytest.mark.fuzz
def test_fuzz_the_admin_routes() -> None:
    """Generated bodies and aliases on every admin route (admin key given, fake engines):
    no 5xx, answers as documented."""
    import itertools
    from collections import Counter

    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import positive_data_acceptance

    models = ModelRegistry(host=FakeHost(), config=RegistryConfig(load_timeout=1))
    config = ServerConfig(api_key="user-key", admin_api_key="admin-key")
    app = create_app(models, config, media_resolver=offline_resolver)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [
        result.ok()
        for result in schema.get_all_operations()
        if "models" in (result.ok().definition.raw.get("tags") or [])
    ]
    assert len(operations) == 5
    statuses: Counter[int] = Counter()
    for operation, mode in itertools.product(operations, schemathesis.GenerationMode):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def run(case: schemathesis.Case) -> None:
            case.headers = {**(case.headers or {}), **ADMIN}
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
            statuses[response.status_code] += 1

        if mode is schemathesis.GenerationMode.NEGATIVE and not operation.body:
            continue  # a path alone: any string is a valid alias
        run()
    assert statuses[400] > 0 and statuses[404] > 0, statuses
    assert set(statuses) <= {200, 201, 400, 404, 409, 503}, statuses
