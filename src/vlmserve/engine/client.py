"""`EngineClient`: what the layers above use of an engine, whichever process runs it.

`AsyncEngine` is the engine in this process; `vlmserve.cluster`'s `RemoteEngine` is one in a
Ray Serve replica. The registry drives either (start of a request, drain, close, liveness)
and the serving layer generates through either, so neither knows which it has."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from typing import Protocol

from vlmserve.engine.stats import EngineStats
from vlmserve.types import Prompt, RequestOutput, SamplingParams


class EngineClient(Protocol):
    @property
    def alive(self) -> bool:
        """The engine can serve (its loop runs; for a remote one: it is not closed)."""
        ...

    @property
    def num_in_flight(self) -> int: ...

    @property
    def last_progress(self) -> float:
        """`time.monotonic()` when its loop last turned (liveness)."""
        ...

    def reserve(self) -> AbstractContextManager[None]:
        """A place held while the caller prepares a request (media), refused as `generate`
        would refuse it."""
        ...

    def generate(
        self, prompt: Prompt, params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]: ...

    async def score(
        self,
        prompt: Prompt,
        continuations: list[list[int]],
        request_id: str,
        top_logprobs: int = 0,
    ) -> RequestOutput:
        """Teacher-forced log-probabilities of `continuations` after `prompt` (and the
        `top_logprobs` most likely tokens at each position)."""
        ...

    async def drain(self, timeout: float) -> bool: ...

    def resume(self) -> None: ...

    def close(self) -> None: ...

    def stats(self) -> EngineStats | None:
        """Its counters for metrics; None when they are kept elsewhere (a remote engine's
        replicas report their own)."""
        ...
