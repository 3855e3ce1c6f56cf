"""POST /v1/completions: a raw prompt (text or token ids) -> engine, answered whole or as SSE."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from vlmserve.api.auth import require_api_key
from vlmserve.api.errors import APIError
from vlmserve.api.generation import Generation
from vlmserve.api.logprobs import completion_logprobs
from vlmserve.api.protocol import CompletionRequest
from vlmserve.api.responses import Completion, CompletionChoice, CompletionLogprobs
from vlmserve.api.sampling import client_param, completion_sampling_params
from vlmserve.api.sse import STREAM_RESPONSES, sse_response
from vlmserve.api.state import ServingState, get_state
from vlmserve.api.streaming import (
    ChunkWriter,
    Delta,
    DeltaTracker,
    chunk_writer,
    stream_events,
)
from vlmserve.api.usage import check_model, usage
from vlmserve.types import CompletionOutput

logger = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(require_api_key)])


def _logprobs(
    state: ServingState, k: int | None, c: CompletionOutput, start: int, text_offset: int
) -> CompletionLogprobs | None:
    if k is None or c.logprobs is None:
        return None
    return completion_logprobs(
        c.token_ids[start:], c.logprobs[start:], k, state.model.decode, text_offset
    )


@router.post("/v1/completions", response_model=Completion, responses=STREAM_RESPONSES)
async def create_completion(
    body: CompletionRequest, request: Request
) -> Completion | StreamingResponse:
    state = get_state(request)
    check_model(state, body.model)
    params = completion_sampling_params(body)
    if isinstance(body.prompt, str) and any(t in body.prompt for t in state.model.reserved_tokens):
        # Raw prompts may not forge image placeholders: no image data can come with them.
        raise APIError(400, "the prompt contains a reserved special token", "prompt")
    request_id = f"cmpl-{uuid.uuid4().hex}"
    if body.user is not None:  # OpenAI's end-user id: for tracing abuse back, so it is logged
        logger.info("%s from user %r", request_id, body.user)
    generation = Generation(state, body.prompt, params, request_id)
    try:
        await generation.start()
    except APIError as exc:
        exc.param = client_param(body, exc.param)
        raise
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(
            _stream(state, generation, request_id, params.logprobs, include_usage, body.n)
        )
    final = await generation.final(request)
    return Completion(
        id=request_id,
        created=int(time.time()),
        model=state.model.name,
        choices=[
            CompletionChoice(
                index=c.index,
                text=c.text,
                logprobs=_logprobs(state, params.logprobs, c, 0, 0),
                finish_reason=c.finish_reason,
            )
            for c in final.outputs
        ],
        usage=usage(final),
    )


async def _stream(
    state: ServingState,
    generation: Generation,
    request_id: str,
    k: int | None,
    include_usage: bool,
    n: int,
) -> AsyncIterator[bytes]:
    chunk: ChunkWriter[CompletionChoice] = chunk_writer(
        Completion, request_id, state.model.name, include_usage
    )

    def choice(d: Delta) -> CompletionChoice:
        c = d.output
        lps = _logprobs(state, k, c, d.first_token, d.first_char)
        return CompletionChoice(
            index=c.index, text=d.text, logprobs=lps, finish_reason=c.finish_reason
        )

    tracker = DeltaTracker(n, k is not None)
    events = stream_events(generation.outputs(), tracker, choice, chunk, include_usage)
    async with contextlib.aclosing(events):
        async for event in events:
            yield event
