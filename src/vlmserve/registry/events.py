"""What the lifecycle reports as it happens (a model loaded, failed to load, was unloaded or
evicted), for whoever counts it — the server's Prometheus metrics — without the registry
knowing who listens. Listeners are called on the event loop and must be quick; one that
raises is logged and never disturbs the lifecycle."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("vlmserve.registry")


class EventKind(enum.StrEnum):
    LOADED = "loaded"  # a revision became ready (first load, reload or replacement)
    LOAD_FAILED = "load_failed"  # a load raised (the model is failed, or the old one serves)
    UNLOADED = "unloaded"  # closed and freed: idle, on request, removed, shut down
    EVICTED = "evicted"  # closed and freed to make room for another model


@dataclass(frozen=True)
class ModelEvent:
    alias: str
    kind: EventKind
    seconds: float | None = None  # LOADED: the measured load time


Listener = Callable[[ModelEvent], None]


class Listeners:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, alias: str, kind: EventKind, seconds: float | None = None) -> None:
        event = ModelEvent(alias, kind, seconds)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("a listener failed on %s", event)
