"""`StreamTable`: the open requests of a `ProcessEngine` by id, and the hand-off of what the
engine process sends to the event loops that read them: one call per loop per message, the
deltas applied on the reader's loop (so an accumulator has one thread), each reader woken
at most once until it reads."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

from vlmserve.engine.process.wire import OutputAccumulator, OutputDelta, StepOutputs


@dataclass(eq=False)
class Stream:
    request_id: str
    loop: asyncio.AbstractEventLoop
    outputs: OutputAccumulator
    # Errors, and None for "the accumulator moved" (at most one unread: `signalled`).
    queue: asyncio.Queue[BaseException | None] = field(default_factory=asyncio.Queue)
    signalled: bool = False


_Item = tuple[Stream, OutputDelta | Exception]


class StreamTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # the pipe thread delivers while loops add and remove
        self._streams: dict[str, Stream] = {}

    def __bool__(self) -> bool:
        return bool(self._streams)

    def add(self, stream: Stream) -> bool:
        """False when a stream of that id is open already."""
        with self._lock:
            if stream.request_id in self._streams:
                return False
            self._streams[stream.request_id] = stream
            return True

    def discard(self, stream: Stream) -> None:
        with self._lock:
            if self._streams.get(stream.request_id) is stream:
                del self._streams[stream.request_id]

    def deliver(self, event: StepOutputs) -> None:
        """On the pipe thread: a step's deltas and failures to their readers' loops."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        with self._lock:
            for delta in event.deltas:
                stream = self._streams.get(delta.request_id)
                if stream is not None:
                    if delta.finished:
                        del self._streams[delta.request_id]
                    by_loop.setdefault(stream.loop, []).append((stream, delta))
            for failure in event.failures:
                stream = self._streams.pop(failure.request_id, None)
                if stream is not None:
                    by_loop.setdefault(stream.loop, []).append((stream, failure.error.error()))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody reads
                loop.call_soon_threadsafe(_apply, items)

    def fail_all(self, error: Exception) -> None:
        """End every open stream with `error`."""
        with self._lock:
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            with contextlib.suppress(RuntimeError):
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, error)


def _apply(items: list[_Item]) -> None:
    """On the streams' loop: apply deltas, wake each reader once."""
    for stream, item in items:
        if isinstance(item, Exception):
            stream.queue.put_nowait(item)
            continue
        stream.outputs.apply(item)
        if not stream.signalled:
            stream.signalled = True
            stream.queue.put_nowait(None)
