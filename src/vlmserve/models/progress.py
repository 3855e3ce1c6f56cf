"""Progress of the long steps a user waits for (reading weights, drawing random weights,
training a tokenizer): a tqdm bar when stderr is a terminal, otherwise an info log line
every `LOG_EVERY_S` seconds, so a service's log or CI output shows that work goes on.

`Progress` counts known work (tensors, parameters); `step` covers one opaque library call
with a heartbeat thread. Either ends with one info line saying how long it took.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import IO

from tqdm import tqdm

logger = logging.getLogger(__name__)

LOG_EVERY_S = 10.0
REFRESH_S = 0.5  # how often a terminal bar of an opaque step updates its clock


def _terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "it",
        *,
        stream: IO[str] | None = None,
        log_every: float = LOG_EVERY_S,
    ) -> None:
        self.what, self.total, self.unit, self.log_every = what, total, unit, log_every
        self.done = 0
        self.started = self._last_log = time.monotonic()
        out = stream if stream is not None else sys.stderr
        self._lock = threading.Lock()
        self._bar: tqdm | None = None
        if _terminal(out):
            self._bar = tqdm(
                total=total,
                desc=what,
                unit=unit,
                unit_scale=bool(total and total >= 10_000),  # 1.2G parameters, 42 tensors
                file=out,
                leave=False,
            )

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)
            elif time.monotonic() - self._last_log >= self.log_every:
                self._log_progress()

    def heartbeat(self) -> None:
        """Show that an opaque step still runs."""
        with self._lock:
            if self._bar is not None:
                self._bar.refresh()
            elif time.monotonic() - self._last_log >= self.log_every:
                self._log_progress()

    def _log_progress(self) -> None:
        self._last_log = time.monotonic()
        elapsed = self._last_log - self.started
        if self.total:
            share = f"{self.done}/{self.total} {self.unit} ({self.done / self.total:.0%})"
            logger.info("%s: %s, %.0f s", self.what, share, elapsed)
        else:
            logger.info("%s: still running, %.0f s", self.what, elapsed)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elapsed = time.monotonic() - self.started
        counted = f" ({self.done:,} {self.unit})" if self.total else ""
        # A step too short to have been waited for is not news (tiny models, warm caches).
        level = logging.INFO if elapsed >= 1 or self._last_log > self.started else logging.DEBUG
        logger.log(level, "%s: done in %.1f s%s", self.what, elapsed, counted)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        elif self._bar is not None:
            self._bar.close()


@contextmanager
def step(
    what: str, *, stream: IO[str] | None = None, log_every: float = LOG_EVERY_S
) -> Iterator[Progress]:
    """Progress for one call that reports nothing itself (e.g. training a tokenizer)."""
    stop = threading.Event()
    with Progress(what, stream=stream, log_every=log_every) as progress:
        tick = min(REFRESH_S, log_every)

        def beat() -> None:
            while not stop.wait(tick):
                progress.heartbeat()

        thread = threading.Thread(target=beat, name="progress", daemon=True)
        thread.start()
        try:
            yield progress
        finally:
            stop.set()
            thread.join()
