"""The lifecycle of each model: admission (single-flight load, bounded waiting, back-off
after failures), making room (budgets, eviction with a bounded drain), unloading (idle,
evicted, replaced, removed). `ModelRegistry` adds the administration and the loop.

One event loop, no lock on the request path: a request for a ready model is counted and
admitted without awaiting anything, so a model that loads never delays one that is loaded.
Everything slow (building, closing engines) runs on the engine host's threads. The states
and their transitions are drawn in docs/registry.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Coroutine
from typing import Any

from vlmserve.config import RegistryConfig
from vlmserve.registry.budget import choose_victim, over_budget, shortfall
from vlmserve.registry.entry import Entry, LoadAttempt, ModelHandle, ModelState, Signal, Version
from vlmserve.registry.errors import ModelNotFound, ModelUnavailable
from vlmserve.registry.events import EventKind, Listeners
from vlmserve.registry.host import EngineHost, Loaded
from vlmserve.registry.spec import ModelSpec
from vlmserve.registry.store import RegistryStore

logger = logging.getLogger("vlmserve.registry")


def past(deadline: float) -> bool:
    return time.monotonic() >= deadline


class NoRoom(Exception):
    """The budgets leave no room for a load and no eviction made some in time."""


class Lifecycle:
    def __init__(self, host: EngineHost | None, store: RegistryStore, config: RegistryConfig):
        self.host = host
        self.store = store
        self.config = config
        self._entries: dict[str, Entry] = {}
        self._leaving: set[Entry] = set()  # removed, still unloading (counts in budgets)
        self._changed = Signal()  # any model changed: loads waiting for room look again
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.events = Listeners()  # loads, failures, unloads, evictions (metrics count them)

    # -- admission (the request path) ------------------------------------------------------
    def _entry(self, alias: str) -> Entry:
        entry = self._entries.get(alias)
        if entry is None:
            raise ModelNotFound(alias, list(self._entries))
        return entry

    async def _admit(self, alias: str) -> tuple[Entry, Version]:
        """The ready version of `alias`, counted in flight; loads it first if needed (one
        load however many wait), waiting at most --load-timeout."""
        entry = self._entry(alias)
        deadline: float | None = None
        joined: LoadAttempt | None = None
        try:
            # Each turn returns, raises, or sleeps until the entry changes; the deadline
            # bounds the turns.
            while True:
                now = time.monotonic()
                if self._closed:
                    raise ModelUnavailable(alias, entry.state, "the server is shutting down")
                if entry.removed:
                    raise ModelNotFound(alias, list(self._entries))
                if entry.state is ModelState.READY and entry.current is not None:
                    version = entry.current
                    version.in_flight += 1
                    entry.idle_since = None
                    entry.last_used = now
                    return entry, version
                if joined is not None and joined.refusal is not None:
                    raise joined.refusal
                if entry.state is ModelState.FAILED and now < entry.retry_at:
                    raise entry.failed(now)
                if deadline is None:
                    self._join_queue(entry)
                    deadline = now + self.config.load_timeout
                if entry.state in (ModelState.REGISTERED, ModelState.FAILED):
                    joined = self._start_load(entry)
                elif entry.state is ModelState.LOADING and joined is None:
                    joined = entry.attempt
                if now >= deadline:
                    room = f" (no room: {entry.no_room})" if entry.no_room else ""
                    raise ModelUnavailable(
                        alias,
                        entry.state,
                        f"not ready within --load-timeout {self.config.load_timeout:g} s{room}",
                        entry.retry_hint(now),
                    )
                await entry.changed.wait(deadline - now)
        finally:
            if deadline is not None:
                entry.waiting -= 1

    def _join_queue(self, entry: Entry) -> None:
        limit = entry.spec.max_waiting or self.config.max_waiting
        if entry.waiting >= limit:
            raise ModelUnavailable(
                entry.alias,
                entry.state,
                f"{entry.waiting} requests already wait for it (--max-waiting {limit})",
                entry.retry_hint(time.monotonic()),
            )
        entry.waiting += 1

    def _release(self, entry: Entry, version: Version, keep_alive: float | None) -> None:
        """A request is done with `version`. Its keep-alive (or the model's) counts from
        the moment nothing is in flight."""
        version.in_flight -= 1
        now = time.monotonic()
        entry.last_used = now
        entry.expire_after = entry.keep_alive if keep_alive is None else keep_alive
        if version is entry.current and version.in_flight == 0:
            entry.idle_since = now
            if entry.expires_in(now) == 0 and not entry.waiting:
                self._spawn(self._unload(entry, "keep_alive 0: unloading after its last request"))
        self._notify(entry)

    # -- loading ----------------------------------------------------------------------------
    def _start_load(self, entry: Entry) -> LoadAttempt:
        """The load under way, or a new one (single flight)."""
        if entry.attempt is None:
            entry.attempt = LoadAttempt()
            entry.state = ModelState.LOADING
            entry.load_started = time.monotonic()
            self._notify(entry)
            self._spawn(self._load(entry, entry.attempt))
        return entry.attempt

    async def _load(self, entry: Entry, attempt: LoadAttempt) -> None:
        revision, spec = entry.stored.revision, entry.spec  # a PUT meanwhile: replaced after
        try:
            await self._make_room(entry)
            loaded = await self._host_load(spec)
        except NoRoom as exc:
            entry.state = ModelState.REGISTERED
            attempt.refusal = ModelUnavailable(entry.alias, ModelState.LOADING, str(exc), 1.0)
            logger.warning("model %r: not loaded: %s", entry.alias, exc)
        except Exception as exc:
            self._record_failure(entry, exc, fatal=attempt.fatal)
            self.events.emit(entry.alias, EventKind.LOAD_FAILED)
            attempt.refusal = entry.failed(time.monotonic())
            attempt.error = exc
        else:
            await self._install(entry, attempt, loaded, revision, spec)
        finally:
            entry.reserved, entry.no_room = False, None
            entry.attempt = None
            attempt.done.set()
            self._notify(entry)
            self._forget_if_gone(entry)

    async def _install(
        self, entry: Entry, attempt: LoadAttempt, loaded: Loaded, revision: int, spec: ModelSpec
    ) -> None:
        if self._closed or entry.removed:
            entry.state = ModelState.REGISTERED
            why = "the server is shutting down" if self._closed else "it was removed"
            attempt.refusal = ModelUnavailable(entry.alias, entry.state, why)
            await self._host_unload(loaded.handle)
            return
        entry.current = Version(
            loaded.handle, revision, spec, loaded.memory_bytes, loaded.load_seconds
        )
        entry.state = ModelState.READY
        entry.failures, entry.last_error = 0, None
        entry.idle_since = time.monotonic()
        entry.expire_after = entry.keep_alive
        self.events.emit(entry.alias, EventKind.LOADED, loaded.load_seconds)
        await self._measured(entry, loaded)
        if entry.stored.revision != revision:  # changed while it loaded
            self._start_replacement(entry)
        if over_budget(self._all(), self.config):
            self._spawn(self._enforce_memory_budget(entry))

    async def _measured(self, entry: Entry, loaded: Loaded) -> None:
        """Keep what the load measured: the next start budgets and ranks with it."""
        entry.stored = dataclasses.replace(
            entry.stored, memory_bytes=loaded.memory_bytes, load_seconds=loaded.load_seconds
        )
        try:
            await asyncio.to_thread(
                self.store.record_load, entry.alias, loaded.memory_bytes, loaded.load_seconds
            )
        except (OSError, sqlite3.Error) as exc:
            logger.warning("model %r: measurements not saved: %s", entry.alias, exc)

    def _record_failure(
        self, entry: Entry, exc: Exception, trace: bool = True, fatal: bool = False
    ) -> None:
        config = self.config
        entry.failures += 1
        backoff = min(
            config.failure_backoff * 2 ** (entry.failures - 1), config.failure_backoff_max
        )
        entry.retry_at = time.monotonic() + backoff
        entry.state = ModelState.FAILED
        entry.last_error = f"{type(exc).__name__}: {exc}"
        # A start-up model's failed first load ends the process: no later load to announce.
        then = "the server cannot start without it" if fatal else f"no new load for {backoff:g} s"
        logger.error(
            "model %r: failure %d (%s); %s", entry.alias, entry.failures, entry.last_error, then
        )
        if trace:
            logger.debug("model %r: the load failed here", entry.alias, exc_info=exc)

    async def _host_load(self, spec: ModelSpec) -> Loaded:
        """The host's load of `spec`, its media policy on the handle whatever the host."""
        loaded = await self._host().load(spec)
        return dataclasses.replace(loaded, handle=loaded.handle.with_media(spec))

    def _host(self) -> EngineHost:
        if self.host is None:
            raise RuntimeError("this registry has no engine host to load models with")
        return self.host

    async def _host_unload(self, handle: ModelHandle) -> None:
        try:
            if self.host is None:  # an engine handed over already started (see `add`)
                await asyncio.to_thread(handle.engine.close)
            else:
                await self.host.unload(handle)
        except Exception:
            logger.exception("model %r: unloading failed", handle.info.name)

    # -- room -----------------------------------------------------------------------------
    def _all(self) -> list[Entry]:
        return [*self._entries.values(), *self._leaving]

    async def _make_room(self, entry: Entry) -> None:
        """Evict until `entry` fits the budgets, then hold its room (`reserved`)."""
        deadline = time.monotonic() + self.config.load_timeout
        while True:  # each turn evicts one model or sleeps; the deadline bounds the turns
            missing = shortfall(entry, self._all(), self.config)
            entry.no_room = missing
            if missing is None:
                entry.reserved = True
                return
            remaining = deadline - time.monotonic()
            victim = choose_victim(self._entries.values(), self.config, exclude=entry)
            if victim is not None and remaining > 0:
                why = f"evicted to make room for {entry.alias!r} ({missing})"
                if not await self._unload(victim, why, evicting=True):
                    raise NoRoom(
                        f"{missing}; evicting {victim.alias!r} was abandoned: its requests "
                        f"did not finish within --drain-timeout {self.config.drain_timeout:g} s"
                    )
                continue
            if remaining <= 0:
                raise NoRoom(
                    f"{missing}, and no loaded model could be evicted within --load-timeout "
                    "(pinned, loaded less than --min-resident ago, or switching)"
                )
            await self._changed.wait(min(remaining, self.config.tick))

    async def _enforce_memory_budget(self, loaded: Entry) -> None:
        """After a load measured more than its estimate: evict idle models until the
        footprints fit again (never a busy one, after the fact)."""
        for _ in range(len(self._entries)):
            excess = over_budget(self._all(), self.config)
            if not excess:
                return
            victim = choose_victim(self._entries.values(), self.config, exclude=loaded)
            if victim is None or victim.in_flight:
                logger.warning("memory budget exceeded by %d bytes; nothing idle to evict", excess)
                return
            why = f"evicted: the measured footprints exceed --memory-budget by {excess} bytes"
            await self._unload(victim, why, evicting=True)

    # -- unloading --------------------------------------------------------------------------
    async def _unload(
        self, entry: Entry, why: str, evicting: bool = False, drain: float | None = None
    ) -> bool:
        """Stop admitting, let in-flight requests finish (--drain-timeout), close, free.
        An eviction whose requests outlast the deadline is abandoned (False; the model
        serves again); any other unload then closes, ending what still runs."""
        version = entry.current
        if entry.state is not ModelState.READY or version is None:
            return version is None
        entry.state = ModelState.DRAINING
        self._notify(entry)
        logger.info("model %r: %s; draining %d request(s)", entry.alias, why, version.in_flight)
        deadline = time.monotonic() + (self.config.drain_timeout if drain is None else drain)
        if not await self._drain(entry, version, deadline) and evicting:
            entry.state = ModelState.READY
            self._notify(entry)
            logger.warning("model %r: eviction abandoned, requests still running", entry.alias)
            return False
        await self._close_version(entry, version, deadline)
        if entry.current is version:
            entry.current = None
        entry.state = ModelState.REGISTERED
        self._notify(entry)
        self._forget_if_gone(entry)
        self.events.emit(entry.alias, EventKind.EVICTED if evicting else EventKind.UNLOADED)
        return True

    async def _drain(self, entry: Entry, version: Version, deadline: float) -> bool:
        while version.in_flight and not past(deadline):  # woken by each release
            await entry.changed.wait(deadline - time.monotonic())
        return version.in_flight == 0

    async def _close_version(self, entry: Entry, version: Version, deadline: float) -> None:
        engine = version.handle.engine
        if not await engine.drain(max(0.0, deadline - time.monotonic())):
            logger.warning(
                "model %r: %d request(s) still running after --drain-timeout; closing ends them",
                entry.alias,
                engine.num_in_flight,
            )
        await self._host_unload(version.handle)

    # -- replacing a loaded model's spec ------------------------------------------------------
    def _start_replacement(self, entry: Entry) -> None:
        if not entry.replacing and not self._adopt(entry):
            entry.replacing = True
            self._spawn(self._replace(entry))

    def _adopt(self, entry: Entry) -> bool:
        """When the registered revision needs no other engine than the serving one (only
        its media policy, keep-alive or pinning changed), the serving version takes it over
        at once: reloading weights for a policy change would cost a load and a drain."""
        current = entry.current
        if current is None or not entry.spec.same_engine(current.spec):
            return False
        serving = current.revision
        current.revision, current.spec = entry.stored.revision, entry.spec
        current.handle = current.handle.with_media(entry.spec)
        entry.expire_after = entry.keep_alive
        logger.info(
            "model %r: revision %d serves on revision %d's engine (no engine setting changed)",
            entry.alias,
            current.revision,
            serving,
        )
        self._notify(entry)
        return True

    async def _replace(self, entry: Entry) -> None:
        """Load the registered revision beside the serving one, switch when it is ready,
        drain the old one. A new revision that fails leaves the old one serving."""
        try:
            while (
                entry.current is not None
                and entry.current.revision != entry.stored.revision
                and not self._adopt(entry)
            ):
                revision, serving, spec = entry.stored.revision, entry.current.revision, entry.spec
                try:
                    await self._make_room(entry)
                    loaded = await self._host_load(spec)
                except Exception as exc:
                    entry.last_error = (
                        f"revision {revision} failed to load ({type(exc).__name__}: {exc}); "
                        f"revision {serving} keeps serving"
                    )
                    logger.error("model %r: %s", entry.alias, entry.last_error)
                    self.events.emit(entry.alias, EventKind.LOAD_FAILED)
                    return
                finally:
                    entry.reserved, entry.no_room = False, None
                old = entry.current
                if (
                    self._closed
                    or entry.removed
                    or old is None
                    or entry.state is not ModelState.READY
                ):
                    await self._host_unload(loaded.handle)
                    return
                entry.current = Version(
                    loaded.handle, revision, spec, loaded.memory_bytes, loaded.load_seconds
                )
                entry.retiring.append(old)
                entry.last_error = None
                self._notify(entry)
                self.events.emit(entry.alias, EventKind.LOADED, loaded.load_seconds)
                logger.info(
                    "model %r: revision %d serves, %d drains", entry.alias, revision, serving
                )
                await self._measured(entry, loaded)
                self._spawn(self._retire(entry, old))
        finally:
            entry.replacing = False
            self._notify(entry)

    async def _retire(self, entry: Entry, version: Version) -> None:
        deadline = time.monotonic() + self.config.drain_timeout
        await self._drain(entry, version, deadline)
        await self._close_version(entry, version, deadline)
        entry.retiring.remove(version)
        self._notify(entry)
        self._forget_if_gone(entry)

    # -- bookkeeping ------------------------------------------------------------------------
    def _forget_if_gone(self, entry: Entry) -> None:
        if entry.removed and not entry.occupies and entry.attempt is None:
            self._leaving.discard(entry)

    def _notify(self, entry: Entry) -> None:
        entry.changed.notify()
        self._changed.notify()

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a registry task failed", exc_info=task.exception())
