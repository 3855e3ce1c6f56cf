"""The engine-progress watchdog: a server whose engines hold requests but compute nothing is
not ready, however healthy its HTTP side looks.

Each loaded engine reports how long it has held requests without a step computing anything
(`EngineStats.stalled_seconds`); past `threshold` seconds the model is stuck. `check()` says
which models are stuck (readiness reads it) and logs each stall once as an error naming the
model, its waiting and running requests and the age of its last step, and once more when it
recovers. `run()` checks periodically, so a stall is logged even when nobody probes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from vlmserve.engine.stats import EngineStats

logger = logging.getLogger("vlmserve.watchdog")

CHECK_INTERVAL_S = 1.0

StatsSource = Callable[[], Iterable[tuple[str, EngineStats]]]  # (model, stats) pairs


class EngineWatchdog:
    def __init__(self, stats: StatsSource, threshold: float | None) -> None:
        """`stats`: the registry's `engine_stats`; `threshold` None or 0: never stuck."""
        self._stats = stats
        self.threshold = threshold or None
        self._stuck: set[str] = set()

    def check(self) -> list[str]:
        """One line per stuck model (empty: every engine makes progress)."""
        if self.threshold is None:
            return []
        problems: dict[str, str] = {}
        for model, stats in self._stats():
            if stats.stalled_seconds > self.threshold:
                problems[model] = (
                    f"model {model!r}: no engine step has completed for "
                    f"{stats.stalled_seconds:.0f} s with {stats.num_waiting} waiting and "
                    f"{stats.num_running} running requests (--watchdog-seconds "
                    f"{self.threshold:g})"
                )
        for model in problems.keys() - self._stuck:
            logger.error("engine stuck: %s; /ready answers 503 until it moves", problems[model])
        for model in self._stuck - problems.keys():
            logger.warning("model %r: the engine makes progress again", model)
        self._stuck = set(problems)
        return list(problems.values())

    async def run(self, interval: float = CHECK_INTERVAL_S) -> None:
        """Check every `interval` seconds until cancelled."""
        if self.threshold is None:
            return
        while True:
            self.check()
            await asyncio.sleep(interval)
