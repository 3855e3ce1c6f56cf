"""A replica whose answers take as long as a slow model's would: each output is held for
`PACE_S` per token it adds before it is sent. The engine itself finishes at its own speed;
what is paced is how long the request stays in flight on its replica, which is what graceful
shutdowns, downscales and replica deaths are about.

Per token, not per output: a reader slower than the engine gets its outputs coalesced (one
output carrying every token made since its last read), so pacing per output would let a
300-token stream end after a handful of outputs."""

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
        sent = 0  # tokens of the first choice already paced (outputs are cumulative)
        async for item in super().generate(prompt, params, request_id):
            if isinstance(item, RequestOutput):
                made = len(item.outputs[0].token_ids) if item.outputs else sent
                await asyncio.sleep(PACE_S * max(1, made - sent))
                sent = max(sent, made)
            yield item
