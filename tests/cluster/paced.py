"""A replica whose answers take as long as a slow model's would: each output is held for
`PACE_S` before it is sent. The engine itself finishes at its own speed; what is paced is
how long the request stays in flight on its replica, which is what graceful shutdowns,
downscales and replica deaths are about."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from vlmserve.cluster.replica import Accepted, ModelServer, Refusal
from vlmserve.types import Prompt, RequestOutput, SamplingParams

PACE_S = 0.1


class PacedModelServer(ModelServer):
    async def generate(
        self, prompt: Prompt, params: SamplingParams, request_id: str
    ) -> AsyncIterator[Accepted | RequestOutput | Refusal]:
        async for item in super().generate(prompt, params, request_id):
            if isinstance(item, RequestOutput):
                await asyncio.sleep(PACE_S)
            yield item
