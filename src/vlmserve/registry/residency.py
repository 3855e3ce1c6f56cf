"""What a loaded model occupies and how it leaves: room in the budgets (eviction with a
bounded drain), unloading (idle, evicted, replaced, removed), and replacing a serving
version by a newly registered revision; with the host calls and the bookkeeping (wake-ups,
background tasks) that loading shares. `Lifecycle` (lifecycle.py) adds admission and
loading on demand; `ModelRegistry` the administration and the loop.

Used from one event loop; everything slow (building, closing engines) runs on the engine
host's threads.
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
from vlmserve.registry.entry import Entry, ModelHandle, ModelState, Signal, Version
from vlmserve.registry.events import EventKind, Listeners
from vlmserve.registry.host import EngineHost, Loaded
from vlmserve.registry.spec import ModelSpec
from vlmserve.registry.store import RegistryStore

logger = logging.getLogger("vlmserve.registry")


def past(deadline: float) -> bool:
    return time.monotonic() >= deadline


class NoRoom(Exception):
    """The budgets leave no room for a load and no eviction made some in time."""


class Residency:
    def __init__(self, host: EngineHost | None, store: RegistryStore, config: RegistryConfig):
        self.host = host
        self.store = store
        self.config = config
        self._entries: dict[str, Entry] = {}
        self._command_line: list[str] = []  # the command line's aliases, in its order
        self._unstored: set[str] = set()  # served through `add`, never in the store
        self._leaving: set[Entry] = set()  # removed, still unloading (counts in budgets)
        self._changed = Signal()  # any model changed: loads waiting for room look again
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.events = Listeners()  # loads, failures, unloads, evictions (metrics count them)

    def _in_order(self) -> list[Entry]:
        """Every model: the command line's first (in its order), then the engines `add`ed,
        then the rest as registered. A persistent registry keeps what earlier runs
        registered; a client that takes the first id it is shown should get the model
        this server was started with."""
        order = {alias: i for i, alias in enumerate(self._command_line)}

        def rank(entry: Entry) -> tuple[int, int]:
            if entry.alias in order:
                return 0, order[entry.alias]
            return (1 if entry.alias in self._unstored else 2), 0

        return sorted(self._entries.values(), key=rank)

    # -- the host and the store ----------------------------------------------------------
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
