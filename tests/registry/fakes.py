"""A fake engine host for lifecycle tests where timing matters: loads take as long as a test
says (or fail), engines generate one token per `token_s` and count what they were asked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from vlmserve.engine.errors import EngineClosed, EngineDraining
from vlmserve.engine.stats import EngineStats
from vlmserve.registry import Loaded, ModelHandle, ModelInfo, ModelSpec
from vlmserve.types import CompletionOutput, RequestOutput, SamplingParams

MIB = 1024 * 1024


class FakeEngine:
    def __init__(self, token_s: float) -> None:
        self.token_s = token_s
        self.closed = False
        self.dead = False
        self.admitting = True
        self.pending = 0
        self.completed = 0
        self.last_progress = time.monotonic()

    @property
    def alive(self) -> bool:
        return not (self.closed or self.dead)

    @property
    def num_in_flight(self) -> int:
        return self.pending

    async def generate(
        self, prompt: object, params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        if self.closed:
            raise EngineClosed("the engine is closed")
        if not self.admitting:
            raise EngineDraining("draining")
        self.pending += 1
        try:
            count = params.max_tokens or 1
            for i in range(count):
                await asyncio.sleep(self.token_s)
                if self.closed:
                    raise EngineClosed("the engine was closed while this request was running")
                last = i == count - 1
                out = CompletionOutput(
                    0, "x" * (i + 1), [7] * (i + 1), None, None, "length" if last else None
                )
                yield RequestOutput(request_id, str(prompt), [1], [out], finished=last)
            self.completed += 1
        finally:
            self.pending -= 1

    async def drain(self, timeout: float) -> bool:
        self.admitting = False
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.pending == 0

    def resume(self) -> None:
        self.admitting = not self.closed

    def close(self) -> None:
        self.closed = True

    def stats(self) -> EngineStats:
        return EngineStats(0, 0, 0.0, 0, 0, 0, 0, 0, 0, 0, 0.0)


@dataclass
class FakeHost:
    """Loads take `load_s` (per alias in `slow`), fail for aliases in `broken`, and measure
    `memory` bytes (per alias in `sizes`)."""

    load_s: float = 0.0
    token_s: float = 0.0
    memory: int = 100 * MIB
    slow: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    engines: list[FakeEngine] = field(default_factory=list)

    async def load(self, spec: ModelSpec) -> Loaded:
        self.loads.append(spec.alias)
        seconds = self.slow.get(spec.alias, self.load_s)
        await asyncio.sleep(seconds)
        if spec.alias in self.broken or spec.model_name in self.broken:
            raise FileNotFoundError(f"no model at {spec.model_name}")
        engine = FakeEngine(self.token_s)
        self.engines.append(engine)
        info = ModelInfo(
            name=spec.alias,
            root=spec.model_name,
            created=int(time.time()),
            max_model_len=spec.max_model_len or 128,
            chat_template=None,
            reserved_tokens=frozenset(),
            media_limits={},
            decode=lambda ids: "",
            encode=lambda text: [],
        )
        memory = self.sizes.get(spec.alias, self.memory)
        return Loaded(ModelHandle(info, engine), memory, max(seconds, 1e-3))  # type: ignore[arg-type]

    async def unload(self, handle: ModelHandle) -> None:
        handle.engine.close()
        self.unloads.append(handle.info.name)
