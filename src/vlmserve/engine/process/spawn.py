"""`EngineProcess`: the engine's process as an object — spawned, waited for until its engine
is built, described when it ends (which signal, which status), stopped (asked, then killed).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal

from vlmserve.config import EngineConfig
from vlmserve.engine.process.wire import EngineFacts, Ready, StartFailed
from vlmserve.engine.process.worker import ProcessSettings, run_engine_process

logger = logging.getLogger("vlmserve.engine.process")

JOIN_TIMEOUT_S = 30.0  # a step is milliseconds to seconds; past this the process is killed
EXIT_STATUS_WAIT_S = 0.5  # the pipe closes a moment before the exit status is known


class EngineProcess:
    def __init__(self, config: EngineConfig, settings: ProcessSettings) -> None:
        # spawn, not fork: a fork would copy this process's threads' locks mid-use.
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=run_engine_process,
            args=(config, child, settings),
            name="vlmserve-engine",
            daemon=True,  # never outlives this process
        )
        self.process.start()
        child.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def wait_ready(self, timeout: float) -> EngineFacts:
        """The built engine's facts; raises what the build raised, TimeoutError, or
        RuntimeError when the process died first."""
        if not self.conn.poll(timeout):
            raise TimeoutError(f"the engine process did not start within {timeout:g} s")
        try:
            event = self.conn.recv()
        except EOFError:
            self.process.join(JOIN_TIMEOUT_S)
            raise RuntimeError(
                f"the engine process exited before it was ready ({self.describe_exit()})"
            ) from None
        if isinstance(event, StartFailed):
            raise event.error.error()
        assert isinstance(event, Ready), event
        return event.facts

    def describe_exit(self) -> str:
        self.process.join(EXIT_STATUS_WAIT_S)
        code = self.process.exitcode
        if code is None:
            return f"pid {self.pid}, still running"
        if code < 0:
            return f"pid {self.pid} killed by {signal.Signals(-code).name}"
        return f"pid {self.pid} exited with status {code}"

    def stop(self) -> None:
        """Wait for the process to end (it was told to, or died); kill it past the timeout."""
        self.process.join(JOIN_TIMEOUT_S)
        if self.process.is_alive():
            logger.error(
                "the engine process did not exit within %.0f s; killing it", JOIN_TIMEOUT_S
            )
            self.process.kill()
            self.process.join(JOIN_TIMEOUT_S)
        self.conn.close()
