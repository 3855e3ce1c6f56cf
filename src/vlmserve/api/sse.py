"""Server-sent events framing as OpenAI streams it: `data: <json>\n\n` per chunk, then
`data: [DONE]\n\n`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from vlmserve.api.errors import ERROR_RESPONSES

DONE = b"data: [DONE]\n\n"

# For the OpenAPI document: with "stream": true the 200 answer is an event stream; the
# schema describes one event, whose data is a JSON chunk or "[DONE]".
_EVENT_SCHEMA = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}},
}
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": _EVENT_SCHEMA}}},
    **ERROR_RESPONSES,
}


def sse_event(payload: BaseModel | dict[str, Any], exclude: set[str] | None = None) -> bytes:
    if isinstance(payload, BaseModel):
        data = payload.model_dump_json(exclude=exclude)
    else:
        data = json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class _EventStream(StreamingResponse):
    """A stream whose `on_close` runs however the response ends: finished, failed, or the
    client gone before the first event (when the event iterator may never have started,
    so its own `finally` would not run)."""

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]]):
        # no-cache and X-Accel-Buffering keep proxies from holding tokens back.
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.on_close()


def sse_response(
    events: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]]
) -> StreamingResponse:
    """`events` as an SSE response; `on_close` releases what the stream held (the engine
    request, the model) once the response is over, whatever ended it."""
    return _EventStream(events, on_close)
