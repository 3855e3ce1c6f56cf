"""Where engines come from: the registry asks an `EngineHost` to load a model and to unload
it, and runs the lifecycle (who loads when, waits, budgets, drains) itself.

`LocalEngineHost` builds engines in this process: the checkpoint and the engine are built
on the host's own worker threads (never on the event loop, and never on the default pool
that request preprocessing uses), the engine thread is started, and the model is ready only
once a 1-token warm-up generation succeeded. A Ray deployment replaces the host, not the
registry: its `load` starts a replica application and returns a handle whose engine speaks
`AsyncEngine`'s request side (`generate`, `drain`, `resume`, `alive`, `last_progress`), and
`ProcessEngineHost` (process_host.py) runs each model's engine in a process of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import torch

from vlmserve.config import EngineConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.engine.client import EngineClient
from vlmserve.engine.engine import LLMEngine
from vlmserve.engine.heap import freeze_long_lived
from vlmserve.engine.loading import load_checkpoint
from vlmserve.engine.memory import process_rss, tensor_bytes
from vlmserve.registry.entry import ModelHandle
from vlmserve.registry.info import ModelInfo
from vlmserve.registry.spec import ModelSpec
from vlmserve.types import Prompt, SamplingParams

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
WARMUP_PROMPT = "Hello"


@dataclass(frozen=True)
class Loaded:
    """A model ready to serve, with what its load measured."""

    handle: ModelHandle
    memory_bytes: int
    load_seconds: float


class EngineHost(Protocol):
    async def load(self, spec: ModelSpec) -> Loaded:
        """Build, start and warm up `spec`'s engine; raise if it cannot serve."""
        ...

    async def unload(self, handle: ModelHandle) -> None:
        """Close the engine (ending whatever still runs) and free its memory."""
        ...


ReadyHook = Callable[[LLMEngine, ModelInfo], None]


class LocalEngineHost:
    """Engines in this process. `defaults` supplies every setting a registration leaves
    out (the server's flags); `on_ready` sees each engine that became ready (the server
    logs what was chosen for it). `freeze_heap`: after each load and unload, freeze what
    lives on (engine/heap.py), as a server should; off for a library user's process."""

    def __init__(
        self,
        defaults: EngineConfig,
        max_waiting: int = 1024,
        warmup_timeout: float = 300.0,
        max_concurrent_builds: int = 2,
        on_ready: ReadyHook | None = None,
        freeze_heap: bool = False,
    ) -> None:
        self.defaults = defaults
        self.freeze_heap = freeze_heap
        self.max_waiting = max_waiting
        self.warmup_timeout = warmup_timeout
        self.on_ready = on_ready
        self._executor = ThreadPoolExecutor(max_concurrent_builds, "vlmserve-load")

    async def load(self, spec: ModelSpec) -> Loaded:
        config = spec.engine_config(self.defaults)
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        logger.info("model %r: loading %s", spec.alias, config.model)
        checkpoint = await loop.run_in_executor(self._executor, load_checkpoint, config)
        model = checkpoint.model
        weights = tensor_bytes(model.parameters()) if isinstance(model, torch.nn.Module) else 0
        logger.info(
            "model %r: weights loaded in %.1f s (%.0f MiB, %s on %s)",
            spec.alias,
            time.monotonic() - start,
            weights / MIB,
            str(checkpoint.dtype).removeprefix("torch."),
            checkpoint.device,
        )
        step = time.monotonic()
        engine = await loop.run_in_executor(self._executor, LLMEngine, config, checkpoint)
        del checkpoint, model
        footprint = engine.memory_bytes()
        logger.info(
            "model %r: KV cache of %d blocks (%.0f MiB) in %.1f s",
            spec.alias,
            engine.num_kv_blocks - 1,  # as the start-up summary counts: block 0 is padding
            (footprint - weights) / MIB,
            time.monotonic() - step,
        )
        async_engine = AsyncEngine(engine, max_waiting=spec.max_waiting or self.max_waiting)
        try:
            step = time.monotonic()
            async_engine.start()
            await asyncio.wait_for(_warm_up(async_engine), self.warmup_timeout)
            logger.info(
                "model %r: warm-up generation in %.2f s", spec.alias, time.monotonic() - step
            )
        except BaseException:
            await loop.run_in_executor(self._executor, async_engine.close)
            raise
        seconds = time.monotonic() - start
        logger.info(
            "model %r: ready in %.1f s, footprint %.0f MiB (measured)",
            spec.alias,
            seconds,
            footprint / MIB,
        )
        info = ModelInfo.from_engine(engine, spec.alias)
        if self.on_ready is not None:
            self.on_ready(engine, info)
        if self.freeze_heap:
            freeze_long_lived()
        return Loaded(ModelHandle(info, async_engine), footprint, seconds)

    async def unload(self, handle: ModelHandle) -> None:
        engine = handle.engine
        assert isinstance(engine, AsyncEngine), "loaded by another host"
        device = engine.engine.device
        before = _memory(device)
        start = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(self._executor, engine.close)
        if self.freeze_heap:
            freeze_long_lived()  # the model's objects in reference cycles go now
        after = _memory(device)
        freed = "".join(
            f"; {what} {before[what] / MIB:.0f} -> {after[what] / MIB:.0f} MiB"
            for what in before
            if what in after
        )
        logger.info(
            "model %r: unloaded in %.1f s%s", handle.info.name, time.monotonic() - start, freed
        )

    def close(self) -> None:
        """Stop the build threads (a build still running finishes in the background)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _memory(device: torch.device) -> dict[str, int]:
    """What an unload is expected to give back, as measured now: the process's resident
    memory, and the device's reserved memory on CUDA."""
    measured = {}
    rss = process_rss()
    if rss is not None:
        measured["resident memory"] = rss
    if device.type == "cuda":
        measured["CUDA reserved"] = torch.cuda.memory_reserved(device)
    return measured


async def _warm_up(engine: EngineClient) -> None:
    """One token through the whole path (input processing, prefill, sampling, output)."""
    params = SamplingParams(max_tokens=1)
    final = None
    async for output in engine.generate(
        Prompt(WARMUP_PROMPT), params, f"warmup-{uuid.uuid4().hex}"
    ):
        final = output
    if final is None or final.error is not None or not final.outputs[0].token_ids:
        error = final.error if final is not None else "no output"
        raise RuntimeError(f"the warm-up generation failed: {error}")
