"""The registry's bookkeeping per model: its state, the loaded version(s) with their own
in-flight counts, waiters, failures and idle time; and `ModelStatus`, the read-only view
that listings and probes get.

Everything here is touched from one event loop only; a `Signal` wakes whoever waits for
a model to change (waiting requests, drains, loads waiting for room).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from dataclasses import dataclass, field

from vlmserve.engine.client import EngineClient
from vlmserve.registry.errors import ModelUnavailable
from vlmserve.registry.info import ModelInfo
from vlmserve.registry.spec import NEVER, ModelSpec
from vlmserve.registry.store import StoredModel

LOAD_GUESS_S = 5.0  # Retry-After for a first load, whose time is not measured yet


class ModelState(enum.StrEnum):
    REGISTERED = "registered"  # known, not loaded
    LOADING = "loading"  # a load is under way (requests wait for it)
    READY = "ready"  # loaded, warmed up, admitting requests
    DRAINING = "draining"  # admits nothing new; in-flight requests finish, then it unloads
    FAILED = "failed"  # the last load failed; no new attempt until the back-off passes


@dataclass(frozen=True)
class ModelHandle:
    """What a request holds while it uses a model."""

    info: ModelInfo
    engine: EngineClient  # AsyncEngine here, or a remote one (a Ray replica's)

    def with_media(self, spec: ModelSpec) -> ModelHandle:
        """This engine under `spec`'s media policy (what requests admitted with it read)."""
        return ModelHandle(dataclasses.replace(self.info, media_policy=spec.media), self.engine)


class Signal:
    """Wakes every current waiter on `notify()` (a level-free asyncio.Event)."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, timeout: float) -> None:
        """Until the next `notify()` or `timeout` seconds, whichever comes first."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, max(0.0, timeout))
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)


@dataclass(eq=False)
class Version:
    """One loaded revision of a model (two exist while a replacement takes over)."""

    handle: ModelHandle
    revision: int
    spec: ModelSpec  # the revision's registration, as it loaded
    memory_bytes: int
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)
    loaded_mono: float = field(default_factory=time.monotonic)
    in_flight: int = 0


@dataclass(eq=False)
class LoadAttempt:
    """One load; `refusal` is what the requests that waited for it get when it did not
    make the model ready."""

    done: asyncio.Event = field(default_factory=asyncio.Event)
    refusal: ModelUnavailable | None = None
    error: Exception | None = None  # what the load raised, as it was raised
    fatal: bool = False  # a start-up model's first load: if it fails, the server exits


class Entry:
    def __init__(self, stored: StoredModel, default_keep_alive: float, pinned: bool) -> None:
        self.stored = stored
        self.state = ModelState.REGISTERED
        self.current: Version | None = None
        self.retiring: list[Version] = []  # replaced versions still draining
        self.attempt: LoadAttempt | None = None  # the load under way
        self.load_started = 0.0  # monotonic start of the last load
        self.reserved = False  # the load under way holds room in the budgets
        self.no_room: str | None = None  # why the load under way waits for room
        self.replacing = False
        self.runtime_pin = pinned  # pinned for this process (the command line's model)
        self.startup = False  # readiness waits for it (pinned when the server started)
        self.removed = False
        self.waiting = 0
        self.failures = 0
        self.retry_at = 0.0  # monotonic; no load attempt before it after a failure
        self.last_error: str | None = None
        self.last_used = time.monotonic()
        self.idle_since: float | None = None  # monotonic; in flight reached 0
        self.default_keep_alive = default_keep_alive
        self.expire_after = self.keep_alive  # set anew by each request that ends
        self.changed = Signal()

    @property
    def alias(self) -> str:
        return self.stored.spec.alias

    @property
    def spec(self) -> ModelSpec:
        return self.stored.spec

    @property
    def pinned(self) -> bool:
        return self.runtime_pin or self.spec.pinned

    @property
    def keep_alive(self) -> float:
        given = self.spec.keep_alive
        return self.default_keep_alive if given is None else given

    @property
    def in_flight(self) -> int:
        return sum(v.in_flight for v in self.versions())

    @property
    def occupies(self) -> bool:
        """Counts against the budgets: loaded, draining, or holding room for a load."""
        return self.current is not None or bool(self.retiring) or self.reserved

    def versions(self) -> list[Version]:
        return ([self.current] if self.current is not None else []) + self.retiring

    def memory_bytes(self) -> int:
        """Measured bytes of what is loaded, plus the estimate for a load holding room."""
        loaded = sum(v.memory_bytes for v in self.versions())
        estimate = (self.stored.memory_bytes or 0) if self.reserved else 0
        return loaded + estimate

    def idle_seconds(self, now: float) -> float:
        if self.idle_since is None or self.in_flight or self.waiting:
            return 0.0
        return now - self.idle_since

    def expires_in(self, now: float) -> float | None:
        """Seconds until an idle unload, None when none is due (busy, pinned, never)."""
        if (
            self.state is not ModelState.READY
            or self.pinned
            or self.expire_after == NEVER
            or self.idle_since is None
            or self.in_flight
        ):
            return None
        return max(0.0, self.idle_since + self.expire_after - now)

    def failed(self, now: float) -> ModelUnavailable:
        """The refusal while the back-off after a failed load runs."""
        return ModelUnavailable(
            self.alias,
            ModelState.FAILED,
            f"its last load failed ({self.last_error}); the next attempt is in "
            f"{self.retry_at - now:.0f} s or after POST /v1/models/{self.alias}/load",
            self.retry_at - now,
        )

    def retry_hint(self, now: float) -> float:
        """Retry-After for a request that gave up waiting: the load time left, if loading."""
        if self.state is ModelState.LOADING:
            expected = self.stored.load_seconds or LOAD_GUESS_S
            return max(1.0, expected - (now - self.load_started))
        return 1.0

    def status(self) -> ModelStatus:
        now = time.monotonic()
        current = self.current
        expires = self.expires_in(now)
        return ModelStatus(
            alias=self.alias,
            spec=self.spec,
            revision=self.stored.revision,
            created_at=self.stored.created_at,
            state=self.state,
            pinned=self.pinned,
            in_flight=self.in_flight,
            waiting=self.waiting,
            info=current.handle.info if current else None,
            alive=current is not None and current.handle.engine.alive,
            loaded_revision=current.revision if current else None,
            loaded_at=current.loaded_at if current else None,
            expires_at=None if expires is None else time.time() + expires,
            memory_bytes=current.memory_bytes if current else self.stored.memory_bytes,
            load_seconds=current.load_seconds if current else self.stored.load_seconds,
            last_error=self.last_error,
            keep_alive=self.keep_alive,
        )


@dataclass(frozen=True)
class ModelStatus:
    """One model as listed. `memory_bytes` and `load_seconds` are measured: at the current
    load, else at the last one (None if never loaded)."""

    alias: str
    spec: ModelSpec
    revision: int
    created_at: float
    state: ModelState
    pinned: bool
    in_flight: int
    waiting: int
    info: ModelInfo | None  # None while not loaded
    alive: bool  # its engine loop runs (False when not loaded)
    loaded_revision: int | None
    loaded_at: float | None  # unix seconds
    expires_at: float | None  # unix seconds of the idle unload, None if none is due
    memory_bytes: int | None
    load_seconds: float | None
    last_error: str | None
    keep_alive: float  # seconds; -1 never
