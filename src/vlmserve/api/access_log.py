"""Request ids and the access log: the outermost middleware.

Every request gets an id: the client's `X-Request-Id` when it is safe to log and to echo
(at most `MAX_REQUEST_ID_LEN` characters from `[A-Za-z0-9._:-]`), else a generated one. The
response carries it back in `X-Request-Id`, every log line written on the request's behalf
carries it (vlmserve/trace.py, cli/logs.py), and when the request ends one access line says
what happened: method, route, status, latency, model and tokens.

No request content reaches the log unless the server runs with `--log-requests`: then the
first `LOGGED_BODY_BYTES` of each request body are logged too (prompts, data URLs and all).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlmserve.trace import RequestTrace, close_trace, open_trace

logger = logging.getLogger("vlmserve.access")

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID_LEN = 128
_SAFE_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_LEN}}}")
MAX_LOGGED_TEXT = 256  # a scanner's long path or model name is cut, not logged whole
LOGGED_BODY_BYTES = 4096
# Status logged when no response was sent: the client left first (nginx's convention).
CLIENT_CLOSED = 499


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's id when it is safe to log and echo, else a new one."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            given = value.decode("latin-1")
            if _SAFE_ID.fullmatch(given):
                return given
            break
    return uuid.uuid4().hex


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, log_requests: bool = False) -> None:
        self.app = app
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace = RequestTrace(request_id(scope.get("headers", [])))
        echoed = (REQUEST_ID_HEADER, trace.request_id.encode())
        start = time.monotonic()
        status: int | None = None
        body = bytearray()
        received = 0

        async def traced_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0] != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, echoed]}
            await send(message)

        async def teed_receive() -> Message:
            nonlocal received
            message = await receive()
            chunk = message.get("body", b"")
            received += len(chunk)
            if len(body) < LOGGED_BODY_BYTES:
                body.extend(chunk[: LOGGED_BODY_BYTES - len(body)])
            return message

        token = open_trace(trace)
        try:
            await self.app(scope, teed_receive if self.log_requests else receive, traced_send)
        finally:
            close_trace(token)
            if self.log_requests and received:
                logger.info(
                    "request %s body (%d of %d bytes): %s",
                    trace.request_id,
                    len(body),
                    received,
                    body.decode("utf-8", "replace"),
                    extra={"request_id": trace.request_id},
                )
            _log_access(scope, trace, status, time.monotonic() - start)


def _log_access(scope: Scope, trace: RequestTrace, status: int | None, seconds: float) -> None:
    path = str(scope.get("path", ""))[:MAX_LOGGED_TEXT]
    asked = trace.model[:MAX_LOGGED_TEXT] if trace.model is not None else None
    fields: dict[str, Any] = {
        "request_id": trace.request_id,
        "method": scope.get("method"),
        "route": path,
        "status": status if status is not None else CLIENT_CLOSED,
        "latency_s": round(seconds, 6),
        "model": asked,
        "prompt_tokens": trace.prompt_tokens,
        "completion_tokens": trace.completion_tokens,
    }
    tokens = ""
    if trace.prompt_tokens is not None:
        tokens = f" tokens {trace.prompt_tokens}+{trace.completion_tokens}"
    model = f" model {asked!r}" if asked else ""
    logger.info(
        "%s %s %d %.3f s%s%s id %s",
        fields["method"],
        path,
        fields["status"],
        seconds,
        model,
        tokens,
        trace.request_id,
        extra=fields,
    )
