"""One engine on the tiny model for the whole session; a fresh app (own registry over that
engine, own metrics) per test, driven in-process through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from vlmserve.api.app import create_app
from vlmserve.api.server_config import ServerConfig
from vlmserve.config import EngineConfig, MediaConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.engine.engine import LLMEngine, build_engine
from vlmserve.registry import ModelHandle, ModelInfo, ModelRegistry

MODEL = "tiny"
MAX_IMAGES = 2
MAX_VIDEOS = 1


@pytest.fixture(scope="session")
def llm_engine(tiny_qwen2_vl: Path) -> LLMEngine:
    return build_engine(
        EngineConfig(
            model=str(tiny_qwen2_vl),
            max_model_len=1024,
            max_num_seqs=32,
            limit_mm_per_prompt={"image": MAX_IMAGES, "video": MAX_VIDEOS},
            kv_cache_memory_bytes=64 * 1024 * 1024,
        )
    )


@pytest.fixture(scope="session")
def async_engine(llm_engine: LLMEngine) -> Iterator[AsyncEngine]:
    engine = AsyncEngine(llm_engine).start()
    yield engine
    engine.close()


@pytest.fixture(autouse=True)
async def _no_request_outlives_its_test(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Every request a test started has finished or been aborted before the test's event
    loop closes, so no test leaves work running in the shared engine for the next one."""
    yield
    if "async_engine" not in request.fixturenames:
        return
    engine: AsyncEngine = request.getfixturevalue("async_engine")
    for _ in range(1000):
        if not engine.engine.requests and not engine._streams:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"requests still in flight after the test: {list(engine.engine.requests)}")


async def offline_resolver(host: str, port: int) -> list[Any]:
    """API tests never resolve real names (fuzzed bodies carry arbitrary http URLs): every
    lookup fails as an unresolvable host would. Tests that fetch pass their own resolver."""
    raise OSError(f"name resolution is disabled in tests ({host})")


def single_model(engine: AsyncEngine) -> ModelRegistry:
    """A registry serving the session's engine as MODEL. Never closed by the tests: the
    engine outlives every app."""
    return ModelRegistry([ModelHandle(ModelInfo.from_engine(engine.engine, MODEL), engine)])


def make_app(
    engine: AsyncEngine, media_config: MediaConfig | None = None, **config: Any
) -> FastAPI:
    return create_app(
        single_model(engine), ServerConfig(**config), media_config, media_resolver=offline_resolver
    )


@pytest.fixture
def app(async_engine: AsyncEngine) -> FastAPI:
    return make_app(async_engine)


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as c:
        yield c


def png_data_url(size: tuple[int, int] = (56, 56), color: str = "red") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat_body(content: object = "Hello", **fields: object) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
        **fields,
    }


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param, error
    return str(error["message"])


def http_scope(path: str, payload: bytes) -> dict[str, Any]:
    """The ASGI scope of a JSON POST to `path`, for tests that drive the app's ASGI calls by hand."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "server": ("test", 80),
        "client": ("c", 1),
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ],
    }
