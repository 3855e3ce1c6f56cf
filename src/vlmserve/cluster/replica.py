"""`ModelServer`: one model's engine inside a Serve replica (the body of every model
application). The replica is the process owner: it sets the thread count, builds the engine
off its event loop, warms it up (a replica is ready only once a token came out), and closes
it when Serve stops the replica (after Serve has let the requests in flight finish).

What crosses the process boundary is plain data: the ingress sends the typed `Prompt` it
built (media already fetched under its policy) with the validated `SamplingParams`; the
replica streams back `Accepted` (the request reached a replica: no more waiting for a
scale-up), then the engine's `RequestOutput`s, or a `Refusal` (the `ServingError` the
serving layer made of an engine error, field for field).

Health: `check_health` reads the engine loop's liveness and never awaits anything, so it
answers as soon as the replica's event loop turns, however many requests generate (the loop
only awaits; engine steps run on the engine thread).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import ray

from vlmserve.config import EngineConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.engine.engine import build_engine
from vlmserve.engine.heap import freeze_long_lived
from vlmserve.engine.loading import set_cpu_threads
from vlmserve.registry import ModelInfo
from vlmserve.serving import Generation, ServingError
from vlmserve.serving.errors import engine_error
from vlmserve.types import Prompt, RequestOutput, SamplingParams

logger = logging.getLogger("vlmserve.cluster")

WARMUP_PROMPT = "Hello"


@dataclass(frozen=True)
class Accepted:
    """A replica took the request (first item of every answer)."""

    pid: int
    node_id: str


@dataclass(frozen=True)
class Refusal:
    """A `ServingError` on its way back to the ingress."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, error: ServingError) -> Refusal:
        return cls(error.status, error.message, error.param, error.code, dict(error.headers))

    def error(self) -> ServingError:
        return ServingError(self.status, self.message, self.param, self.code, self.headers)


@dataclass(frozen=True)
class ReplicaFacts:
    """What a replica tells the ingress about its model (once per model version)."""

    info: ModelInfo
    fingerprint: str  # of the deployment it belongs to (apps.py)
    pid: int
    node_id: str


class ModelServer:
    # Serve awaits an async constructor: the engine is built on a worker thread while the
    # replica's event loop stays free. (mypy wants __init__ to return None.)
    async def __init__(  # type: ignore[misc]
        self,
        alias: str,
        engine_config: EngineConfig,
        fingerprint: str,
        cpu_threads: int,
        max_waiting: int,
    ) -> None:
        start = time.monotonic()
        set_cpu_threads(cpu_threads)
        self._fingerprint = fingerprint
        self._pid, self._node_id = os.getpid(), ray.get_runtime_context().get_node_id()
        engine = await asyncio.to_thread(build_engine, engine_config)
        self._engine = AsyncEngine(engine, max_waiting=max_waiting).start()
        try:
            await _warm_up(self._engine)
        except BaseException:
            await asyncio.to_thread(self._engine.close)
            raise
        self._info = ModelInfo.from_engine(engine, alias)
        freeze_long_lived()  # a replica lives as long as its engine
        logger.info(
            "model %r: replica ready in %.1f s (pid %d, %d CPU threads)",
            alias,
            time.monotonic() - start,
            self._pid,
            cpu_threads,
        )

    def facts(self) -> ReplicaFacts:
        return ReplicaFacts(self._info, self._fingerprint, self._pid, self._node_id)

    async def generate(
        self, prompt: Prompt, params: SamplingParams, request_id: str
    ) -> AsyncIterator[Accepted | RequestOutput | Refusal]:
        """The request's outputs as the engine makes them. A caller that goes away (Serve
        cancels the call) closes this generator, which aborts the request in the engine."""
        yield Accepted(self._pid, self._node_id)
        generation = Generation(self._engine, prompt, params, request_id)
        try:
            await generation.start()
            async for output in generation.outputs():
                yield output
        except ServingError as exc:
            yield Refusal.of(exc)
        finally:
            await generation.aclose()

    async def score(
        self,
        prompt: Prompt,
        continuations: list[list[int]],
        request_id: str,
        top_logprobs: int = 0,
    ) -> RequestOutput | Refusal:
        """The engine's teacher-forced scores; an error the serving layer knows comes back
        as a `Refusal` (a cancelled call aborts the request in the engine)."""
        try:
            return await self._engine.score(prompt, continuations, request_id, top_logprobs)
        except Exception as exc:
            mapped = engine_error(exc)
            if mapped is None:
                raise
            return Refusal.of(mapped)

    def check_health(self) -> None:
        if not self._engine.alive:
            raise RuntimeError("the engine loop is not running")

    def __del__(self) -> None:
        # Serve calls this once the requests in flight have finished (or its graceful
        # shutdown timed out): closing ends whatever is left and frees the memory. Closing
        # twice (the garbage collector calls it again) does nothing.
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.close()


async def _warm_up(engine: AsyncEngine) -> None:
    """One token through the whole path (input processing, prefill, sampling, output)."""
    params = SamplingParams(max_tokens=1)
    final: RequestOutput | None = None
    async for output in engine.generate(WARMUP_PROMPT, params, f"warmup-{uuid.uuid4().hex}"):
        final = output
    if final is None or final.error is not None or not final.outputs[0].token_ids:
        error = final.error if final is not None else "no output"
        raise RuntimeError(f"the warm-up generation failed: {error}")
