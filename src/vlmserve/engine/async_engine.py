"""`AsyncEngine`: the engine on its own thread, fed and drained through asyncio.

All engine state is touched by the engine thread alone: callers post commands (add, abort)
to a thread-safe queue, and the thread posts each request's outputs back onto the caller's
event loop. Input processing (tokenizing, image preprocessing) runs in a worker thread
before a request is posted, so it never stalls the step loop. An exception inside a step
fails the requests in that step, not the thread.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from vlmserve.engine.engine import LLMEngine
from vlmserve.engine.inputs import InputError, ProcessedInput
from vlmserve.types import RequestOutput, SamplingParams

logger = logging.getLogger(__name__)


class EngineOverloaded(RuntimeError):
    """Too many requests waiting; the caller should retry later (HTTP 429)."""


class EngineDead(RuntimeError):
    """The engine loop has stopped."""


@dataclass
class _Add:
    request_id: str
    processed: ProcessedInput
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue[RequestOutput | BaseException]

    def post(self, item: RequestOutput | BaseException) -> bool:
        """Hand an item to the caller's loop; False when that loop is gone (closed)."""
        try:
            self.loop.call_soon_threadsafe(self.outputs.put_nowait, item)
        except RuntimeError:
            return False
        return True


@dataclass
class EngineStats:
    num_waiting: int
    num_running: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    mm_cache_hits: int
    mm_cache_misses: int
    num_preemptions: int
    grammar_cache_hits: int
    grammar_compiles: int
    grammar_compile_seconds: float


class AsyncEngine:
    def __init__(self, engine: LLMEngine, max_waiting: int = 1024) -> None:
        self.engine = engine
        self.max_waiting = max_waiting
        self._commands: queue.Queue[_Add | str | None] = queue.Queue()
        self._streams: dict[str, _Add] = {}
        self._pending = 0  # accepted by generate() but not finished
        self._last_beat = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="vlmserve-engine", daemon=True)
        self._thread.start()

    # -- caller side (event loop) -----------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def generate(
        self, prompt: str | dict[str, Any] | ProcessedInput, params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        """Yields the request's outputs as they grow; the last one has `finished=True`.
        Closing the iterator early (client gone) aborts the request and frees its blocks."""
        if not self.alive:
            raise EngineDead("the engine loop is not running")
        if self._pending >= self.max_waiting:
            raise EngineOverloaded(f"{self._pending} requests in flight; retry later")
        self._pending += 1
        finished = False
        try:
            processed = (
                prompt
                if isinstance(prompt, ProcessedInput)
                else await asyncio.to_thread(self.engine.prepare, prompt, params)
            )
            outputs: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
            self._commands.put(
                _Add(request_id, processed, params, asyncio.get_running_loop(), outputs)
            )
            while not finished:
                item = await outputs.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
        finally:
            self._pending -= 1
            if not finished:
                self._commands.put(request_id)  # abort

    def stats(self) -> EngineStats:
        e = self.engine
        grammar = e.guided.stats()
        return EngineStats(
            num_waiting=len(e.scheduler.waiting),
            num_running=len(e.scheduler.running),
            kv_cache_usage=e.block_manager.usage(),
            prefix_cache_queries=e.block_manager.num_prefix_queries,
            prefix_cache_hits=e.block_manager.num_prefix_hits,
            mm_cache_hits=e.mm_cache.hits,
            mm_cache_misses=e.mm_cache.misses,
            num_preemptions=e.scheduler.num_preemptions,
            grammar_cache_hits=grammar.hits,
            grammar_compiles=grammar.misses,
            grammar_compile_seconds=grammar.compile_seconds,
        )

    def shutdown(self) -> None:
        self._commands.put(None)
        self._thread.join(timeout=30)

    # -- engine thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            block = not self.engine.has_unfinished()
            try:
                command = self._commands.get(block=block, timeout=None)
            except queue.Empty:
                command = ""
            while command != "":
                if command is None:
                    return
                self._handle(command)
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    command = ""
            self._last_beat = time.monotonic()
            if self.engine.has_unfinished():
                self._step()

    def _handle(self, command: _Add | str) -> None:
        if isinstance(command, str):
            self.engine.abort(command)
            self._streams.pop(command, None)
            return
        try:
            self.engine.add_request(command.request_id, command.processed, command.params)
        except (InputError, ValueError) as exc:
            command.post(exc)
            return
        self._streams[command.request_id] = command

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:
            logger.exception("engine step failed; failing the requests in flight")
            for request_id in list(self.engine.requests):
                self.engine.abort(request_id)
                stream = self._streams.pop(request_id, None)
                if stream is not None:
                    stream.post(
                        RuntimeError(f"the engine failed while running this request: {exc}")
                    )
            return
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            if output.finished:
                del self._streams[output.request_id]
            if not stream.post(output) and not output.finished:
                # Nobody can read this request any more: stop spending steps on it.
                self.engine.abort(output.request_id)
                del self._streams[output.request_id]
