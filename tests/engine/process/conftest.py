"""A started `ProcessEngine` per module, checked empty after every test: the engine lives
in another process, out of reach of the session's invariant fixture, so it is asked."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vlmserve.config import EngineConfig
from vlmserve.engine.process import ProcessEngine

SETTLE_S = 10.0


def started(folder: Path, **overrides: object) -> ProcessEngine:
    config = EngineConfig(str(folder), max_model_len=512, kv_cache_memory_bytes=8 << 20)
    return ProcessEngine(dataclasses.replace(config, **overrides)).start()


def settled_leaks(engine: ProcessEngine) -> list[str]:
    deadline = time.monotonic() + SETTLE_S
    while True:
        found = engine.leaks()
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


@pytest.fixture(scope="module")
def process_engine(tiny_qwen2_vl: Path) -> Iterator[ProcessEngine]:
    engine = started(tiny_qwen2_vl)
    yield engine
    engine.close()


@pytest.fixture(autouse=True)
def _process_engine_is_idle_after_the_test(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "process_engine" not in request.fixturenames:
        return
    engine: ProcessEngine = request.getfixturevalue("process_engine")
    if engine.alive:
        assert settled_leaks(engine) == [], "the engine process holds state after the test"
