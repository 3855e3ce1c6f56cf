"""Several generations answered as one (a completion request with a list of prompts): their
final outputs awaited together, or their outputs merged into one stream of snapshots.

Either way, leaving early (a failure, the caller gone, the stream closed) stops every
generation's iteration, so each `Generation.aclose()` can then abort its request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

from vlmserve.serving.errors import ClientDisconnected
from vlmserve.serving.generation import DISCONNECT_POLL_S, DisconnectCheck, Generation
from vlmserve.types import RequestOutput


async def final_outputs(
    generations: Sequence[Generation], is_disconnected: DisconnectCheck | None = None
) -> list[RequestOutput]:
    """Every generation's finished output, in order; the first failure is raised (and the
    others stopped), as is `ClientDisconnected` once `is_disconnected` says so."""
    tasks = [asyncio.ensure_future(g.final()) for g in generations]
    try:
        while True:
            done, pending = await asyncio.wait(
                tasks, timeout=DISCONNECT_POLL_S, return_when=asyncio.FIRST_EXCEPTION
            )
            if not pending or any(t.exception() is not None for t in done):
                return [t.result() for t in tasks]  # raises the first failure
            if is_disconnected is not None and await is_disconnected():
                raise ClientDisconnected()
    finally:
        await _cancel(tasks)


async def merged_outputs(
    generations: Sequence[Generation],
) -> AsyncGenerator[list[RequestOutput], None]:
    """A snapshot (the latest output of every generation) each time one of them moves on,
    until all have finished. Closing this iterator stops them all."""
    streams = [g.outputs() for g in generations]
    latest: list[RequestOutput | None] = [None] * len(streams)
    pending: dict[asyncio.Future[RequestOutput], int] = {}
    try:
        for i, stream in enumerate(streams):
            pending[asyncio.ensure_future(anext(stream))] = i
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                try:
                    latest[i] = future.result()
                except StopAsyncIteration:
                    continue  # this generation has finished; its last output stays
                pending[asyncio.ensure_future(anext(streams[i]))] = i
            if all(output is not None for output in latest):
                yield [output for output in latest if output is not None]
    finally:
        await _cancel(list(pending))
        for stream in streams:
            await stream.aclose()


async def _cancel(futures: Sequence[asyncio.Future[RequestOutput]]) -> None:
    for future in futures:
        future.cancel()
    # Their outcomes (cancelled, or a failure already reported) are not needed any more.
    await asyncio.gather(*futures, return_exceptions=True)
