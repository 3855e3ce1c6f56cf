"""A Responses API request as the serving layer's pieces: sampling parameters (with the
`text.format` constraint), the offered tools, the input items (with an earlier response's
conversation in front), what the response echoes back, and refusals named after this API's
fields. Also who a stored response belongs to."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from fastapi import Request

from vlmserve.api.auth import request_tenant
from vlmserve.api.chat_tools import NO_PARAMETERS, offered_tools
from vlmserve.api.protocol_tools import FunctionToolChoice
from vlmserve.api.responses_protocol import (
    ResponsesRequest,
    TextFormatJSONObject,
    TextFormatJSONSchema,
)
from vlmserve.serving import ServingError
from vlmserve.serving.conversation import Conversation
from vlmserve.serving.tools import Tools
from vlmserve.types import SamplingParams, StructuredOutputsParams, ToolFunction


def owner_of(request: Request) -> str:
    """Who a stored response belongs to: the tenant of the key that authenticated the
    request (tenants.py; keys of one tenant share). A server without keys is open to all:
    there the bearer token the client sends, if any, still keeps apart clients that send
    different ones (its SHA-256)."""
    tenant = request_tenant(request)
    if tenant is not None:
        return f"tenant:{tenant.id}"
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "open"
    return "bearer:" + hashlib.sha256(token.strip().encode("utf-8", "surrogatepass")).hexdigest()


def sampling_params(body: ResponsesRequest) -> SamplingParams:
    fmt = body.text.format if body.text is not None else None
    structured = None
    if isinstance(fmt, TextFormatJSONSchema):
        structured = StructuredOutputsParams(json=fmt.json_schema, strict=bool(fmt.strict))
    elif isinstance(fmt, TextFormatJSONObject):
        structured = StructuredOutputsParams(json_object=True)
    fields: dict[str, Any] = {
        "max_tokens": body.max_output_tokens,
        "structured_outputs": structured,
    }
    for name in ("temperature", "top_p"):
        if getattr(body, name) is not None:
            fields[name] = getattr(body, name)
    return SamplingParams(**fields)


def tools(body: ResponsesRequest) -> Tools | None:
    offered = body.tools or []
    choice = body.tool_choice
    return offered_tools(
        choice,
        named=choice.name if isinstance(choice, FunctionToolChoice) else None,
        # The Responses API's functions are strict unless they say otherwise.
        functions=[
            ToolFunction(t.name, t.parameters or NO_PARAMETERS, t.strict is not False)
            for t in offered
        ],
        name_param=lambda i: f"tools[{i}].name",
        choice_param="tool_choice.name",
        definitions=[
            {"type": "function", "function": t.model_dump(exclude_none=True, exclude={"type"})}
            for t in offered
        ],
        parallel=body.parallel_tool_calls,
    )


def input_items(body: ResponsesRequest) -> list[dict[str, Any]]:
    if isinstance(body.input, str):
        return [{"type": "message", "role": "user", "content": body.input}]
    return [item.model_dump(exclude_none=True) for item in body.input]


def as_input(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An earlier response's output items as input items of the next turn."""
    return [{k: v for k, v in item.items() if k not in ("id", "status")} for item in output]


def item_param(body: ResponsesRequest, earlier: int) -> Any:
    """How the request names item `i` of the conversation (the first `earlier` items came
    from `previous_response_id`)."""

    def param(index: int) -> str:
        if index < earlier:
            return "previous_response_id"
        return "input" if isinstance(body.input, str) else f"input[{index - earlier}]"

    return param


def echoed(body: ResponsesRequest) -> dict[str, Any]:
    """The request fields a response repeats, with OpenAI's defaults filled in."""
    fmt = body.text.format if body.text is not None and body.text.format is not None else None
    tool_choice = body.tool_choice or ("auto" if body.tools else "none")
    return {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "store": body.store is not False,
        "temperature": body.temperature if body.temperature is not None else 1.0,
        "text": {"format": fmt.model_dump(by_alias=True) if fmt else {"type": "text"}},
        "tool_choice": tool_choice if isinstance(tool_choice, str) else tool_choice.model_dump(),
        "tools": [tool.model_dump() for tool in body.tools or []],
        "top_p": body.top_p if body.top_p is not None else 1.0,
        "metadata": body.metadata or {},
        "user": body.user,
    }


_MEDIA_ITEM = re.compile(r"multi_modal_data\.(image|video)\[(\d+)\]")
_MODALITY = {"image_url": "image", "video_url": "video"}


def name_fields(exc: ServingError, conversation: Conversation, offered: Tools | None) -> None:
    """Rename, in a refusal from below, the fields it names after this API's."""
    engine = exc.param or ""
    item = _MEDIA_ITEM.fullmatch(engine)
    if item is not None:  # the engine's k-th image (or video), in prompt order
        parts = [
            f"messages[{i}].content[{j}]"
            for i, message in enumerate(conversation.messages)
            if isinstance(message["content"], list)
            for j, part in enumerate(message["content"])
            if _MODALITY.get(part["type"]) == item.group(1)
        ]
        index = int(item.group(2))
        exc.param = parts[index] if index < len(parts) else "input"
        if engine in exc.message:
            exc.message = exc.message.replace(engine, exc.param)
        else:
            exc.message = f"{exc.param}: {exc.message}"
    elif engine.startswith(("multi_modal_data", "multi_modal_uuids", "prompt")):
        exc.param = "input"  # the prompt is the rendered input
    conversation.name_fields(exc)
    if offered is not None:
        offered.name_fields(exc, lambda i: f"tools[{i}].parameters", "text.format.schema")
    param = exc.param or ""
    head, _, tail = param.partition(".")
    if head == "structured_outputs":
        kind, _, rest = tail.partition(".")
        mapped = (
            "text.format" if kind != "json" else "text.format.schema" + (f".{rest}" if rest else "")
        )
    elif param == "max_tokens":
        mapped = "max_output_tokens"
    else:
        return
    exc.message = exc.message.replace(param, mapped, 1)
    exc.param = mapped
