"""`ModelRegistry`: the one door between request handling and the engines, even for a single
model. Every request does `async with models.acquire(alias) as handle:`, which is where the
registry counts what is in flight per model and (next) where a model is loaded on demand.

Today it holds the models given at start-up, ready for its whole life; `close()` drains
and closes them. It knows nothing of HTTP: its errors are plain exceptions that the serving
layer maps to statuses. Used from one event loop (no locks on the request path).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from vlmserve.engine.async_engine import AsyncEngine, EngineStats
from vlmserve.registry.info import ModelInfo

logger = logging.getLogger(__name__)

DRAIN_POLL_S = 0.01


class ModelState(enum.StrEnum):
    REGISTERED = "registered"  # known, not loaded (after close; next: before a first load)
    READY = "ready"  # loaded, its engine running, admitting requests
    DRAINING = "draining"  # admits nothing new; in-flight requests finish, then it unloads


class RegistryError(Exception):
    """A request the registry cannot route to a running model."""


class ModelNotFound(RegistryError, LookupError):
    def __init__(self, alias: str, served: list[str]) -> None:
        names = ", ".join(repr(name) for name in served) or "no model"
        super().__init__(f"the model {alias!r} does not exist; this server serves {names}")
        self.alias = alias


class ModelUnavailable(RegistryError):
    """The model exists but cannot take requests now; `retry_after` seconds is a hint."""

    def __init__(self, alias: str, state: ModelState, retry_after: float | None = None) -> None:
        super().__init__(f"the model {alias!r} is {state}, not ready; retry later")
        self.alias = alias
        self.state = state
        self.retry_after = retry_after


@dataclass(frozen=True)
class ModelHandle:
    """What a request holds while it uses a model."""

    info: ModelInfo
    engine: AsyncEngine


@dataclass(frozen=True)
class ModelStatus:
    """One model as listed: its facts, its state and its requests in flight."""

    info: ModelInfo
    state: ModelState
    in_flight: int
    alive: bool  # its engine loop runs (False when not loaded)


class _Entry:
    def __init__(self, handle: ModelHandle) -> None:
        self.info = handle.info
        self.handle: ModelHandle | None = handle  # None once unloaded: the engine is dropped
        self.state = ModelState.READY
        self.in_flight = 0
        self.last_used = time.monotonic()

    def status(self) -> ModelStatus:
        alive = self.handle is not None and self.handle.engine.alive
        return ModelStatus(self.info, self.state, self.in_flight, alive)


class ModelRegistry:
    def __init__(self, models: Iterable[ModelHandle] = ()) -> None:
        self._entries: dict[str, _Entry] = {}
        self._closed = False
        for handle in models:
            self.add(handle)

    def add(self, handle: ModelHandle) -> None:
        """Serve a model whose engine is built and started, under `handle.info.name`, until
        `close()` (start-up models, e.g. the one on the command line)."""
        alias = handle.info.name
        if alias in self._entries:
            raise ValueError(f"a model named {alias!r} is already registered")
        self._entries[alias] = _Entry(handle)

    @contextlib.asynccontextmanager
    async def acquire(self, alias: str) -> AsyncIterator[ModelHandle]:
        """The model `alias`, counted in flight until the block exits. Raises
        `ModelNotFound` for an unknown alias and `ModelUnavailable` for a model that cannot
        take requests now. (Loading on demand, with one load per model however many
        requests wait for it, belongs here.)"""
        entry = self._entry(alias)
        if self._closed or entry.state is not ModelState.READY or entry.handle is None:
            raise ModelUnavailable(alias, entry.state)
        entry.in_flight += 1
        try:
            yield entry.handle
        finally:
            entry.in_flight -= 1
            entry.last_used = time.monotonic()

    def status(self, alias: str) -> ModelStatus:
        return self._entry(alias).status()

    def list(self) -> list[ModelStatus]:
        return [entry.status() for entry in self._entries.values()]

    @property
    def closed(self) -> bool:
        return self._closed

    # `list` is a method here: annotations below name the builtin explicitly.
    def problems(self) -> builtins.list[str]:
        """Models that should serve but whose engine loop is not running (empty: ready)."""
        return [
            f"model {s.info.name!r}: the engine loop is not running"
            for s in self.list()
            if s.state is ModelState.READY and not s.alive
        ]

    def engine_stats(self) -> builtins.list[tuple[str, EngineStats]]:
        """Each loaded model's engine counters, by alias (for metrics at scrape time)."""
        return [
            (alias, entry.handle.engine.stats())
            for alias, entry in self._entries.items()
            if entry.handle is not None
        ]

    async def close(self, drain_timeout: float) -> None:
        """Admit nothing more, let each model's in-flight requests finish (up to
        `drain_timeout` seconds), then close the engines and drop them."""
        self._closed = True
        loaded = [entry for entry in self._entries.values() if entry.handle is not None]
        await asyncio.gather(*(self._unload(entry, drain_timeout) for entry in loaded))

    async def _unload(self, entry: _Entry, drain_timeout: float) -> None:
        assert entry.handle is not None
        entry.state = ModelState.DRAINING
        deadline = time.monotonic() + drain_timeout
        while entry.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        engine = entry.handle.engine
        if not await engine.drain(max(0.0, deadline - time.monotonic())):
            logger.warning(
                "model %r: %d requests still running after %.0f s; closing ends them",
                entry.info.name,
                engine.num_in_flight,
                drain_timeout,
            )
        await asyncio.to_thread(engine.close)
        entry.handle = None
        entry.state = ModelState.REGISTERED

    def _entry(self, alias: str) -> _Entry:
        entry = self._entries.get(alias)
        if entry is None:
            raise ModelNotFound(alias, list(self._entries))
        return entry
