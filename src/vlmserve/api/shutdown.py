"""How `vlmserve serve` stops: SIGTERM (or SIGINT) drains, a second one exits at once, and
nothing can make the process outlive its shutdown timeout by more than a few seconds.

    first signal   /ready -> 503, new requests -> 503 (api/drain.py); requests in flight,
                   streams included, get up to `shutdown_timeout` seconds to finish; then
                   uvicorn stops (what still runs is cancelled: its engine requests are
                   aborted), the engines are closed, and the process exits 0
    second signal  exit now (status 1)
    deadline       if the process is still there `CLOSE_GRACE_S` after the shutdown timeout
                   (an engine thread stuck in a step will not join), it exits (status 1)

uvicorn's own handling (stop listening at once, wait for connections without a limit, then
raise the signal again) is replaced: `DrainingServer.handle_exit` hands signals here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from types import FrameType

import uvicorn

from vlmserve.api.drain import DrainGate

logger = logging.getLogger("vlmserve.server")

CLOSE_GRACE_S = 10.0  # after the drain: stopping uvicorn and closing the engines
FORCED_EXIT_STATUS = 1
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Shutdown:
    def __init__(self, gate: DrainGate, timeout: float) -> None:
        self.gate = gate
        self.timeout = timeout
        self.server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signals = 0
        self._drain: asyncio.Task[None] | None = None

    def install(self, server: uvicorn.Server) -> None:
        """Take SIGTERM and SIGINT from now on (from the event loop's thread)."""
        self.server = server
        self._loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            signal.signal(sig, self.on_signal)

    def on_signal(self, signum: int, frame: FrameType | None = None) -> None:
        # A signal handler: flags and hand-offs only, the work happens on the event loop.
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals > 1:
            logger.warning("%s again: exiting now, %d requests cut", name, self.gate.in_flight)
            _exit(FORCED_EXIT_STATUS)
        self.gate.start()
        deadline = threading.Timer(self.timeout + CLOSE_GRACE_S, self._deadline_passed)
        deadline.daemon = True
        deadline.start()
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._begin_drain, name)

    def _begin_drain(self, name: str) -> None:
        logger.info(
            "%s: draining; /ready answers 503, new requests get 503, %d in flight have up to "
            "%g s to finish (send it again to exit now)",
            name,
            self.gate.in_flight,
            self.timeout,
        )
        self._drain = asyncio.ensure_future(self._drain_then_stop())

    async def _drain_then_stop(self) -> None:
        if not await self.gate.wait_idle(self.timeout):
            logger.warning(
                "%d requests still running after --shutdown-timeout %g s; cutting them",
                self.gate.in_flight,
                self.timeout,
            )
        assert self.server is not None
        self.server.should_exit = True

    def _deadline_passed(self) -> None:
        logger.error(
            "still not stopped %g s after --shutdown-timeout (an engine stuck in a step?); exiting",
            CLOSE_GRACE_S,
        )
        _exit(FORCED_EXIT_STATUS)


def _exit(status: int) -> None:
    logging.shutdown()  # flush what was logged: the way out skips every other clean-up
    os._exit(status)


class DrainingServer(uvicorn.Server):
    """uvicorn, its signals handed to `Shutdown` (no re-raise after it stops)."""

    def __init__(self, config: uvicorn.Config, shutdown: Shutdown) -> None:
        super().__init__(config)
        self.shutdown_control = shutdown

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.shutdown_control.on_signal(sig, frame)
