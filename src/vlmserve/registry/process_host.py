"""`ProcessEngineHost`: each loaded model's engine in a process of its own (`vlmserve serve
--engine-process`), so HTTP work and the engine loop no longer share one GIL.

A load spawns the engine process (it loads the weights and builds the engine while this
process loads the tokenizer), then warms it up with one generated token, as the in-process
host does; an unload closes the process, which gives all of its memory back. The registry
drives the result like any engine (`ProcessEngine` is an `EngineClient`): an engine process
that dies is seen as a dead engine and retired (/ready 503 until the model loads again).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from vlmserve.config import EngineConfig
from vlmserve.engine.engine import LLMEngine
from vlmserve.engine.process import ProcessEngine, ProcessSettings
from vlmserve.registry.entry import ModelHandle
from vlmserve.registry.host import MIB, Loaded, ReadyHook, _warm_up
from vlmserve.registry.info import ModelInfo
from vlmserve.registry.spec import ModelSpec

logger = logging.getLogger(__name__)


class ProcessEngineHost:
    """`defaults`: the server's engine flags (what a registration leaves out). `setup` runs
    first in every engine process (the server's logging configuration); `on_ready` runs in
    the engine process with the built engine (the start-up summary is logged there). Both
    must pickle: module-level functions or `functools.partial`s of them."""

    def __init__(
        self,
        defaults: EngineConfig,
        max_waiting: int = 1024,
        warmup_timeout: float = 300.0,
        max_concurrent_builds: int = 2,
        on_ready: ReadyHook | None = None,
        setup: Callable[[], None] | None = None,
        cpu_threads: int | None = None,
    ) -> None:
        self.defaults = defaults
        self.max_waiting = max_waiting
        self.warmup_timeout = warmup_timeout
        self.on_ready = on_ready
        self.setup = setup
        self.cpu_threads = cpu_threads
        self._executor = ThreadPoolExecutor(max_concurrent_builds, "vlmserve-load")

    async def load(self, spec: ModelSpec) -> Loaded:
        config = spec.engine_config(self.defaults)
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        logger.info("model %r: starting an engine process for %s", spec.alias, config.model)
        announce = (
            functools.partial(_announce, self.on_ready, spec.alias)
            if self.on_ready is not None
            else None
        )
        settings = ProcessSettings(self.cpu_threads, self.setup, announce)
        engine = ProcessEngine(config, spec.max_waiting or self.max_waiting, settings)
        try:
            await loop.run_in_executor(self._executor, engine.start)
            logger.info(
                "model %r: engine process pid %s built its engine in %.1f s",
                spec.alias,
                engine.pid,
                time.monotonic() - start,
            )
            step = time.monotonic()
            await asyncio.wait_for(_warm_up(engine), self.warmup_timeout)
            logger.info(
                "model %r: warm-up generation in %.2f s", spec.alias, time.monotonic() - step
            )
        except BaseException:
            await loop.run_in_executor(self._executor, engine.close)
            raise
        seconds = time.monotonic() - start
        footprint = engine.memory_bytes()
        logger.info(
            "model %r: ready in %.1f s, footprint %.0f MiB (measured in the engine process)",
            spec.alias,
            seconds,
            footprint / MIB,
        )
        info = ModelInfo.from_engine(engine, spec.alias)
        return Loaded(ModelHandle(info, engine), footprint, seconds)

    async def unload(self, handle: ModelHandle) -> None:
        engine = handle.engine
        assert isinstance(engine, ProcessEngine), "loaded by another host"
        start = time.monotonic()
        pid = engine.pid
        await asyncio.get_running_loop().run_in_executor(self._executor, engine.close)
        logger.info(
            "model %r: unloaded in %.1f s (engine process pid %s ended)",
            handle.info.name,
            time.monotonic() - start,
            pid,
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _announce(hook: ReadyHook, alias: str, engine: LLMEngine) -> None:
    """In the engine process: the ready hook, with the info it expects."""
    hook(engine, ModelInfo.from_engine(engine, alias))
