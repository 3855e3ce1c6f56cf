"""Running one request through the engine from a handler: engine errors become API errors,
the first output is awaited before any response starts (so input problems found by the
engine are still a 4xx, not a broken stream), and a client that leaves aborts the request
so its KV blocks are freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any, cast

from fastapi import Request

from vlmserve.api.errors import APIError, ClientDisconnected
from vlmserve.api.metrics import RequestTimer
from vlmserve.api.state import ServingState
from vlmserve.engine.async_engine import EngineDead, EngineOverloaded
from vlmserve.engine.inputs import InputError
from vlmserve.types import RequestOutput, SamplingParams

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.2
RETRY_AFTER_S = 1


def engine_error(exc: BaseException) -> APIError | None:
    """The API error for an exception out of `AsyncEngine.generate`, or None if unknown."""
    if isinstance(exc, EngineOverloaded):
        return APIError(
            429, str(exc), code="overloaded", headers={"Retry-After": str(RETRY_AFTER_S)}
        )
    if isinstance(exc, EngineDead):
        return APIError(503, str(exc), code="engine_dead")
    if isinstance(exc, InputError):
        return APIError(exc.status, str(exc), exc.param)
    if isinstance(exc, ValueError):
        # Raised while the engine accepts the request (e.g. a grammar that cannot be compiled,
        # StructuredOutputError): a problem with this request, not with the server.
        return APIError(400, str(exc), getattr(exc, "param", None))
    return None


def failed_output(output: RequestOutput) -> APIError | None:
    if output.error is None and all(c.finish_reason != "error" for c in output.outputs):
        return None
    return APIError(500, f"the engine failed on this request: {output.error or 'unknown'}")


class Generation:
    """One engine request: `await start()`, then iterate the outputs (the first included)."""

    def __init__(
        self,
        state: ServingState,
        prompt: dict[str, Any] | list[int] | str,
        params: SamplingParams,
        request_id: str,
    ) -> None:
        if isinstance(prompt, list):
            prompt = {"prompt_token_ids": prompt}
        # generate() is an async generator function; its annotation only says iterator.
        self._stream = cast(
            AsyncGenerator[RequestOutput, None], state.engine.generate(prompt, params, request_id)
        )
        self._timer = RequestTimer(state.metrics)
        self._first: RequestOutput | None = None

    async def start(self) -> None:
        try:
            self._first = await anext(self._stream)
        except StopAsyncIteration as exc:
            raise APIError(500, "the engine ended the request without output") from exc
        except Exception as exc:
            await self._stream.aclose()
            mapped = engine_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    async def outputs(self) -> AsyncGenerator[RequestOutput, None]:
        """Yields outputs; closing this iterator early aborts the request in the engine."""
        assert self._first is not None, "call start() first"
        async with contextlib.aclosing(self._stream):
            output: RequestOutput | None = self._first
            while output is not None:
                self._timer.observe(output)
                failure = failed_output(output)
                if failure is not None:
                    raise failure
                yield output
                if output.finished:
                    return
                try:
                    output = await anext(self._stream)
                except Exception as exc:
                    mapped = engine_error(exc)
                    if mapped is None:
                        # The engine failed this request mid-way (its step raised): a server
                        # fault, reported in the API's shape so a stream can say so in-band.
                        logger.error("request failed in the engine: %r", exc)
                        mapped = APIError(500, f"the engine failed on this request: {exc}")
                    raise mapped from exc

    async def final(self, request: Request) -> RequestOutput:
        """The finished output; if the client disconnects first, abort and raise."""

        async def last() -> RequestOutput:
            result: RequestOutput | None = None
            async for output in self.outputs():
                result = output
            assert result is not None
            return result

        task = asyncio.ensure_future(last())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    raise ClientDisconnected()
        finally:
            if not task.done():
                # Cancelling closes the engine stream, which aborts the request.
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
