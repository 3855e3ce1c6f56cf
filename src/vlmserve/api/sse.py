"""Server-sent events framing as OpenAI streams it: `data: <json>\n\n` per chunk, then
`data: [DONE]\n\n`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

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


def sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    # no-cache and X-Accel-Buffering keep proxies from holding tokens back.
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
