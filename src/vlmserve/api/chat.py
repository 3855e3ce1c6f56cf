"""POST /v1/chat/completions: parse (pydantic) -> the serving layer (model, template, media,
generation) -> the answer, whole or as SSE. Nothing here but HTTP shapes."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from vlmserve.api.auth import request_tenant, require_api_key
from vlmserve.api.chat_tools import ToolDeltas, chat_tools, message, name_tool_fields
from vlmserve.api.json_body import StrictJSONRoute
from vlmserve.api.logprobs import chat_logprobs
from vlmserve.api.metrics import RequestTimer
from vlmserve.api.params import chat_param, rename
from vlmserve.api.protocol import ChatCompletionRequest, keep_alive_seconds
from vlmserve.api.responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatMessageOut,
    ChoiceLogprobs,
)
from vlmserve.api.sampling import chat_sampling_params
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
from vlmserve.serving import ChatRequest, Generation, ServingError
from vlmserve.types import CompletionOutput

logger = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(require_api_key)], route_class=StrictJSONRoute)


def _logprobs(model: ModelInfo, k: int | None, c: CompletionOutput) -> ChoiceLogprobs | None:
    if k is None or c.logprobs is None:
        return None
    return ChoiceLogprobs(content=chat_logprobs(c.token_ids, c.logprobs, k, model.decode))


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=STREAM_RESPONSES)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request
) -> ChatCompletion | StreamingResponse:
    state = get_state(request)
    # Validated before the model is acquired: a bad request never costs a model load.
    params = chat_sampling_params(body)
    tools = chat_tools(body)
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    chat = ChatRequest(
        messages,
        params,
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        cache_salt=cache_salt(request_tenant(request), body.cache_salt),
        tools=tools,
    )
    if body.user is not None:  # OpenAI's end-user id: for tracing abuse back, so it is logged
        logger.info("%s from user %r", chat.request_id, body.user)
    async with contextlib.AsyncExitStack() as held:
        handle = await held.enter_async_context(
            state.serving.model(body.model, keep_alive_seconds(body.keep_alive))
        )
        try:
            generation = await state.serving.start_chat(
                handle, chat, RequestTimer(state.metrics, handle.info.name).observe
            )
        except ServingError as exc:
            if tools is not None:
                name_tool_fields(tools, exc)
            rename(exc, chat_param(body, exc.param))
            raise
        held.push_async_callback(generation.aclose)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            deltas = ToolDeltas(tools, body.n) if tools and tools.parses_calls else None
            events = _stream(
                handle.info,
                body.n,
                params.logprobs,
                generation,
                chat.request_id,
                include_usage,
                deltas,
            )
            # The stream now holds the model and the engine request until it ends.
            return sse_response(events, held.pop_all().aclose)
        final = await generation.final(request.is_disconnected)
    choices = []
    for c in final.outputs:
        if tools is not None and tools.parses_calls:
            out, reason = message(tools, c)
        else:
            out, reason = ChatMessageOut(content=c.text), c.finish_reason
        logprobs = _logprobs(handle.info, params.logprobs, c)
        choices.append(
            ChatChoice(index=c.index, message=out, logprobs=logprobs, finish_reason=reason)
        )
    return ChatCompletion(
        id=chat.request_id,
        created=int(time.time()),
        model=handle.info.name,
        choices=choices,
        usage=usage(final),
    )


async def _stream(
    model: ModelInfo,
    n: int,
    k: int | None,
    generation: Generation,
    request_id: str,
    include_usage: bool,
    tool_deltas: ToolDeltas | None = None,
) -> AsyncIterator[bytes]:
    chunk: ChunkWriter[ChatChunkChoice] = chunk_writer(
        ChatCompletionChunk, request_id, model.name, include_usage
    )
    yield chunk(
        [ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content="")) for i in range(n)],
        None,
    )

    def choice(d: Delta) -> ChatChunkChoice:
        c = d.output
        lps = None
        if k is not None and c.logprobs is not None:
            content = chat_logprobs(
                c.token_ids[d.first_token :], c.logprobs[d.first_token :], k, model.decode
            )
            lps = ChoiceLogprobs(content=content)
        if tool_deltas is not None:
            delta, reason = tool_deltas.delta(c)
        else:
            delta, reason = ChatDelta(content=d.text), c.finish_reason
        return ChatChunkChoice(index=c.index, delta=delta, logprobs=lps, finish_reason=reason)

    tracker = DeltaTracker(n, k is not None)
    events = stream_events(generation.outputs(), tracker, choice, chunk, include_usage)
    async with contextlib.aclosing(events):
        async for event in events:
            yield event
