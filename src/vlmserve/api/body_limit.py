"""The request body, read before any handler runs, within limits; then the connection is
watched for as long as the handler runs.

- Size: enforced on the bytes that actually arrive (a chunked upload has no Content-Length,
  and a lying Content-Length must not let a larger body through): 413.
- Time: the whole body must arrive within `read_timeout` seconds (uvicorn has no body
  timeout, so a client trickling a 30 MiB body would hold its buffer forever): 408.
- Disconnects: once the body is in, this middleware is the only reader of the connection's
  events. A client that leaves before its response has ended cancels the handler, whatever
  it waits for (media, a grammar, a place in the engine's queue, its first token, the next
  token): cancelling unwinds its `async with`s, which abort the engine request and free
  its KV blocks. Handlers that ask `receive()` themselves (Starlette's streaming response)
  are told of the disconnect too.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlmserve.api.errors import error_body


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject_large(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.read_timeout):
                body = await self._read(receive)
        except TimeoutError:
            message = f"the request body did not arrive within {self.read_timeout:g} s"
            await _refuse(408, message, "request_timeout", scope, receive, send)
            return
        if body is None:  # the client left
            return
        if len(body) > self.max_bytes:
            await self._reject_large(scope, receive, send)
            return
        await _run_watched(self.app, scope, body, receive, send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body (stops early, a byte over the limit, when it is too large);
        None when the client disconnected."""
        chunks: list[bytes] = []
        size = 0
        more = True
        while more and size <= self.max_bytes:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _reject_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body is larger than {self.max_bytes} bytes"
        await _refuse(413, message, "request_too_large", scope, receive, send)


async def _refuse(
    status: int, message: str, code: str, scope: Scope, receive: Receive, send: Send
) -> None:
    # Connection: close, so the server does not read the rest of a body nobody wants.
    response = JSONResponse(
        error_body(status, message, code=code), status_code=status, headers={"Connection": "close"}
    )
    await response(scope, receive, send)


async def _run_watched(
    app: ASGIApp, scope: Scope, body: bytes, receive: Receive, send: Send
) -> None:
    gone = asyncio.Event()
    delivered = False
    complete = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def tracking_send(message: Message) -> None:
        nonlocal complete
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            complete = True
        await send(message)

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # nothing else may arrive after the body; HTTP/1.1 sends nothing more
        gone.set()

    handler = asyncio.ensure_future(app(scope, replay, tracking_send))
    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not handler.done() and not complete:
            # The client left mid-request: nobody will read the answer.
            handler.cancel()
        await asyncio.wait({handler})
    finally:
        watcher.cancel()
        if not handler.done():  # this middleware itself was cancelled (server shutdown)
            handler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await handler
    if not handler.cancelled():
        handler.result()  # the handler's own exception, for the guards outside
