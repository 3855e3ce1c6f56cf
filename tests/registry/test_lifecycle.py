"""The lifecycle with a fake engine host (loads as slow or broken as a test needs): single
flight, bounded waiting, back-off, keep-alive, budgets and eviction that never cuts a
request, replacement, removal, dead engines and liveness."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.registry.fakes import MIB, FakeHost
from vlmserve.config import RegistryConfig
from vlmserve.multimodal.policy import MediaOverrides
from vlmserve.registry import (
    NEVER,
    ModelNotFound,
    ModelRegistry,
    ModelSpec,
    ModelState,
    ModelUnavailable,
    RegistryStore,
    SpecConflict,
)
from vlmserve.types import SamplingParams

BOUND_S = 30  # far beyond any wait below on a loaded machine, far below "hangs"


@pytest.fixture
async def close_after() -> AsyncIterator[list[ModelRegistry]]:
    made: list[ModelRegistry] = []
    yield made
    for registry in made:
        await asyncio.wait_for(registry.close(drain_timeout=1), BOUND_S)


async def registry_with(
    made: list[ModelRegistry], host: FakeHost, *aliases: str, start: bool = True, **config: object
) -> ModelRegistry:
    settings = {"tick": 0.02, **config}
    registry = ModelRegistry(host=host, config=RegistryConfig(**settings))  # type: ignore[arg-type]
    made.append(registry)
    for alias in aliases:
        await registry.register(ModelSpec(alias, f"/models/{alias}"))
    if start:
        await registry.start()
    return registry


async def generate(registry: ModelRegistry, alias: str, tokens: int = 1, **kw: object) -> int:
    """One request: acquire, generate, release; the number of tokens it got."""
    async with registry.acquire(alias, **kw) as handle:  # type: ignore[arg-type]
        params = SamplingParams(max_tokens=tokens)
        outputs = [o async for o in handle.engine.generate("hi", params, f"r-{time.time()}")]
    return len(outputs[-1].outputs[0].token_ids)


async def wait_for_state(registry: ModelRegistry, alias: str, state: ModelState) -> None:
    deadline = time.monotonic() + BOUND_S
    while registry.status(alias).state is not state:
        assert time.monotonic() < deadline, f"{alias} never became {state}"
        await asyncio.sleep(0.01)


async def wait_in_flight(registry: ModelRegistry, alias: str) -> None:
    """Until a request holds `alias` (READY alone can be seen before the waiting request
    wakes up and takes the model: on a loaded machine the test then raced ahead of it)."""
    deadline = time.monotonic() + BOUND_S
    while registry.status(alias).in_flight == 0:
        assert time.monotonic() < deadline, f"no request ever held {alias}"
        await asyncio.sleep(0.01)


async def test_twenty_first_requests_cause_one_load(close_after: list[ModelRegistry]) -> None:
    host = FakeHost(load_s=0.3)
    registry = await registry_with(close_after, host, "a")
    assert registry.status("a").state is ModelState.REGISTERED and host.loads == []
    results = await asyncio.gather(*(generate(registry, "a", 3) for _ in range(20)))
    assert results == [3] * 20 and host.loads == ["a"]
    status = registry.status("a")
    assert status.state is ModelState.READY and status.in_flight == 0
    assert status.memory_bytes == 100 * MIB and status.load_seconds == pytest.approx(0.3)


async def test_load_timeout_and_a_full_queue_answer_with_a_retry_hint(
    close_after: list[ModelRegistry],
) -> None:
    host = FakeHost(slow={"a": 3.0})
    registry = await registry_with(close_after, host, "a", load_timeout=0.3, max_waiting=2)
    waiting = [asyncio.create_task(generate(registry, "a")) for _ in range(2)]
    await wait_for_state(registry, "a", ModelState.LOADING)
    await asyncio.sleep(0.05)
    with pytest.raises(ModelUnavailable, match=r"2 requests already wait .*--max-waiting 2"):
        await generate(registry, "a")
    for task in waiting:
        with pytest.raises(ModelUnavailable, match=r"'a' is loading.*--load-timeout 0\.3 s") as e:
            await asyncio.wait_for(task, BOUND_S)
        assert e.value.retry_after is not None and e.value.retry_after >= 1
    assert host.loads == ["a"] and registry.status("a").waiting == 0


async def test_a_broken_model_is_not_reloaded_during_its_back_off(
    close_after: list[ModelRegistry],
) -> None:
    host = FakeHost(broken={"bad"})
    registry = await registry_with(close_after, host, "bad", "good")
    refusals = []
    for _ in range(50):
        with pytest.raises(ModelUnavailable) as raised:
            await generate(registry, "bad")
        refusals.append(raised.value)
        await asyncio.sleep(0.005)
    assert len(host.loads) <= 3
    status = registry.status("bad")
    assert status.state is ModelState.FAILED
    assert status.last_error == "FileNotFoundError: no model at /models/bad"
    assert all(r.retry_after and 1 <= r.retry_after <= 10 for r in refusals)
    assert "its last load failed (FileNotFoundError" in str(refusals[-1])
    assert await generate(registry, "good") == 1  # one broken model harms no other
    # An explicit load resets the back-off: one more attempt at once.
    with pytest.raises(ModelUnavailable, match="load failed"):
        await registry.load("bad", wait=True)
    assert host.loads.count("bad") == 2


async def test_back_off_doubles_up_to_its_cap(
    close_after: list[ModelRegistry], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "vlmserve.registry")
    host = FakeHost(broken={"bad"})
    registry = await registry_with(
        close_after, host, "bad", failure_backoff=0.1, failure_backoff_max=0.25
    )
    hints = []
    for _ in range(4):
        with pytest.raises(ModelUnavailable) as raised:
            await generate(registry, "bad")
        hints.append(raised.value.retry_after)
        await asyncio.sleep(0.3)  # past the back-off: the next request tries again
    assert host.loads == ["bad"] * 4
    assert hints == pytest.approx([0.1, 0.2, 0.25, 0.25], abs=0.02)
    # Each failure says when the next load may come (a served model: the server stays up).
    said = [r.getMessage() for r in caplog.records if "failure" in r.getMessage()]
    assert [m.rsplit("; ", 1)[-1] for m in said] == [
        "no new load for 0.1 s",
        "no new load for 0.2 s",
        "no new load for 0.25 s",
        "no new load for 0.25 s",
    ]


async def test_keep_alive_counts_from_the_last_request_and_frees_the_model(
    close_after: list[ModelRegistry],
) -> None:
    host = FakeHost(token_s=0.05)
    registry = await registry_with(close_after, host, start=True, keep_alive=1.0)
    await registry.register(ModelSpec("a", "/models/a"))
    await registry.register(ModelSpec("never", "/models/never", keep_alive=NEVER))
    await registry.register(ModelSpec("zero", "/models/zero", keep_alive=0))
    long = asyncio.create_task(generate(registry, "a", 40))  # ~2 s, longer than keep_alive
    await generate(registry, "never")
    await generate(registry, "zero")
    await wait_for_state(registry, "zero", ModelState.REGISTERED)  # right after its request
    await asyncio.sleep(1.2)
    assert registry.status("a").state is ModelState.READY  # still busy: not counting yet
    assert registry.status("a").expires_at is None
    assert await long == 40
    status = registry.status("a")
    assert status.expires_at is not None and 0 < status.expires_at - time.time() <= 1.0
    await wait_for_state(registry, "a", ModelState.REGISTERED)
    assert registry.status("never").state is ModelState.READY
    assert registry.status("a").memory_bytes == 100 * MIB  # the last measurement stays
    assert sorted(host.unloads) == ["a", "zero"]
    assert sum(e.closed for e in host.engines) == 2


async def test_keep_alive_of_a_request_overrides_the_model(
    close_after: list[ModelRegistry],
) -> None:
    host = FakeHost()
    registry = await registry_with(close_after, host, "a", keep_alive=60)
    await generate(registry, "a", keep_alive=0.0)
    await wait_for_state(registry, "a", ModelState.REGISTERED)
    await generate(registry, "a", keep_alive=NEVER)
    await asyncio.sleep(0.2)
    assert (
        registry.status("a").state is ModelState.READY and registry.status("a").expires_at is None
    )


async def test_the_pattern_a_b_a_a_c_loads_three_times(close_after: list[ModelRegistry]) -> None:
    host = FakeHost(load_s=0.05)
    registry = await registry_with(close_after, host, "a", "b", "c", max_loaded_models=2)
    for alias in "abaac":
        assert await generate(registry, alias) == 1
    assert host.loads == ["a", "b", "c"]
    assert host.unloads == ["b"]  # unused longest, as cheap to reload as the others
    states = {s.alias: s.state for s in registry.list()}
    assert states == {"a": "ready", "b": "registered", "c": "ready"}


async def test_eviction_drains_a_busy_model_without_cutting_it(
    close_after: list[ModelRegistry],
) -> None:
    host = FakeHost(token_s=0.02)
    registry = await registry_with(close_after, host, "a", "b", max_loaded_models=1)
    running = asyncio.create_task(generate(registry, "a", 25))  # ~0.5 s
    await wait_in_flight(registry, "a")
    await asyncio.sleep(0.05)
    assert await generate(registry, "b") == 1
    assert running.done() and running.result() == 25  # drained, not cut
    assert host.loads == ["a", "b"] and host.unloads == ["a"]


async def test_an_eviction_past_the_drain_timeout_is_abandoned(
    close_after: list[ModelRegistry],
) -> None:
    host = FakeHost(token_s=0.02)
    registry = await registry_with(
        close_after, host, "a", "b", max_loaded_models=1, drain_timeout=0.2
    )
    running = asyncio.create_task(generate(registry, "a", 50))  # ~1 s
    await wait_in_flight(registry, "a")
    start = time.monotonic()
    with pytest.raises(ModelUnavailable, match="evicting 'a' was abandoned") as raised:
        await generate(registry, "b")
    assert time.monotonic() - start < 5 and raised.value.retry_after
    assert await running == 50  # never cut
    assert registry.status("a").state is ModelState.READY and host.unloads == []
    assert await generate(registry, "a") == 1  # serving again
    assert await generate(registry, "b") == 1  # a is idle now: evicted


async def test_pinned_and_recently_loaded_models_are_not_evicted(
    close_after: list[ModelRegistry],
) -> None:
    host = FakeHost()
    registry = await registry_with(
        close_after, host, start=False, max_loaded_models=2, min_resident=60, load_timeout=0.3
    )
    await registry.register(ModelSpec("pinned", "/models/p", pinned=True))
    await registry.register(ModelSpec("a", "/models/a"))
    await registry.register(ModelSpec("b", "/models/b"))
    await registry.start()
    await wait_for_state(registry, "pinned", ModelState.READY)  # pinned: loaded at start-up
    assert await generate(registry, "a") == 1
    # Whichever deadline passes first (the request's or its load's), it says why.
    with pytest.raises(ModelUnavailable, match="2 of --max-loaded-models 2 loaded"):
        await generate(registry, "b")
    await wait_for_state(registry, "b", ModelState.REGISTERED)  # its load gave up too
    assert host.unloads == [] and host.loads == ["pinned", "a"]  # b never got room
    with pytest.raises(SpecConflict, match="pinned"):
        await registry.unload("pinned")


async def test_with_one_model_allowed_a_stays_served_while_b_comes_and_goes(
    close_after: list[ModelRegistry],
) -> None:
    """Continuous traffic to A plus requests to B with --max-loaded-models 1: every A
    request completes, every B request is served or refused in bounded time."""
    host = FakeHost(load_s=0.1, token_s=0.01)
    registry = await registry_with(
        close_after, host, "a", "b", max_loaded_models=1, load_timeout=5, drain_timeout=5
    )
    stop = asyncio.Event()

    async def a_client() -> list[int]:
        got = []
        for _ in range(200):
            if stop.is_set():
                break
            got.append(await generate(registry, "a", 5))
        return got

    async def b_request() -> tuple[str, float]:
        start = time.monotonic()
        try:
            await generate(registry, "b", 2)
            return "served", time.monotonic() - start
        except ModelUnavailable:
            return "refused", time.monotonic() - start

    clients = [asyncio.create_task(a_client()) for _ in range(3)]
    await asyncio.sleep(0.2)
    outcomes = []
    for _ in range(3):
        outcomes.append(await asyncio.wait_for(b_request(), BOUND_S))
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    stop.set()
    done = await asyncio.wait_for(asyncio.gather(*clients), BOUND_S)
    assert all(tokens == 5 for got in done for tokens in got) and min(map(len, done)) >= 2
    assert all(seconds < 5 + 1 for _, seconds in outcomes)
    assert any(kind == "served" for kind, _ in outcomes)
    # Each B request costs at most two evictions (A out, then B out); a model woken for
    # its waiters must serve them before it can be evicted (this once thrashed 100 times).
    assert len(host.unloads) <= 2 * len(outcomes), host.unloads


async def test_the_memory_budget_uses_measured_footprints(
    close_after: list[ModelRegistry],
) -> None:
    host = FakeHost(sizes={"a": 100 * MIB, "b": 80 * MIB})
    registry = await registry_with(close_after, host, "a", "b", memory_budget_bytes=150 * MIB)
    await generate(registry, "a")
    # b's footprint is unknown before its first load: it loads, is measured, and the
    # budget then evicts the idle a.
    await generate(registry, "b")
    await wait_for_state(registry, "a", ModelState.REGISTERED)
    # Now both are measured: loading a again evicts b first.
    await generate(registry, "a")
    assert registry.status("b").state is ModelState.REGISTERED
    assert host.unloads == ["a", "b"]


async def test_a_model_that_loads_does_not_delay_a_loaded_one(
    close_after: list[ModelRegistry],
) -> None:
    host = FakeHost(slow={"a": 5.0})
    registry = await registry_with(close_after, host, "a", "b")
    await generate(registry, "b")
    loading = asyncio.create_task(generate(registry, "a"))
    await wait_for_state(registry, "a", ModelState.LOADING)
    start = time.monotonic()
    for _ in range(20):
        await generate(registry, "b")
    assert time.monotonic() - start < 1.0
    assert not loading.done()
    loading.cancel()


async def test_replacing_a_loaded_model_switches_without_failing_a_request(
    close_after: list[ModelRegistry],
) -> None:
    host = FakeHost(load_s=0.3, token_s=0.01)
    registry = await registry_with(close_after, host, "a")
    await generate(registry, "a")
    first = host.engines[0]
    results: list[int] = []

    async def traffic() -> None:
        for _ in range(60):
            results.append(await generate(registry, "a", 3))

    running = asyncio.create_task(traffic())
    status = await registry.replace(ModelSpec("a", "/models/a-v2"), expected_revision=1)
    assert (status.revision, status.loaded_revision, status.state) == (2, 1, "ready")
    with pytest.raises(SpecConflict, match="expected_revision 1 is not the current"):
        await registry.replace(ModelSpec("a", "/models/a-v3"), expected_revision=1)
    await asyncio.wait_for(running, BOUND_S)
    assert results == [3] * 60
    status = registry.status("a")
    assert status.loaded_revision == 2 and status.info and status.info.root == "/models/a-v2"
    assert first.closed and first.completed > 0


async def test_a_new_revision_that_fails_leaves_the_old_one_serving(
    close_after: list[ModelRegistry],
) -> None:
    host = FakeHost(broken={"/models/a-broken"})
    registry = await registry_with(close_after, host, "a")
    await generate(registry, "a")
    await registry.replace(ModelSpec("a", "/models/a-broken"), expected_revision=1)
    await registry.load("a", wait=True)
    status = registry.status("a")
    assert (status.state, status.revision, status.loaded_revision) == ("ready", 2, 1)
    assert status.last_error and "revision 2 failed to load" in status.last_error
    assert await generate(registry, "a") == 1 and host.unloads == []


async def test_a_change_around_the_engine_takes_over_the_serving_engine(
    close_after: list[ModelRegistry],
) -> None:
    host = FakeHost(load_s=0.2)
    registry = await registry_with(close_after, host, "a")
    await generate(registry, "a")
    narrow = MediaOverrides(max_image_pixels=1000)
    for revision, spec in enumerate(
        [
            ModelSpec("a", "/models/a", media=narrow),
            ModelSpec("a", "/models/a", media=narrow, keep_alive=NEVER),
        ],
        start=1,
    ):
        status = await registry.replace(spec, expected_revision=revision)
        # At once: the same engine serves the new revision, no load, no drain.
        assert (status.state, status.revision, status.loaded_revision) == (
            "ready",
            revision + 1,
            revision + 1,
        )
    status = registry.status("a")
    assert status.info and status.info.media_policy == narrow
    assert (status.keep_alive, status.expires_at) == (NEVER, None)
    assert await generate(registry, "a") == 1
    assert host.loads == ["a"] and host.unloads == []
    # An engine setting is another engine: it loads beside and switches.
    await registry.replace(
        ModelSpec("a", "/models/a", media=narrow, max_model_len=128), expected_revision=3
    )
    await registry.load("a", wait=True)
    assert registry.status("a").loaded_revision == 4 and host.loads == ["a", "a"]


async def test_remove_drains_first_and_new_requests_find_nothing(
    close_after: list[ModelRegistry],
) -> None:
    host = FakeHost(token_s=0.02)
    registry = await registry_with(close_after, host, "a")
    running = asyncio.create_task(generate(registry, "a", 20))
    await wait_in_flight(registry, "a")
    await asyncio.sleep(0.05)
    removing = asyncio.create_task(registry.remove("a"))
    await asyncio.sleep(0.05)
    with pytest.raises(ModelNotFound):
        await generate(registry, "a")
    await asyncio.wait_for(removing, BOUND_S)
    assert await running == 20 and host.unloads == ["a"]
    assert registry.list() == [] and registry.store.get("a") is None


async def test_a_dead_engine_fails_its_model_and_a_stuck_one_fails_liveness(
    close_after: list[ModelRegistry],
) -> None:
    host = FakeHost()
    registry = await registry_with(close_after, host, "a", "b", liveness_timeout=0.5)
    await generate(registry, "a")
    await generate(registry, "b")
    assert registry.liveness_problems() == []
    host.engines[0].dead = True
    await wait_for_state(registry, "a", ModelState.FAILED)
    assert registry.status("a").last_error == "RuntimeError: the engine loop stopped"
    await asyncio.sleep(0.1)
    assert host.unloads == ["a"]
    host.engines[1].last_progress -= 10  # a step that never returns
    assert registry.liveness_problems() == ["model 'b': the engine loop made no progress for 10 s"]
    registry._last_tick -= 10  # the lifecycle loop stuck
    assert "the model lifecycle loop made no progress" in registry.liveness_problems()[0]


async def test_readiness_waits_for_the_start_up_models(close_after: list[ModelRegistry]) -> None:
    host = FakeHost(slow={"main": 0.5})
    registry = await registry_with(close_after, host, start=False)
    await registry.register(ModelSpec("lazy", "/models/lazy"))
    await registry.start([ModelSpec("main", "/models/main")])
    assert registry.problems() == ["model 'main' is loading (0 s so far)"]
    await wait_for_state(registry, "main", ModelState.READY)
    assert registry.problems() == []  # "lazy" loads on demand: not awaited
    assert registry.status("main").pinned and not registry.status("lazy").pinned
    assert registry.store.get("main") is not None  # the command line's model is stored


async def test_the_command_line_models_are_listed_before_those_of_earlier_runs(
    close_after: list[ModelRegistry], tmp_path: Path
) -> None:
    earlier = RegistryStore(tmp_path / "registry.db")
    for alias in ("left-by-an-earlier-run", "second"):
        earlier.register(ModelSpec(alias, f"/models/{alias}"))
    earlier.close()
    registry = ModelRegistry(host=FakeHost(), store=RegistryStore(tmp_path / "registry.db"))
    close_after.append(registry)
    await registry.start([ModelSpec("main", "/models/main"), ModelSpec("second", "/models/2")])
    # A client taking data[0] of /v1/models gets what this server was started with.
    assert [s.alias for s in registry.list()] == ["main", "second", "left-by-an-earlier-run"]
    # A wrong model name is answered with the same list, in the same order.
    with pytest.raises(ModelNotFound, match=r"serves 'main', 'second', 'left-by-an-earlier-run'$"):
        registry.status("mian")
    # The cluster's ingress stores the command line's model before its registry starts.
    registry.list_first(["left-by-an-earlier-run"])
    assert registry.list()[0].alias == "left-by-an-earlier-run"


async def test_close_waits_for_loads_and_unloads_everything(
    close_after: list[ModelRegistry],
) -> None:
    host = FakeHost(slow={"b": 0.3})
    registry = await registry_with(close_after, host, "a", "b")
    await generate(registry, "a")
    loading = asyncio.create_task(generate(registry, "b"))
    await wait_for_state(registry, "b", ModelState.LOADING)
    await asyncio.wait_for(registry.close(drain_timeout=1), BOUND_S)
    with pytest.raises(ModelUnavailable, match="shutting down"):
        await loading
    assert sorted(host.unloads) == ["a", "b"] and all(e.closed for e in host.engines)
    assert registry.problems() == ["the server is shutting down"]
