"""Two registries on one store file (as the ingress replicas of a Ray deployment are):
`refresh()` takes in the other's registrations, new revisions and removals, and leaves
models served through `add` alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.registry.fakes import FakeEngine, FakeHost
from vlmserve.config import RegistryConfig
from vlmserve.registry import (
    ModelHandle,
    ModelInfo,
    ModelNotFound,
    ModelRegistry,
    ModelSpec,
    ModelState,
    RegistryStore,
)

CONFIG = RegistryConfig(tick=0.05, drain_timeout=2)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[ModelRegistry, ModelRegistry, FakeHost]]:
    path = tmp_path / "registry.db"
    host = FakeHost()
    first = ModelRegistry(host=FakeHost(), store=RegistryStore(path), config=CONFIG)
    second = ModelRegistry(host=host, store=RegistryStore(path), config=CONFIG)
    await first.start()
    await second.start()
    yield first, second, host
    for registry in (first, second):
        await registry.close()
        registry.store.close()


async def until(condition: object, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_registrations_revisions_and_removals_reach_the_other_registry(
    pair: tuple[ModelRegistry, ModelRegistry, FakeHost],
) -> None:
    first, second, host = pair
    await first.register(ModelSpec("m", "/models/m"))
    with pytest.raises(ModelNotFound):
        second.status("m")
    await second.refresh()
    assert second.status("m").revision == 1
    async with second.acquire("m"):
        pass
    assert host.loads == ["m"] and second.status("m").state is ModelState.READY

    await first.replace(ModelSpec("m", "/models/m-v2"), expected_revision=1)
    await second.refresh()
    await until(lambda: second.status("m").loaded_revision == 2, "the new revision serves")
    assert host.loads == ["m", "m"]

    await first.remove("m")
    await second.refresh()
    with pytest.raises(ModelNotFound):
        second.status("m")
    await until(lambda: host.unloads == ["m", "m"], "both revisions unloaded")


async def test_a_model_registered_again_after_a_removal_is_taken_in_anew(
    pair: tuple[ModelRegistry, ModelRegistry, FakeHost],
) -> None:
    first, second, _ = pair
    await first.register(ModelSpec("m", "/models/m"))
    await second.refresh()
    await first.remove("m")
    await first.register(ModelSpec("m", "/models/other"))  # revision 1 again, a new row
    await second.refresh()
    assert second.status("m").spec.model_name == "/models/other"


async def test_models_served_through_add_are_not_dropped(
    pair: tuple[ModelRegistry, ModelRegistry, FakeHost],
) -> None:
    _, second, _ = pair
    info = ModelInfo(
        "local", "/models/local", 0, 128, None, frozenset(), {}, lambda ids: "", lambda text: []
    )
    second.add(ModelHandle(info, FakeEngine(0.0)))
    await second.refresh()
    assert second.status("local").state is ModelState.READY
