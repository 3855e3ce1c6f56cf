"""`ModelRegistry`: the one door between request handling and the engines, even for a single
model. Every request does `async with models.acquire(alias) as handle:`, which loads the
model if needed and counts the request in flight; administration (register, replace, load,
unload, remove) changes the durable store and the lifecycle together.

It knows nothing of HTTP: its errors (registry/errors.py) are plain exceptions the serving
layer and the admin API map to statuses. Used from one event loop.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence

from vlmserve.config import RegistryConfig
from vlmserve.engine.stats import EngineStats
from vlmserve.registry.entry import (
    Entry,
    LoadAttempt,
    ModelHandle,
    ModelState,
    ModelStatus,
    Version,
)
from vlmserve.registry.errors import RegistryError, SpecConflict
from vlmserve.registry.host import EngineHost
from vlmserve.registry.lifecycle import Lifecycle
from vlmserve.registry.residency import past
from vlmserve.registry.spec import ModelSpec
from vlmserve.registry.store import RegistryStore, StoredModel

logger = logging.getLogger("vlmserve.registry")


class ModelRegistry(Lifecycle):
    """`models`: engines already started, served under their `info.name` for this process
    (pinned, not stored). `host` loads registered models on demand; without one, only
    such engines are served. `store` defaults to an in-memory one (nothing survives)."""

    def __init__(
        self,
        models: Iterable[ModelHandle] = (),
        *,
        host: EngineHost | None = None,
        store: RegistryStore | None = None,
        config: RegistryConfig | None = None,
    ) -> None:
        super().__init__(host, store or RegistryStore(), config or RegistryConfig())
        self._owns_store = store is None
        self._admin = asyncio.Lock()  # administrative changes, one at a time (never requests)
        self._housekeeper: asyncio.Task[None] | None = None
        self._startup: list[LoadAttempt] = []  # the first loads of the command line's models
        self._last_tick = time.monotonic()
        for stored in self.store.models():
            self._entries[stored.spec.alias] = Entry(stored, self.config.keep_alive, False)
        for handle in models:
            self.add(handle)

    def add(self, handle: ModelHandle) -> None:
        """Serve an engine that is built and started, under `handle.info.name`, pinned for
        this process (tests, embedding). Not stored."""
        alias = handle.info.name
        if alias in self._entries:
            raise ValueError(f"a model named {alias!r} is already registered")
        self._unstored.add(alias)
        now = time.time()
        entry = Entry(
            StoredModel(ModelSpec(alias, handle.info.root), 1, now, now),
            self.config.keep_alive,
            pinned=True,
        )
        llm = getattr(handle.engine, "engine", None)
        memory = llm.memory_bytes() if llm is not None else 0
        entry.current = Version(handle, 1, entry.spec, memory, 0.0)
        entry.state, entry.startup = ModelState.READY, True
        self._entries[alias] = entry

    async def start(self, startup: Iterable[ModelSpec] = ()) -> None:
        """Register the start-up models (the command line's: stored, pinned for this run),
        start the lifecycle loop, and begin loading every pinned model. Returns at once:
        `problems()` says what readiness still waits for, `wait_for_startup()` waits."""
        for spec in startup:
            stored = await asyncio.to_thread(self.store.replace, spec, None)
            entry = self._entries.get(spec.alias)
            if entry is None:
                self._entries[spec.alias] = Entry(stored, self.config.keep_alive, pinned=True)
            else:
                if entry.stored.revision != stored.revision:
                    logger.info(
                        "model %r: the command line changes it (revision %d)",
                        spec.alias,
                        stored.revision,
                    )
                entry.stored, entry.runtime_pin = stored, True
        self._housekeeper = asyncio.get_running_loop().create_task(self._housekeeping())
        for entry in self._entries.values():
            if entry.pinned:
                entry.startup = True
                if entry.state is ModelState.REGISTERED:
                    self._start_load(entry)
        self._command_line = [spec.alias for spec in startup]
        names = set(self._command_line)
        self._startup = [
            e.attempt for e in self._entries.values() if e.attempt and e.alias in names
        ]
        for attempt in self._startup:
            attempt.fatal = True

    async def wait_for_startup(self) -> None:
        """Until the first loads of the start-up models ended; a load that failed raises
        what it raised (for the process owner, a start-up error)."""
        for attempt in self._startup:
            await attempt.done.wait()
            if attempt.error is not None:
                raise attempt.error

    async def _housekeeping(self) -> None:
        while not self._closed:
            self._last_tick = time.monotonic()
            try:
                self._look_after()
            except Exception:
                logger.exception("the lifecycle loop failed a turn")
            await asyncio.sleep(self.config.tick)

    def _look_after(self) -> None:
        """One turn of the lifecycle loop: unload idle models, retire dead engines."""
        now = time.monotonic()
        for entry in list(self._entries.values()):
            version = entry.current
            if entry.state is not ModelState.READY or version is None:
                continue
            if not version.handle.engine.alive:
                entry.current = None
                self._record_failure(entry, RuntimeError("the engine loop stopped"), trace=False)
                self._notify(entry)
                self._spawn(self._host_unload(version.handle))
            elif entry.expires_in(now) == 0 and not entry.waiting:
                why = f"idle for {entry.expire_after:g} s (keep_alive)"
                self._spawn(self._unload(entry, why))

    # -- requests -----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def acquire(
        self, alias: str, keep_alive: float | None = None
    ) -> AsyncIterator[ModelHandle]:
        """The model `alias`, loaded if needed and counted in flight until the block exits.
        `keep_alive` (seconds; -1 never) overrides the model's idle time after this request.
        Raises `ModelNotFound` for an unknown alias and `ModelUnavailable` (with a
        `retry_after` hint) when it cannot be ready in time."""
        entry, version = await self._admit(alias)
        try:
            yield version.handle
        finally:
            self._release(entry, version, keep_alive)

    # -- administration -------------------------------------------------------------------------
    async def register(self, spec: ModelSpec, load: bool = False) -> tuple[ModelStatus, bool]:
        """Store `spec` (metadata only); True when new. The same spec again changes nothing;
        another spec under a registered alias is a `SpecConflict`. A pinned model, or
        `load`, starts loading now (without waiting)."""
        async with self._admin:
            self._refuse_if_closed()
            stored, created = await asyncio.to_thread(self.store.register, spec)
            if created:
                self._entries[spec.alias] = Entry(stored, self.config.keep_alive, False)
        entry = self._entry(spec.alias)
        if load or entry.pinned:
            self._spawn(self._load_quietly(entry))
        return entry.status(), created

    async def replace(self, spec: ModelSpec, expected_revision: int) -> ModelStatus:
        """Store `spec` as the alias's next revision (`SpecConflict` unless
        `expected_revision` is the current one). A loaded model switches once the new
        revision is ready; an unloaded one loads it next time. Resets a failure back-off."""
        async with self._admin:
            self._refuse_if_closed()
            entry = self._entry(spec.alias)
            stored = await asyncio.to_thread(self.store.replace, spec, expected_revision)
            if stored.revision != entry.stored.revision:
                self._take_revision(entry, stored)
        return entry.status()

    def _take_revision(self, entry: Entry, stored: StoredModel) -> None:
        entry.stored = stored
        self._reset_failures(entry)
        if entry.state is ModelState.READY:
            self._start_replacement(entry)
        elif entry.pinned and entry.state is ModelState.REGISTERED:
            self._start_load(entry)

    async def load(self, alias: str, wait: bool = False) -> ModelStatus:
        """Load `alias` now (or switch it to its registered revision), resetting a failure
        back-off. With `wait`, return once it is ready (`ModelUnavailable` if it cannot be
        within --load-timeout)."""
        self._refuse_if_closed()
        entry = self._entry(alias)
        self._reset_failures(entry)
        if wait:
            await self._load_now(entry)
        else:
            self._spawn(self._load_quietly(entry))
        return entry.status()

    async def _load_quietly(self, entry: Entry) -> None:
        # Nobody waits for the answer: a failure is in the log and the model's status.
        with contextlib.suppress(RegistryError):
            await self._load_now(entry)

    async def _load_now(self, entry: Entry) -> None:
        current = entry.current
        if entry.state is ModelState.READY and current is not None:
            if current.revision != entry.stored.revision:
                self._start_replacement(entry)
            deadline = time.monotonic() + self.config.load_timeout
            while entry.replacing and not past(deadline):
                await entry.changed.wait(deadline - time.monotonic())
            return
        async with self.acquire(entry.alias):
            pass

    async def unload(self, alias: str) -> ModelStatus:
        """Drain (up to --drain-timeout) and unload `alias`; pinned models refuse."""
        entry = self._entry(alias)
        if entry.pinned:
            raise SpecConflict(
                alias,
                f"the model {alias!r} is pinned: it stays loaded (change 'pinned' with PUT, "
                "or start the server without it)",
            )
        if entry.state is ModelState.LOADING:
            raise SpecConflict(alias, f"the model {alias!r} is loading; unload it once ready")
        if entry.state is ModelState.READY:
            await self._unload(entry, "unloaded on request")
        deadline = time.monotonic() + self.config.drain_timeout + self.config.tick
        while entry.state is ModelState.DRAINING and not past(deadline):
            await entry.changed.wait(deadline - time.monotonic())
        return entry.status()

    async def remove(self, alias: str) -> None:
        """Forget `alias`: new requests get `ModelNotFound` at once, requests in flight
        finish (up to --drain-timeout), then it is unloaded."""
        async with self._admin:
            entry = self._entry(alias)
            await asyncio.to_thread(self.store.delete, alias)
            self._drop(entry)
        await self._unload_dropped(entry, "removed")

    async def refresh(self) -> None:
        """Take in what other processes changed in the store (the ingress replicas of a Ray
        deployment share one, docs/ray.md): new registrations, new revisions (a loaded model
        switches as after `replace`), removals (as after `remove`). Models served through
        `add` are not stored and stay."""
        stored = {s.spec.alias: s for s in await asyncio.to_thread(self.store.models)}
        dropped = []
        async with self._admin:
            if self._closed:
                return
            for alias, fresh in stored.items():
                entry = self._entries.get(alias)
                if entry is None:
                    self._entries[alias] = Entry(fresh, self.config.keep_alive, False)
                elif (fresh.revision, fresh.created_at) != (
                    entry.stored.revision,
                    entry.stored.created_at,
                ):
                    self._take_revision(entry, fresh)
            for alias, entry in list(self._entries.items()):
                if alias not in stored and alias not in self._unstored:
                    self._drop(entry)
                    dropped.append(entry)
        for entry in dropped:
            await self._unload_dropped(entry, "removed by another server")

    def _drop(self, entry: Entry) -> None:
        del self._entries[entry.alias]
        entry.removed = True
        self._leaving.add(entry)
        self._notify(entry)

    async def _unload_dropped(self, entry: Entry, why: str) -> None:
        if entry.state is ModelState.READY:
            await self._unload(entry, why)
        self._forget_if_gone(entry)

    def _reset_failures(self, entry: Entry) -> None:
        entry.failures, entry.retry_at = 0, 0.0
        if entry.state is ModelState.FAILED:
            entry.state = ModelState.REGISTERED
        self._notify(entry)

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise RegistryError("the server is shutting down")

    # -- looking --------------------------------------------------------------------------------
    def status(self, alias: str) -> ModelStatus:
        return self._entry(alias).status()

    def list(self) -> list[ModelStatus]:
        """Every model, the command line's first (`_in_order`)."""
        return [entry.status() for entry in self._in_order()]

    def list_first(self, aliases: Sequence[str]) -> None:
        """List `aliases` first, in this order: the command line's models where they were
        stored before this registry started (the cluster's ingress), as `start` does."""
        self._command_line = list(aliases)

    @property
    def closed(self) -> bool:
        return self._closed

    # `list` is a method here: annotations below name the builtin explicitly.
    def problems(self) -> builtins.list[str]:
        """Why the server is not ready (empty: ready): a start-up model not ready yet, or
        a loaded engine whose loop is not running."""
        if self._closed:
            return ["the server is shutting down"]
        problems = []
        now = time.monotonic()
        for entry in self._entries.values():
            current = entry.current
            if current is not None and entry.state is ModelState.READY:
                if not current.handle.engine.alive:
                    problems.append(f"model {entry.alias!r}: the engine loop is not running")
            elif entry.startup:
                problems.append(self._not_ready(entry, now))
        return problems

    @staticmethod
    def _not_ready(entry: Entry, now: float) -> str:
        if entry.state is ModelState.LOADING:
            return f"model {entry.alias!r} is loading ({now - entry.load_started:.0f} s so far)"
        if entry.state is ModelState.FAILED:
            return f"model {entry.alias!r} failed to load: {entry.last_error}"
        return f"model {entry.alias!r} is {entry.state}"

    def liveness_problems(self) -> builtins.list[str]:
        """Loops that stopped making progress for --liveness-timeout (empty: alive): the
        lifecycle loop, or an engine loop stuck in a step."""
        now = time.monotonic()
        limit = self.config.liveness_timeout
        problems = []
        housekeeper = self._housekeeper
        if housekeeper is not None and not self._closed:
            if housekeeper.done():
                problems.append("the model lifecycle loop stopped")
            elif now - self._last_tick > limit:
                problems.append(
                    f"the model lifecycle loop made no progress for {now - self._last_tick:.0f} s"
                )
        for entry in self._entries.values():
            for version in entry.versions():
                engine = version.handle.engine
                if engine.alive and now - engine.last_progress > limit:
                    problems.append(
                        f"model {entry.alias!r}: the engine loop made no progress for "
                        f"{now - engine.last_progress:.0f} s"
                    )
        return problems

    def engine_stats(self) -> builtins.list[tuple[str, EngineStats]]:
        """Each loaded model's engine counters, by alias (for metrics at scrape time);
        remote engines keep theirs in their replicas."""
        loaded = [(alias, e.current) for alias, e in self._entries.items() if e.current]
        counters = [(alias, version.handle.engine.stats()) for alias, version in loaded]
        return [(alias, stats) for alias, stats in counters if stats is not None]

    # -- shutting down ----------------------------------------------------------------------------
    async def close(self, drain_timeout: float | None = None) -> None:
        """Admit nothing more, let in-flight requests finish (up to `drain_timeout`,
        default --drain-timeout), then close every engine. Loads under way finish first
        and are unloaded at once."""
        self._closed = True
        timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
        for entry in self._all():
            self._notify(entry)
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeper
        closing = [
            self._unload(e, "the server is shutting down", drain=timeout) for e in self._all()
        ]
        await asyncio.gather(*closing)
        # Loads, retirements and unloads already under way end by themselves now.
        pending = set(self._tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout + self.config.tick)
            for task in late:
                logger.warning("still closing after %.0f s: %r", timeout, task)
        if self._owns_store:
            self.store.close()
