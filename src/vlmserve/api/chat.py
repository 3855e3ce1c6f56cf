"""POST /v1/chat/completions: messages -> chat template -> engine, answered whole or as SSE."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from vlmserve.api.auth import require_api_key
from vlmserve.api.errors import APIError, error_body
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
from vlmserve.api.sse import DONE, STREAM_RESPONSES, sse_event, sse_response
from vlmserve.api.state import ServingState, get_state
from vlmserve.api.usage import check_model, usage
from vlmserve.multimodal.prompt import PromptError, build_chat_prompt
from vlmserve.types import CompletionOutput, RequestOutput, SamplingParams

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
    created = int(time.time())
    # OpenAI sends "usage": null on every chunk only when the client asked for usage.
    exclude = None if include_usage else {"usage"}
    k = params.logprobs

    def chunk(choices: list[ChatChunkChoice], output: RequestOutput | None = None) -> bytes:
        payload = ChatCompletionChunk(
            id=request_id,
            created=created,
            model=state.model.name,
            choices=choices,
            usage=usage(output) if output is not None else None,
        )
        return sse_event(payload, exclude)

    yield chunk(
        [
            ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))
            for i in range(body.n)
        ]
    )
    sent_text = [0] * body.n
    sent_tokens = [0] * body.n
    reported = [False] * body.n  # finish_reason sent: siblings may still be running
    last: RequestOutput | None = None
    try:
        async for output in generation.outputs():
            last = output
            choices = []
            for c in output.outputs:
                if reported[c.index]:
                    continue
                new_text = c.text[sent_text[c.index] :]
                new_ids = c.token_ids[sent_tokens[c.index] :]
                # Tokens whose text is held back (a possible stop string, a split UTF-8
                # character) only make a chunk when their logprobs were asked for.
                if not new_text and c.finish_reason is None and (k is None or not new_ids):
                    continue
                reported[c.index] = c.finish_reason is not None
                lps = None
                if k is not None and c.logprobs is not None:
                    entries = c.logprobs[sent_tokens[c.index] :]
                    lps = ChoiceLogprobs(
                        content=chat_logprobs(new_ids, entries, k, state.model.decode)
                    )
                sent_text[c.index] = len(c.text)
                sent_tokens[c.index] = len(c.token_ids)
                choices.append(
                    ChatChunkChoice(
                        index=c.index,
                        delta=ChatDelta(content=new_text),
                        logprobs=lps,
                        finish_reason=c.finish_reason,
                    )
                )
            if choices:
                yield chunk(choices)
    except APIError as exc:
        # The status line is gone already: report in-band, as OpenAI does mid-stream.
        yield sse_event(error_body(exc.status, exc.message, exc.param, exc.code))
        yield DONE
        return
    if include_usage and last is not None:
        yield chunk([], last)
    yield DONE
