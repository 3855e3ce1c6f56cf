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
from vlmserve.api.logprobs import completion_logprobs, echo_logprobs
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
from vlmserve.serving.scoring import prompt_logprobs
from vlmserve.types import CompletionOutput

logger = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(require_api_key)], route_class=StrictJSONRoute)


def _logprobs(
    model: ModelInfo,
    k: int | None,
    c: CompletionOutput,
    start: int,
    text_offset: int,
    echoed: CompletionLogprobs | None = None,
) -> CompletionLogprobs | None:
    """The logprobs of `c`'s tokens from `start` on, after the echoed prompt's if given."""
    if k is None or c.logprobs is None:
        return None
    generated = completion_logprobs(
        c.token_ids[start:], c.logprobs[start:], k, model.decode, text_offset
    )
    return generated if echoed is None else echoed + generated


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
        # What `echo` puts before each prompt's choices: the prompt as text (and its
        # logprobs, when logprobs were asked for).
        echoes = [
            (p if isinstance(p, str) else handle.info.decode(p)) if body.echo else ""
            for p in prompts
        ]
        echoed: list[CompletionLogprobs | None] = [None] * len(prompts)
        if body.echo and params.logprobs is not None:
            echoed = await _prompt_logprobs(handle, prompts, params.logprobs, request_id, salt)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream(
                handle.info,
                generations,
                request_id,
                params.logprobs,
                include_usage,
                body.n,
                echoes,
                echoed,
            )
            # The stream now holds the model and the engine requests until it ends.
            return sse_response(events, held.pop_all().aclose)
        finals = await final_outputs(generations, request.is_disconnected)
    choices = [
        CompletionChoice(
            index=i * body.n + c.index,
            text=echoes[i] + c.text,
            logprobs=_logprobs(handle.info, params.logprobs, c, 0, len(echoes[i]), echoed[i]),
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
        *(
            service.start_completion(handle, job, RequestTimer(metrics, handle.info.name).observe)
            for job in jobs
        ),
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


async def _prompt_logprobs(
    handle: ModelHandle,
    prompts: list[str | list[int]],
    k: int,
    request_id: str,
    salt: str | None,
) -> list[CompletionLogprobs | None]:
    """Each prompt's own logprobs (teacher-forced by the engine's scoring pass), for `echo`
    with `logprobs`; computed together, beside the prompts' generations."""
    # Tokenized as the engine tokenized them, off the event loop (prompts may be long).
    ids = [
        p if isinstance(p, list) else await asyncio.to_thread(handle.info.encode, p)
        for p in prompts
    ]
    entries = await asyncio.gather(
        *(
            prompt_logprobs(handle, tokens, k, f"{request_id}-prompt-{i}", salt)
            for i, tokens in enumerate(ids)
        )
    )
    return [
        echo_logprobs(tokens, scored, k, handle.info.decode)
        for tokens, scored in zip(ids, entries, strict=True)
    ]


async def _stream(
    model: ModelInfo,
    generations: list[serving.Generation],
    request_id: str,
    k: int | None,
    include_usage: bool,
    n: int,
    echoes: list[str],
    echoed: list[CompletionLogprobs | None],
) -> AsyncIterator[bytes]:
    chunk: ChunkWriter[CompletionChoice] = chunk_writer(
        Completion, request_id, model.name, include_usage
    )
    started: set[int] = set()  # choices whose first chunk went out

    def choice(d: Delta) -> CompletionChoice:
        c = d.output
        # A choice's first chunk starts with its prompt (and its logprobs) under `echo`.
        prompt = c.index // n
        first = c.index not in started
        started.add(c.index)
        lead = echoes[prompt] if first else ""
        lps = _logprobs(
            model,
            k,
            c,
            d.first_token,
            len(echoes[prompt]) + d.first_char,
            echoed[prompt] if first else None,
        )
        return CompletionChoice(
            index=c.index, text=lead + d.text, logprobs=lps, finish_reason=c.finish_reason
        )

    tracker = DeltaTracker(n, k is not None, len(generations))
    events = stream_events(merged_outputs(generations), tracker, choice, chunk, include_usage)
    async with contextlib.aclosing(events):
        async for event in events:
            yield event
