"""The Responses API: `POST /v1/responses` (whole or as typed SSE events), and the stored
responses behind `previous_response_id`: `GET` and `DELETE /v1/responses/{id}`.

Parse (pydantic) -> input items (an earlier response's conversation first) -> chat messages
-> the serving layer, as chat completions do -> the response object. With `store` (the
default, as OpenAI's) the response and the conversation it answered go to SQLite in the data
dir, visible only to the key that created it.
"""

from __future__ import annotations

import contextlib
import logging
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from vlmserve.api.auth import request_tenant, require_api_key
from vlmserve.api.errors import ERROR_RESPONSES, APIError
from vlmserve.api.json_body import StrictJSONRoute
from vlmserve.api.metrics import RequestTimer
from vlmserve.api.responses_objects import ResponseDeleted, ResponseObject
from vlmserve.api.responses_output import ResponseShape, status_of
from vlmserve.api.responses_protocol import ResponsesRequest
from vlmserve.api.responses_request import (
    as_input,
    echoed,
    input_items,
    item_param,
    name_fields,
    owner_of,
    sampling_params,
    tools,
)
from vlmserve.api.responses_stream import stream_events
from vlmserve.api.sse import STREAM_RESPONSES, sse_response
from vlmserve.api.state import get_state
from vlmserve.api.tenants import cache_salt
from vlmserve.serving import ChatRequest, ServingError
from vlmserve.serving.conversation import to_messages
from vlmserve.serving.response_store import ResponseStore, StoredResponse

logger = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(require_api_key)], route_class=StrictJSONRoute)


def _store(request: Request) -> ResponseStore:
    store: ResponseStore = request.app.state.responses
    return store


def _not_found(response_id: str) -> ServingError:
    return ServingError(404, f"no response {response_id!r}", code="response_not_found")


@router.post("/v1/responses", response_model=ResponseObject, responses=STREAM_RESPONSES)
async def create_response(
    body: ResponsesRequest, request: Request
) -> ResponseObject | StreamingResponse:
    state = get_state(request)
    store, owner = _store(request), owner_of(request)
    # Validated before the model is acquired: a bad request never costs a model load.
    try:
        params = sampling_params(body)
    except ValueError as exc:
        raise APIError(400, str(exc)) from exc
    offered = tools(body)
    earlier: list[dict] = []
    if body.previous_response_id is not None:
        previous = await store.get(owner, body.previous_response_id)
        if previous is None:
            raise APIError(
                400,
                f"no stored response {body.previous_response_id!r} (it was not stored, was "
                "deleted, or belongs to another key)",
                "previous_response_id",
            )
        earlier = previous.input_items + as_input(previous.response["output"])
    items = earlier + input_items(body)
    conversation = to_messages(items, body.instructions, item_param(body, len(earlier)))
    response_id = f"resp_{uuid.uuid4().hex}"
    chat = ChatRequest(
        conversation.messages,
        params,
        request_id=response_id,
        cache_salt=cache_salt(request_tenant(request), None),
        tools=offered,
    )
    if body.user is not None:  # OpenAI's end-user id: for tracing abuse back, so it is logged
        logger.info("%s from user %r", response_id, body.user)

    async def keep(response: ResponseObject) -> None:
        if body.store is not False:
            await store.put(owner, StoredResponse(response.model_dump(mode="json"), items))

    async with contextlib.AsyncExitStack() as held:
        handle = await held.enter_async_context(state.serving.model(body.model))
        shape = ResponseShape(response_id, handle.info.name, echoed(body), offered)
        try:
            generation = await state.serving.start_chat(
                handle, chat, RequestTimer(state.metrics, handle.info.name).observe
            )
        except ServingError as exc:
            name_fields(exc, conversation, offered)
            raise
        held.push_async_callback(generation.aclose)
        if body.stream:
            # The stream now holds the model and the engine request until it ends.
            return sse_response(stream_events(shape, generation, keep), held.pop_all().aclose)
        final = await generation.final(request.is_disconnected)
    response = shape.response(status_of(final), shape.items(final), final)
    await keep(response)
    return response


@router.get("/v1/responses/{response_id}", response_model=ResponseObject, responses=ERROR_RESPONSES)
async def retrieve_response(response_id: str, request: Request) -> ResponseObject:
    stored = await _store(request).get(owner_of(request), response_id)
    if stored is None:
        raise _not_found(response_id)
    return ResponseObject.model_validate(stored.response)


@router.delete(
    "/v1/responses/{response_id}", response_model=ResponseDeleted, responses=ERROR_RESPONSES
)
async def delete_response(response_id: str, request: Request) -> ResponseDeleted:
    if not await _store(request).delete(owner_of(request), response_id):
        raise _not_found(response_id)
    return ResponseDeleted(id=response_id)
