"""A generation as a Responses API answer: the response object (whole), or its typed SSE
events in the order the `openai` client's `responses.stream` expects them:

    response.created, response.in_progress,
    per message:  response.output_item.added, response.content_part.added,
                  response.output_text.delta..., response.output_text.done,
                  response.content_part.done, response.output_item.done
    per call:     response.output_item.added, response.function_call_arguments.delta...,
                  response.function_call_arguments.done, response.output_item.done
    response.completed (or response.incomplete when max_output_tokens ran out)

An engine failure mid-stream is an `error` event followed by `response.failed`.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from vlmserve.api.responses_objects import (
    FunctionCallOutput,
    IncompleteDetails,
    InputTokensDetails,
    ItemStatus,
    MessageOutput,
    OutputItem,
    OutputTextPart,
    ResponseError,
    ResponseObject,
    ResponseStatus,
    ResponseUsage,
)
from vlmserve.serving import Generation, ServingError
from vlmserve.serving.tool_calls import (
    ArgumentsDelta,
    CallDone,
    CallStarted,
    ContentDelta,
    ToolCallError,
    ToolCallStream,
    ToolDelta,
    parse_output,
)
from vlmserve.serving.tools import Tools
from vlmserve.types import RequestOutput


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class ResponseShape:
    """What every state of one response repeats from its request."""

    id: str
    model: str
    fields: dict[str, Any]  # instructions, tools, tool_choice, ... as the response echoes them
    tools: Tools | None
    created_at: int = 0

    def __post_init__(self) -> None:
        self.created_at = self.created_at or int(time.time())

    def response(
        self,
        status: ResponseStatus,
        output: list[OutputItem],
        final: RequestOutput | None = None,
        error: ResponseError | None = None,
    ) -> ResponseObject:
        usage = None
        if final is not None:
            prompt = len(final.prompt_token_ids)
            completion = sum(len(c.token_ids) for c in final.outputs)
            cached = final.metrics.num_cached_tokens if final.metrics is not None else 0
            usage = ResponseUsage(
                input_tokens=prompt,
                input_tokens_details=InputTokensDetails(cached_tokens=cached),
                output_tokens=completion,
                total_tokens=prompt + completion,
            )
        text = "".join(
            part.text for item in output if isinstance(item, MessageOutput) for part in item.content
        )
        incomplete = (
            IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None
        )
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status=status,
            error=error,
            incomplete_details=incomplete,
            model=self.model,
            output=output,
            output_text=text,
            usage=usage,
            **self.fields,
        )

    def items(self, final: RequestOutput) -> list[OutputItem]:
        """The output items of a finished generation (not streamed)."""
        choice = final.outputs[0]
        cut = choice.finish_reason == "length"
        content, calls = choice.text, []
        if self.tools is not None and self.tools.parses_calls:
            try:
                parsed = parse_output(choice.text, self.tools.names)
            except ToolCallError as exc:
                raise ServingError(500, f"the model's tool calls could not be read: {exc}") from exc
            content, calls = parsed.content or "", parsed.tool_calls
        items: list[OutputItem] = []
        if content or not calls:
            part = OutputTextPart(text=content)
            items.append(MessageOutput(id=_item_id("msg"), status="completed", content=[part]))
        for call in calls:
            items.append(
                FunctionCallOutput(
                    id=_item_id("fc"),
                    call_id=call.id,
                    name=call.name,
                    arguments=call.arguments,
                    status="completed",
                )
            )
        if cut and isinstance(items[-1], MessageOutput):
            items[-1].status = "incomplete"  # its text was cut (a cut call is closed validly)
        return items


def status_of(final: RequestOutput) -> ItemStatus:
    return "incomplete" if final.outputs[0].finish_reason == "length" else "completed"


class _PlainText:
    """Without tool calls to read, all text is content."""

    def __init__(self) -> None:
        self.sent = 0

    def update(self, text: str, finished: bool) -> list[ToolDelta]:
        delta, self.sent = text[self.sent :], len(text)
        return [ContentDelta(delta)] if delta else []


class _Events:
    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


async def stream_events(
    shape: ResponseShape,
    generation: Generation,
    on_done: Callable[[ResponseObject], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """The SSE events of one response; `on_done` gets the finished response (to store it)."""
    event = _Events()
    yield event("response.created", response=_dump(shape.response("in_progress", [])))
    yield event("response.in_progress", response=_dump(shape.response("in_progress", [])))
    tools = shape.tools
    reader = ToolCallStream(tools.names) if tools and tools.parses_calls else _PlainText()
    items: list[OutputItem] = []
    message: MessageOutput | None = None
    calls: dict[int, FunctionCallOutput] = {}  # the reader's call index -> its item
    last: RequestOutput | None = None

    def close_message(status: ItemStatus = "completed") -> list[bytes]:
        nonlocal message
        if message is None:
            return []
        index, part = items.index(message), message.content[0]
        where = {"item_id": message.id, "output_index": index}
        message.status = status
        out = [
            event(
                "response.output_text.done", **where, content_index=0, text=part.text, logprobs=[]
            ),
            event("response.content_part.done", **where, content_index=0, part=_dump(part)),
            event("response.output_item.done", output_index=index, item=_dump(message)),
        ]
        message = None
        return out

    def open_message() -> list[bytes]:
        nonlocal message
        message = MessageOutput(id=_item_id("msg"), status="in_progress", content=[])
        items.append(message)
        index = len(items) - 1
        added = event("response.output_item.added", output_index=index, item=_dump(message))
        part = OutputTextPart(text="")
        message.content.append(part)
        where = {"item_id": message.id, "output_index": index, "content_index": 0}
        return [added, event("response.content_part.added", **where, part=_dump(part))]

    def on_delta(delta: ToolDelta) -> list[bytes]:
        out: list[bytes] = []
        if isinstance(delta, ContentDelta):
            if message is None:
                out += open_message()
            assert message is not None
            message.content[0].text += delta.text
            where = {"item_id": message.id, "output_index": items.index(message)}
            out.append(
                event(
                    "response.output_text.delta",
                    **where,
                    content_index=0,
                    delta=delta.text,
                    logprobs=[],
                )
            )
        elif isinstance(delta, CallStarted):
            out += close_message()
            item = FunctionCallOutput(
                id=_item_id("fc"),
                call_id=delta.id,
                name=delta.name,
                arguments="",
                status="in_progress",
            )
            calls[delta.index] = item
            items.append(item)
            out.append(
                event("response.output_item.added", output_index=len(items) - 1, item=_dump(item))
            )
        elif isinstance(delta, ArgumentsDelta):
            item = calls[delta.index]
            item.arguments += delta.text
            where = {"item_id": item.id, "output_index": items.index(item)}
            out.append(event("response.function_call_arguments.delta", **where, delta=delta.text))
        elif isinstance(delta, CallDone):
            item = calls[delta.index]
            item.status = "completed"
            where = {"item_id": item.id, "output_index": items.index(item)}
            out.append(
                event(
                    "response.function_call_arguments.done",
                    **where,
                    name=item.name,
                    arguments=item.arguments,
                )
            )
            out.append(
                event(
                    "response.output_item.done",
                    output_index=where["output_index"],
                    item=_dump(item),
                )
            )
        return out

    outputs = generation.outputs()
    try:
        async with contextlib.aclosing(outputs):
            async for output in outputs:
                last = output
                choice = output.outputs[0]
                try:
                    deltas = reader.update(choice.text, choice.finished())
                except ToolCallError as exc:
                    raise ServingError(
                        500, f"the model's tool calls could not be read: {exc}"
                    ) from exc
                for delta in deltas:
                    for chunk in on_delta(delta):
                        yield chunk
    except ServingError as exc:
        yield event("error", code=exc.code or "server_error", message=exc.message, param=exc.param)
        error = ResponseError(code=exc.code or "server_error", message=exc.message)
        yield event("response.failed", response=_dump(shape.response("failed", items, error=error)))
        return
    assert last is not None
    if not items:  # an empty answer is still a message
        for chunk in open_message():
            yield chunk
    status = status_of(last)
    for chunk in close_message(status):
        yield chunk
    response = shape.response(status, items, last)
    await on_done(response)
    yield event(f"response.{status}", response=_dump(response))
