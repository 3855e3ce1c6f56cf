"""Session-wide fixtures: tiny random Qwen-VL checkpoints, generated once per test run, and
the engine invariant checked after every test."""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vlmserve.engine.engine import LLMEngine
from vlmserve.engine.invariants import leaks
from vlmserve.models.tiny import make_tiny_model

# An engine driven by a thread (AsyncEngine) may still be handling the aborts of a test that
# just returned; it gets this long to settle before what it holds counts as a leak.
SETTLE_S = 10.0

_live_engines: weakref.WeakSet[LLMEngine] = weakref.WeakSet()
_created_in_test: list[LLMEngine] = []  # strong: a test's own engines outlive its frame


@pytest.fixture(autouse=True)
def _own_data_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test (and every server it starts) keeps durable state, such as the model
    registry, in a folder of its own: never the user's, never another test's."""
    monkeypatch.setenv("VLMSERVE_DATA_DIR", str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_qwen2_vl"), arch="qwen2_vl")


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_qwen2_5_vl"), arch="qwen2_5_vl")


@pytest.fixture(scope="session", autouse=True)
def _track_engines() -> Iterator[None]:
    """Every LLMEngine built during the run (by a fixture, a test, `LLM`, `AsyncEngine`'s
    owner) is remembered, so the invariant below finds it wherever it was made."""
    build = LLMEngine.__init__

    def tracked_init(self: LLMEngine, *args: Any, **kwargs: Any) -> None:
        build(self, *args, **kwargs)
        _live_engines.add(self)
        _created_in_test.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LLMEngine, "__init__", tracked_init)
        yield


def _settled_leaks(engine: LLMEngine) -> list[str]:
    deadline = time.monotonic() + SETTLE_S
    while True:
        found = leaks(engine)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def _engines_are_idle_after_the_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Once a test is over, every engine that exists holds no request, sequence, KV block or
    grammar: a leak fails the test where it happened (teardown error), not a later one."""
    yield
    engines = {id(e): e for e in [*_created_in_test, *_live_engines]}
    _created_in_test.clear()
    problems = []
    for engine in engines.values():
        found = _settled_leaks(engine)
        if found:
            _live_engines.discard(engine)  # reported here, once
            problems.append(f"{engine.config.model}: " + "; ".join(found))
    if problems:
        pytest.fail(f"{request.node.nodeid} left engines holding state:\n" + "\n".join(problems))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need CUDA; without it they are skipped, not failed."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
