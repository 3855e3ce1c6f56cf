"""POST /v1/completions: parse (pydantic) -> the serving layer (model, raw prompt, generation)
-> the answer, whole or as SSE. Nothing here but HTTP shapes."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from vlmserve import serving
from vlmserve.api.auth import request_tenant, require_api_key
from vlmserve.api.json_body import StrictJSONRoute
from vlmserve.api.logprobs import completion_logprobs
from vlmserve.api.metrics import RequestTimer
from vlmserve.api.params import completion_param, rename
from vlmserve.api.protocol import CompletionRequest, keep_alive_seconds
from vlmserve.api.responses import Completion, CompletionChoice, CompletionLogprobs
from vlmserve.api.sampling import completion_sampling_params
from vlmserve.api.sse import STREAM_RESPONSES, sse_response
from vlmserve.api.state import get_state
from vlmserve.api.streaming import (
    ChunkWriter,
    Delta,
    DeltaTracker,
    chunk_writer,
    stream_events,
)
from vlmserve.api.tenants import cache_salt
from vlmserve.api.usage import usage
from vlmserve.registry import ModelInfo
from vlmserve.types import CompletionOutput

logger = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(require_api_key)], route_class=StrictJSONRoute)


def _logprobs(
    model: ModelInfo, k: int | None, c: CompletionOutput, start: int, text_offset: int
) -> CompletionLogprobs | None:
    if k is None or c.logprobs is None:
        return None
    return completion_logprobs(
        c.token_ids[start:], c.logprobs[start:], k, model.decode, text_offset
    )


@router.post("/v1/completions", response_model=Completion, responses=STREAM_RESPONSES)
async def create_completion(
    body: CompletionRequest, request: Request
) -> Completion | StreamingResponse:
    state = get_state(request)
    # Validated before the model is acquired: a bad request never costs a model load.
    params = completion_sampling_params(body)
    job = serving.CompletionRequest(
        body.prompt,
        params,
        request_id=f"cmpl-{uuid.uuid4().hex}",
        cache_salt=cache_salt(request_tenant(request), body.cache_salt),
    )
    if body.user is not None:  # OpenAI's end-user id: for tracing abuse back, so it is logged
        logger.info("%s from user %r", job.request_id, body.user)
    async with contextlib.AsyncExitStack() as held:
        handle = await held.enter_async_context(
            state.serving.model(body.model, keep_alive_seconds(body.keep_alive))
        )
        try:
            generation = await state.serving.start_completion(
                handle, job, RequestTimer(state.metrics).observe
            )
        except serving.ServingError as exc:
            rename(exc, completion_param(body, exc.param))
            raise
        held.push_async_callback(generation.aclose)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream(
                handle.info, generation, job.request_id, params.logprobs, include_usage, body.n
            )
            # The stream now holds the model and the engine request until it ends.
            return sse_response(events, held.pop_all().aclose)
        final = await generation.final(request.is_disconnected)
    return Completion(
        id=job.request_id,
        created=int(time.time()),
        model=handle.info.name,
        choices=[
            CompletionChoice(
                index=c.index,
                text=c.text,
                logprobs=_logprobs(handle.info, params.logprobs, c, 0, 0),
                finish_reason=c.finish_reason,
            )
            for c in final.outputs
        ],
        usage=usage(final),
    )


async def _stream(
    model: ModelInfo,
    generation: serving.Generation,
    request_id: str,
    k: int | None,
    include_usage: bool,
    n: int,
) -> AsyncIterator[bytes]:
    chunk: ChunkWriter[CompletionChoice] = chunk_writer(
        Completion, request_id, model.name, include_usage
    )

    def choice(d: Delta) -> CompletionChoice:
        c = d.output
        lps = _logprobs(model, k, c, d.first_token, d.first_char)
        return CompletionChoice(
            index=c.index, text=d.text, logprobs=lps, finish_reason=c.finish_reason
        )

    tracker = DeltaTracker(n, k is not None)
    events = stream_events(generation.outputs(), tracker, choice, chunk, include_usage)
    async with contextlib.aclosing(events):
        async for event in events:
            yield event
