"""POST /v1/completions: parse (pydantic) -> the serving layer (model, raw prompt, generation)
-> the answer, whole or as SSE. Nothing here but HTTP shapes.

A list of prompts runs as one engine request per prompt, all started together; the answer's
choices are prompt-major (prompt i's sample j is choice i * n + j), as OpenAI numbers them.
"""

from __future__ import annotations

import asyncio
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
from vlmserve.api.metrics import Metrics, RequestTimer
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
from vlmserve.registry import ModelHandle, ModelInfo
from vlmserve.serving.batch import final_outputs, merged_outputs
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
    request_id = f"cmpl-{uuid.uuid4().hex}"
    prompts = body.prompts()
    salt = cache_salt(request_tenant(request), body.cache_salt)
    jobs = [
        serving.CompletionRequest(
            prompt,
            params,
            request_id=f"{request_id}-{i}" if body.is_batch else request_id,
            cache_salt=salt,
        )
        for i, prompt in enumerate(prompts)
    ]
    if body.user is not None:  # OpenAI's end-user id: for tracing abuse back, so it is logged
        logger.info("%s from user %r", request_id, body.user)
    async with contextlib.AsyncExitStack() as held:
        handle = await held.enter_async_context(
            state.serving.model(body.model, keep_alive_seconds(body.keep_alive))
        )
        generations = await _start(state.serving, handle, body, jobs, state.metrics, held)
        # What `echo` puts before each prompt's choices: the prompt as text.
        echoes = [
            (p if isinstance(p, str) else handle.info.decode(p)) if body.echo else ""
            for p in prompts
        ]
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream(
                handle.info, generations, request_id, params.logprobs, include_usage, body.n, echoes
            )
            # The stream now holds the model and the engine requests until it ends.
            return sse_response(events, held.pop_all().aclose)
        finals = await final_outputs(generations, request.is_disconnected)
    choices = [
        CompletionChoice(
            index=i * body.n + c.index,
            text=echoes[i] + c.text,
            logprobs=_logprobs(handle.info, params.logprobs, c, 0, len(echoes[i])),
            finish_reason=c.finish_reason,
        )
        for i, final in enumerate(finals)
        for c in final.outputs
    ]
    return Completion(
        id=request_id,
        created=int(time.time()),
        model=handle.info.name,
        choices=choices,
        usage=usage(finals),
    )


async def _start(
    service: serving.Serving,
    handle: ModelHandle,
    body: CompletionRequest,
    jobs: list[serving.CompletionRequest],
    metrics: Metrics,
    held: contextlib.AsyncExitStack,
) -> list[serving.Generation]:
    """Every prompt's engine request, started together so that their prefills share steps;
    each one started is aborted with `held` unless it finishes. A refusal names the prompt
    as the client wrote it (`prompt[2]` in a list)."""
    results = await asyncio.gather(
        *(service.start_completion(handle, job, RequestTimer(metrics).observe) for job in jobs),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, serving.Generation):
            held.push_async_callback(result.aclose)
    for i, result in enumerate(results):
        if isinstance(result, serving.ServingError):
            param = completion_param(body, result.param)
            if param is not None and param.startswith("prompt"):
                param = body.prompt_param(i)
            rename(result, param)
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, serving.Generation)]


async def _stream(
    model: ModelInfo,
    generations: list[serving.Generation],
    request_id: str,
    k: int | None,
    include_usage: bool,
    n: int,
    echoes: list[str],
) -> AsyncIterator[bytes]:
    chunk: ChunkWriter[CompletionChoice] = chunk_writer(
        Completion, request_id, model.name, include_usage
    )
    echoed: set[int] = set()

    def choice(d: Delta) -> CompletionChoice:
        c = d.output
        # A choice's first chunk starts with its prompt when `echo` asked for it.
        echo = echoes[c.index // n]
        lead = "" if c.index in echoed else echo
        echoed.add(c.index)
        lps = _logprobs(model, k, c, d.first_token, len(echo) + d.first_char)
        return CompletionChoice(
            index=c.index, text=lead + d.text, logprobs=lps, finish_reason=c.finish_reason
        )

    tracker = DeltaTracker(n, k is not None, len(generations))
    events = stream_events(merged_outputs(generations), tracker, choice, chunk, include_usage)
    async with contextlib.aclosing(events):
        async for event in events:
            yield event
