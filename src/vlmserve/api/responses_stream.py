"""A Responses API answer as typed SSE events, in the order the `openai` client's
`responses.stream` expects them:

    response.created, response.in_progress,
    per message:  response.output_item.added, response.content_part.added,
                  response.output_text.delta..., response.output_text.done,
                  response.content_part.done, response.output_item.done
    per call:     response.output_item.added, response.function_call_arguments.delta...,
                  response.function_call_arguments.done, response.output_item.done
    response.completed (or response.incomplete when max_output_tokens ran out)

An engine failure mid-stream is an `error` event followed by `response.failed`. Each event
is `event: <type>` and `data: <json>` with a `sequence_number` rising from 0.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from vlmserve.api.responses_objects import (
    FunctionCallOutput,
    ItemStatus,
    MessageOutput,
    OutputItem,
    OutputTextPart,
    ResponseError,
    ResponseObject,
)
from vlmserve.api.responses_output import ResponseShape, item_id, status_of
from vlmserve.serving import Generation, ServingError
from vlmserve.serving.tool_calls import (
    ArgumentsDelta,
    CallDone,
    CallStarted,
    ContentDelta,
    ToolCallError,
    ToolCallStream,
    ToolDelta,
)
from vlmserve.types import RequestOutput


class _PlainText:
    """Without tool calls to read, all text is content."""

    def __init__(self) -> None:
        self.sent = 0

    def update(self, text: str, finished: bool) -> list[ToolDelta]:
        delta, self.sent = text[self.sent :], len(text)
        return [ContentDelta(delta)] if delta else []


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


class _Output:
    """The output items of one streamed response as they grow, and their events."""

    def __init__(self) -> None:
        self.sequence = 0
        self.items: list[OutputItem] = []
        self.message: MessageOutput | None = None  # the message still open
        self.calls: dict[int, FunctionCallOutput] = {}  # by the reader's call index

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()

    def _where(self, item: OutputItem) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": self.items.index(item)}

    def _added(self, item: OutputItem) -> bytes:
        self.items.append(item)
        return self.event(
            "response.output_item.added", output_index=len(self.items) - 1, item=_dump(item)
        )

    def open_message(self) -> list[bytes]:
        self.message = MessageOutput(id=item_id("msg"), status="in_progress", content=[])
        added = self._added(self.message)
        part = OutputTextPart(text="")
        self.message.content.append(part)
        where = self._where(self.message)
        return [
            added,
            self.event("response.content_part.added", **where, content_index=0, part=_dump(part)),
        ]

    def close_message(self, status: ItemStatus = "completed") -> list[bytes]:
        message, self.message = self.message, None
        if message is None:
            return []
        message.status = status
        where, part = self._where(message), message.content[0]
        return [
            self.event(
                "response.output_text.done", **where, content_index=0, text=part.text, logprobs=[]
            ),
            self.event("response.content_part.done", **where, content_index=0, part=_dump(part)),
            self.event(
                "response.output_item.done", output_index=where["output_index"], item=_dump(message)
            ),
        ]

    def on_delta(self, delta: ToolDelta) -> list[bytes]:
        if isinstance(delta, ContentDelta):
            out = self.open_message() if self.message is None else []
            assert self.message is not None
            self.message.content[0].text += delta.text
            where = self._where(self.message)
            return [
                *out,
                self.event(
                    "response.output_text.delta",
                    **where,
                    content_index=0,
                    delta=delta.text,
                    logprobs=[],
                ),
            ]
        if isinstance(delta, CallStarted):
            out = self.close_message()
            item = FunctionCallOutput(
                id=item_id("fc"),
                call_id=delta.id,
                name=delta.name,
                arguments="",
                status="in_progress",
            )
            self.calls[delta.index] = item
            return [*out, self._added(item)]
        item = self.calls[delta.index]
        where = self._where(item)
        if isinstance(delta, ArgumentsDelta):
            item.arguments += delta.text
            return [self.event("response.function_call_arguments.delta", **where, delta=delta.text)]
        assert isinstance(delta, CallDone)
        item.status = "completed"
        return [
            self.event(
                "response.function_call_arguments.done",
                **where,
                name=item.name,
                arguments=item.arguments,
            ),
            self.event(
                "response.output_item.done", output_index=where["output_index"], item=_dump(item)
            ),
        ]


async def stream_events(
    shape: ResponseShape,
    generation: Generation,
    on_done: Callable[[ResponseObject], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """The SSE events of one response; `on_done` gets the finished response (to store it)."""
    out = _Output()
    starting = _dump(shape.response("in_progress", []))
    yield out.event("response.created", response=starting)
    yield out.event("response.in_progress", response=starting)
    tools = shape.tools
    reader = ToolCallStream(tools.names) if tools and tools.parses_calls else _PlainText()
    last: RequestOutput | None = None
    outputs = generation.outputs()
    try:
        async with contextlib.aclosing(outputs):
            async for last in outputs:
                choice = last.outputs[0]
                try:
                    deltas = reader.update(choice.text, choice.finished())
                except ToolCallError as exc:
                    raise ServingError(
                        500, f"the model's tool calls could not be read: {exc}"
                    ) from exc
                for delta in deltas:
                    for chunk in out.on_delta(delta):
                        yield chunk
    except ServingError as exc:
        code = exc.code or "server_error"
        yield out.event("error", code=code, message=exc.message, param=exc.param)
        error = ResponseError(code=code, message=exc.message)
        yield out.event(
            "response.failed", response=_dump(shape.response("failed", out.items, error=error))
        )
        return
    assert last is not None
    chunks = out.open_message() if not out.items else []  # an empty answer is still a message
    status = status_of(last)
    for chunk in [*chunks, *out.close_message(status)]:
        yield chunk
    response = shape.response(status, out.items, last)
    await on_done(response)
    yield out.event(f"response.{status}", response=_dump(response))
