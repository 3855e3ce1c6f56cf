"""A small, bounded pool for the CPU work a request costs before it reaches the engine:
parsing and validating a large body, rendering a long chat template.

That work holds the GIL in bursts: on the event loop, one 12 MB body of 400k parts stalled
every other request (and `/health`) for seconds. Here it runs on `workers` threads, and at
most `max_queued` more requests wait for one; past that the request is refused at once
(503 `server_busy`, Retry-After) rather than queued behind minutes of work. Small requests
never come here: their work costs less than a thread hop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from vlmserve.serving.errors import ServingError

T = TypeVar("T")

DEFAULT_WORKERS = 2
DEFAULT_MAX_QUEUED = 8


class WorkPool:
    def __init__(
        self, workers: int = DEFAULT_WORKERS, max_queued: int = DEFAULT_MAX_QUEUED
    ) -> None:
        if workers < 1 or max_queued < 0:
            raise ValueError(
                f"a work pool needs workers >= 1 and max_queued >= 0, got {workers}, {max_queued}"
            )
        self.limit = workers + max_queued
        self.in_use = 0  # submitted and not finished (event loop only)
        # Threads start on first use: most servers never see a large request.
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="vlmserve-work")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a worker thread; ServingError 503 when the pool is full. A caller
        that is cancelled (its client left) gives up its place only once the work it
        started has ended, so the bound holds for the threads, not just the callers."""
        if self.in_use >= self.limit:
            raise ServingError(
                503,
                f"the server is busy preparing {self.in_use} other large requests; retry",
                code="server_busy",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        self.in_use += 1
        future: Future[T] = self._executor.submit(fn, *args)
        future.add_done_callback(lambda _: _call_soon(loop, self._release))
        try:
            return await asyncio.wrap_future(future)
        finally:
            future.cancel()  # still queued: it never runs (and is released at once)

    def _release(self) -> None:
        self.in_use -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop has closed: nothing is counted any more
        loop.call_soon_threadsafe(callback)
