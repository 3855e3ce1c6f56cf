"""The lifecycle's events (what the server's metrics count): a load, a failed load (first
load or new revision), an eviction, an unload, each once and under its model; a listener
that raises disturbs nothing. And the registration's media policy on every handle."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.registry.fakes import FakeHost
from tests.registry.test_lifecycle import BOUND_S, generate, registry_with
from vlmserve.multimodal.policy import MediaOverrides
from vlmserve.registry import EventKind, ModelEvent, ModelRegistry, ModelSpec, ModelUnavailable


@pytest.fixture
async def made() -> AsyncIterator[list[ModelRegistry]]:
    registries: list[ModelRegistry] = []
    yield registries
    for registry in registries:
        await registry.close(drain_timeout=BOUND_S)


async def test_each_lifecycle_step_is_reported_once(made: list[ModelRegistry]) -> None:
    host = FakeHost(load_s=0.01, broken={"broken", "/models/b-v2"})
    registry = await registry_with(made, host, "a", "b", "broken", max_loaded_models=1)
    events: list[ModelEvent] = []

    def fails(event: ModelEvent) -> None:
        raise RuntimeError("a listener with a bug")

    registry.events.subscribe(fails)
    registry.events.subscribe(events.append)
    with pytest.raises(ModelUnavailable):
        await generate(registry, "broken")
    await generate(registry, "a")
    await generate(registry, "b")  # evicts a
    await registry.replace(ModelSpec("b", "/models/b-v2"), expected_revision=1)
    await registry.load("b", wait=True)  # the new revision fails; revision 1 serves on
    await registry.unload("b")

    seen = [(e.alias, e.kind) for e in events]
    assert seen == [
        ("broken", EventKind.LOAD_FAILED),
        ("a", EventKind.LOADED),
        ("a", EventKind.EVICTED),
        ("b", EventKind.LOADED),
        ("b", EventKind.LOAD_FAILED),
        ("b", EventKind.UNLOADED),
    ]
    loads = [e.seconds for e in events if e.kind is EventKind.LOADED]
    assert all(s is not None and s > 0 for s in loads)
    assert registry.status("b").state == "registered"


async def test_the_media_policy_rides_on_the_handle_whatever_the_host(
    made: list[ModelRegistry],
) -> None:
    """Hosts (the fake one here, a Ray one) know nothing of media: the registry puts the
    registration's policy on the handle, for the revision that serves."""
    host = FakeHost()
    registry = await registry_with(made, host)
    narrow = MediaOverrides(max_image_pixels=1000)
    await registry.register(ModelSpec("a", "/models/a", media=narrow))
    async with registry.acquire("a") as handle:
        assert handle.info.media_policy == narrow
    wider = MediaOverrides(max_image_pixels=2000)
    await registry.replace(ModelSpec("a", "/models/a", media=wider), expected_revision=1)
    await registry.load("a", wait=True)  # the new revision loads beside, then serves
    async with registry.acquire("a") as handle:
        assert handle.info.media_policy == wider
