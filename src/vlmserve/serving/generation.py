"""Running one request through an engine: engine errors become `ServingError`s, the first
output is awaited before anything is answered (so input problems the engine finds are still
a 4xx, not a broken stream), and a caller that leaves aborts the request so its KV blocks
are freed.

The engine is an `EngineClient`: this process's `AsyncEngine`, or one answering from a Ray
replica (`vlmserve.cluster`). An engine lost midway (`EngineLost`) costs a whole answer
(`final()`) nothing: nothing was sent, so it runs again once; a stream has sent its tokens
and ends with the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import cast

from vlmserve.engine.client import EngineClient
from vlmserve.engine.errors import EngineLost
from vlmserve.serving.errors import ClientDisconnected, ServingError, engine_error
from vlmserve.trace import current_trace
from vlmserve.types import Prompt, RequestOutput, SamplingParams

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.2

OutputObserver = Callable[[RequestOutput], None]  # sees every output (token timing metrics)
DisconnectCheck = Callable[[], Awaitable[bool]]  # True once the caller has gone


def failed_output(output: RequestOutput) -> ServingError | None:
    if output.error is None and all(c.finish_reason != "error" for c in output.outputs):
        return None
    return ServingError(500, f"the engine failed on this request: {output.error or 'unknown'}")


def _trace_tokens(output: RequestOutput) -> None:
    trace = current_trace()
    if trace is not None:
        trace.prompt_tokens = len(output.prompt_token_ids)
        trace.completion_tokens = sum(len(c.token_ids) for c in output.outputs)


class Generation:
    """One engine request: `await start()`, then iterate `outputs()` (the first included)
    or await `final()`. `aclose()` aborts it if it is still running."""

    def __init__(
        self,
        engine: EngineClient,
        prompt: Prompt,
        params: SamplingParams,
        request_id: str,
        observe: OutputObserver | None = None,
    ) -> None:
        self.request_id = request_id
        self._engine, self._prompt, self._params = engine, prompt, params
        self._stream = self._open()
        self._observe = observe
        self._first: RequestOutput | None = None
        self._reruns_left = 1  # after an EngineLost, for a whole answer

    def _open(self) -> AsyncGenerator[RequestOutput, None]:
        # generate() is an async generator function; its annotation only says iterator.
        stream = self._engine.generate(self._prompt, self._params, self.request_id)
        return cast(AsyncGenerator[RequestOutput, None], stream)

    async def start(self) -> None:
        try:
            self._first = await anext(self._stream)
        except StopAsyncIteration as exc:
            raise ServingError(500, "the engine ended the request without output") from exc
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
                if self._observe is not None:
                    self._observe(output)
                failure = failed_output(output)
                if failure is not None:
                    raise failure
                if output.finished:
                    _trace_tokens(output)
                yield output
                if output.finished:
                    return
                try:
                    output = await anext(self._stream)
                except Exception as exc:
                    mapped = engine_error(exc)
                    if mapped is None:
                        # The engine failed this request mid-way (its step raised): a server
                        # fault, reported in the same shape so a stream can say so in-band.
                        logger.error("request failed in the engine: %r", exc)
                        mapped = ServingError(500, f"the engine failed on this request: {exc}")
                    raise mapped from exc

    async def final(self, is_disconnected: DisconnectCheck | None = None) -> RequestOutput:
        """The finished output; if `is_disconnected` says the caller left first, abort and
        raise `ClientDisconnected`. A request whose engine was lost midway runs again once."""
        while True:
            try:
                return await self._final(is_disconnected)
            except ServingError as exc:
                if not isinstance(exc.__cause__, EngineLost) or self._reruns_left < 1:
                    raise
                self._reruns_left -= 1
                logger.warning("%s: %s; running it again", self.request_id, exc.message)
                await self._stream.aclose()
                self._stream, self._first = self._open(), None
                await self.start()

    async def _final(self, is_disconnected: DisconnectCheck | None) -> RequestOutput:

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
                if is_disconnected is not None and await is_disconnected():
                    raise ClientDisconnected()
        finally:
            if not task.done():
                # Cancelling closes the engine stream, which aborts the request.
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def aclose(self) -> None:
        """Abort the request unless it finished (idempotent; safe before `start()`)."""
        await self._stream.aclose()
