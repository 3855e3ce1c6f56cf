"""The way into a model: admission (single-flight load, bounded waiting, back-off after
failures) and loading on demand. Making room, unloading and replacing are `Residency`'s
(residency.py); `ModelRegistry` adds the administration and the loop.

One event loop, no lock on the request path: a request for a ready model is counted and
admitted without awaiting anything, so a model that loads never delays one that is loaded.
Everything slow (building, closing engines) runs on the engine host's threads. The states
and their transitions are drawn in docs/registry.md.
"""

from __future__ import annotations

import logging
import time

from vlmserve.registry.budget import over_budget
from vlmserve.registry.entry import Entry, LoadAttempt, ModelState, Version
from vlmserve.registry.errors import ModelNotFound, ModelUnavailable
from vlmserve.registry.events import EventKind
from vlmserve.registry.host import Loaded
from vlmserve.registry.residency import NoRoom, Residency
from vlmserve.registry.spec import ModelSpec

logger = logging.getLogger("vlmserve.registry")


class Lifecycle(Residency):
    # -- admission (the request path) ------------------------------------------------------
    def _entry(self, alias: str) -> Entry:
        entry = self._entries.get(alias)
        if entry is None:
            raise self._not_found(alias)
        return entry

    def _not_found(self, alias: str) -> ModelNotFound:
        return ModelNotFound(alias, [entry.alias for entry in self._in_order()])

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
                    raise self._not_found(alias)
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
