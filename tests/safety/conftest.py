"""The safety app's tests talk HTTP to real servers on loopback: our app on the tiny model with
/v1/moderations mounted (uvicorn in a thread, on a free port) and, where a test needs a
server that misbehaves, a small fake one. One engine for the session, sized for the 1024²
image."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.api.conftest import MODEL, offline_resolver, single_model
from vlmserve.api.app import create_app
from vlmserve.config import EngineConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.engine.engine import build_engine
from vlmserve.safety.moderations import moderation_router
from vlmserve.safety.policy import load_policy


class ThreadServer:
    """An ASGI app served by uvicorn on 127.0.0.1 on a port the OS picked."""

    def __init__(self, app: Any) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


@pytest.fixture(scope="session")
def safety_engine(tiny_qwen2_vl: Path) -> Iterator[AsyncEngine]:
    engine = AsyncEngine(
        build_engine(
            EngineConfig(
                model=str(tiny_qwen2_vl),
                dtype="float32",  # class scores are compared with transformers in fp32
                max_model_len=4096,
                max_num_seqs=32,
                kv_cache_memory_bytes=128 * 1024 * 1024,
            )
        )
    )
    yield engine.start()
    engine.close()


@pytest.fixture(scope="session")
def live_server(safety_engine: AsyncEngine) -> Iterator[ThreadServer]:
    app = create_app(
        single_model(safety_engine),
        media_resolver=offline_resolver,
        extra_routers=[moderation_router(load_policy())],
    )
    with ThreadServer(app) as server:
        yield server


@pytest.fixture(autouse=True)
def _engine_left_empty(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every request a test sent has finished when it ends: the shared engine is empty."""
    yield
    if "live_server" not in request.fixturenames:
        return
    engine: AsyncEngine = request.getfixturevalue("safety_engine")
    for _ in range(1000):
        if not engine.engine.requests and not engine._streams:
            return
        time.sleep(0.01)
    pytest.fail(f"requests still in flight after the test: {list(engine.engine.requests)}")


__all__ = ["MODEL", "ThreadServer"]
