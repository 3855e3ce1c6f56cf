"""POST /v1/chat/completions: messages -> chat template -> engine, answered whole or as SSE."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from vlmserve.api.auth import require_api_key
from vlmserve.api.errors import APIError
from vlmserve.api.generation import Generation
from vlmserve.api.logprobs import chat_logprobs
from vlmserve.api.protocol import ChatCompletionRequest
from vlmserve.api.responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatMessageOut,
    ChoiceLogprobs,
)
from vlmserve.api.sampling import chat_sampling_params, client_param
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
from vlmserve.multimodal.prompt import PromptError, build_chat_prompt
from vlmserve.types import CompletionOutput, SamplingParams

logger = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(require_api_key)])


async def _prompt(state: ServingState, body: ChatCompletionRequest) -> dict[str, Any]:
    template = state.model.chat_template
    if template is None:
        raise APIError(
            400,
            "this model has no chat template; start the server with --chat-template",
            "messages",
        )
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    try:
        chat = build_chat_prompt(messages, template, state.model.reserved_tokens)
    except PromptError as exc:
        raise APIError(400, str(exc), exc.param) from exc
    # Counted before anything is fetched: a request over the limit costs no bandwidth.
    for modality in ("image", "video"):
        count = sum(1 for ref in chat.media if ref.modality == modality)
        limit = state.model.media_limits.get(modality, 0)
        if count > limit:
            raise APIError(
                400,
                f"{count} {modality}s in one request; this server allows at most {limit} "
                "(--limit-mm-per-prompt)",
                "messages",
            )
    return await state.media.prompt(chat)


def _logprobs(state: ServingState, k: int | None, c: CompletionOutput) -> ChoiceLogprobs | None:
    if k is None or c.logprobs is None:
        return None
    return ChoiceLogprobs(content=chat_logprobs(c.token_ids, c.logprobs, k, state.model.decode))


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=STREAM_RESPONSES)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request
) -> ChatCompletion | StreamingResponse:
    state = get_state(request)
    check_model(state, body.model)
    params = chat_sampling_params(body)
    prompt = await _prompt(state, body)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    if body.user is not None:  # OpenAI's end-user id: for tracing abuse back, so it is logged
        logger.info("%s from user %r", request_id, body.user)
    generation = Generation(state, prompt, params, request_id)
    try:
        await generation.start()
    except APIError as exc:
        exc.param = client_param(body, exc.param)
        raise
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(_stream(state, body, params, generation, request_id, include_usage))
    final = await generation.final(request)
    choices = [
        ChatChoice(
            index=c.index,
            message=ChatMessageOut(content=c.text),
            logprobs=_logprobs(state, params.logprobs, c),
            finish_reason=c.finish_reason,
        )
        for c in final.outputs
    ]
    return ChatCompletion(
        id=request_id,
        created=int(time.time()),
        model=state.model.name,
        choices=choices,
        usage=usage(final),
    )


async def _stream(
    state: ServingState,
    body: ChatCompletionRequest,
    params: SamplingParams,
    generation: Generation,
    request_id: str,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    k = params.logprobs
    chunk: ChunkWriter[ChatChunkChoice] = chunk_writer(
        ChatCompletionChunk, request_id, state.model.name, include_usage
    )
    yield chunk(
        [
            ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))
            for i in range(body.n)
        ],
        None,
    )

    def choice(d: Delta) -> ChatChunkChoice:
        c = d.output
        lps = None
        if k is not None and c.logprobs is not None:
            content = chat_logprobs(
                c.token_ids[d.first_token :], c.logprobs[d.first_token :], k, state.model.decode
            )
            lps = ChoiceLogprobs(content=content)
        return ChatChunkChoice(
            index=c.index,
            delta=ChatDelta(content=d.text),
            logprobs=lps,
            finish_reason=c.finish_reason,
        )

    tracker = DeltaTracker(body.n, k is not None)
    events = stream_events(generation.outputs(), tracker, choice, chunk, include_usage)
    async with contextlib.aclosing(events):
        async for event in events:
            yield event
