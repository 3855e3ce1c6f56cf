"""The hand-off between callers' event loops and the engine thread (`AsyncEngine`): the
commands a caller posts (`Add` a request, a request id to abort, `Close`), and the way a
step's outputs travel back (`deliver`).

Outputs travel cheaply: a step wakes each caller's loop once for all of that loop's requests
(not once per request), and each request keeps only its newest output for the reader. Outputs
are cumulative, so a reader that falls behind skips to the newest one instead of working
through every step's (streams then send one larger delta).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from vlmserve.engine.engine import LLMEngine
from vlmserve.types import RequestOutput


@dataclass
class Add:
    request_id: str
    admit: Callable[[LLMEngine], object]  # adds the request to the engine (engine thread)
    loop: asyncio.AbstractEventLoop
    # Errors, and None for "`latest` has a newer output" (queued by `_wake`).
    outputs: asyncio.Queue[BaseException | None]
    # The newest output, written by the engine thread and read on `loop`; `signalled`: a
    # wake-up for it is queued and unread (cleared by the reader before it reads `latest`,
    # so an output written after that read queues a wake-up of its own).
    latest: RequestOutput | None = None
    signalled: bool = False

    def post(self, item: BaseException) -> bool:
        """Hand an item to the caller's loop; False when that loop is gone (closed)."""
        try:
            self.loop.call_soon_threadsafe(self.outputs.put_nowait, item)
        except RuntimeError:
            return False
        return True


class Close:
    """The last command the engine thread reads: fail the open streams, free, stop."""


Command = Add | str | Close  # a str is the id of a request to abort


def deliver(outputs: list[RequestOutput], streams: dict[str, Add], engine: LLMEngine) -> None:
    """On the engine thread: a step's outputs to their streams (`streams`, by request id; a
    finished one leaves it), one wake-up per caller loop. A request whose loop is closed is
    aborted, as nobody can read it."""
    woken: dict[asyncio.AbstractEventLoop, list[Add]] = {}
    for output in outputs:
        stream = streams.get(output.request_id)
        if stream is None:
            continue
        if output.finished:
            del streams[output.request_id]
        stream.latest = output
        if not stream.signalled:
            stream.signalled = True
            woken.setdefault(stream.loop, []).append(stream)
    for loop, readers in woken.items():
        try:
            loop.call_soon_threadsafe(_wake, readers)
        except RuntimeError:  # that loop is closed: nobody can read these requests
            for stream in readers:
                if streams.pop(stream.request_id, None) is not None:
                    engine.abort(stream.request_id)  # stop spending steps on it


def _wake(streams: list[Add]) -> None:
    """On the streams' loop: tell each reader that `latest` holds a newer output."""
    for stream in streams:
        stream.outputs.put_nowait(None)
