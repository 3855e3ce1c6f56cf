"""`AsyncEngine`: the engine on its own thread, fed and drained through asyncio.

All engine state is touched by the engine thread alone: callers post commands (add, abort)
to a thread-safe queue, and the thread posts each request's outputs back onto the caller's
event loop. Input processing (tokenizing, image preprocessing) runs in a worker thread
before a request is posted, so it never stalls the step loop. An exception inside a step
fails the requests in that step, not the thread.

Lifecycle, like a resource: build (`build_engine`, off the event loop) -> `start()` ->
serve -> `drain(timeout)` (optional: stop admitting, let in-flight requests finish) ->
`close()` (every open stream ends with `EngineClosed`, the thread stops, memory is freed).

Outputs travel back as handoff.py says: one wake-up per caller loop per step, and a reader
that falls behind skips to the newest (cumulative) output.

If the thread dies instead (an error no step handler caught), every open stream ends with
`EngineDead` and later requests are refused at once: no caller waits forever. The loop beats
at least every `HEARTBEAT_S`, idle or not, so `last_progress` tells a stuck step (liveness)
from an idle engine.

Progress is observable: `stalled_for()` is how long the engine has held requests without a
step computing anything (a step stuck in the model, or a loop that turns without work
getting done) — what a readiness watchdog reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator

from vlmserve.engine.engine import LLMEngine
from vlmserve.engine.errors import EngineClosed, EngineDead, EngineDraining, EngineOverloaded
from vlmserve.engine.handoff import Add, Close, Command, deliver
from vlmserve.engine.inputs import InputError, ProcessedInput
from vlmserve.engine.prompts import PromptInput
from vlmserve.engine.stats import EngineStats
from vlmserve.types import RequestOutput, SamplingParams

logger = logging.getLogger(__name__)

__all__ = [
    "AsyncEngine",
    "EngineClosed",
    "EngineDead",
    "EngineDraining",
    "EngineOverloaded",
]

DRAIN_POLL_S = 0.01
HEARTBEAT_S = 1.0  # an idle loop still wakes this often, to show it is not stuck
JOIN_TIMEOUT_S = 30.0  # a step is milliseconds to seconds; past this the thread is stuck


class AsyncEngine:
    def __init__(self, engine: LLMEngine, max_waiting: int = 1024) -> None:
        self.engine = engine
        self.max_waiting = max_waiting
        self._commands: queue.Queue[Command] = queue.Queue()
        # Posting and closing are atomic with respect to each other: every command is either
        # in the queue before the close command (so the thread handles it) or refused.
        self._post_lock = threading.Lock()
        self._closed = False
        self._death: BaseException | None = None  # why the thread stopped, if not closed
        self._admitting = True
        self._streams: dict[str, Add] = {}
        self._pending = 0  # accepted by generate() but not finished
        self._reserved = 0  # places held by callers still preparing a request (reserve())
        self._last_beat = time.monotonic()
        # When the engine last made progress: a step computed tokens or produced outputs,
        # the engine was seen idle, or work arrived at an idle engine.
        self._progress_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="vlmserve-engine", daemon=True)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> AsyncEngine:
        if self._closed:
            raise EngineClosed("the engine is closed")
        if not self._thread.is_alive():
            self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        """The engine loop runs (started, not closed, not crashed)."""
        return self._thread.is_alive() and not self._closed and self._death is None

    @property
    def num_in_flight(self) -> int:
        return self._pending

    @property
    def last_progress(self) -> float:
        """`time.monotonic()` of the loop's last turn (for liveness: a loop that stops turning
        while it runs is stuck in a step)."""
        return self._last_beat

    def stalled_for(self) -> float:
        """Seconds the engine has held requests without a step computing anything; 0 while
        it is idle or moving."""
        if not self._has_work():
            return 0.0
        return max(0.0, time.monotonic() - self._progress_at)

    def _has_work(self) -> bool:
        # Read from the caller's thread: a dict's length and a queue's size are safe to
        # read while the engine thread changes them.
        return bool(self.engine.requests) or not self._commands.empty()

    async def drain(self, timeout: float) -> bool:
        """Stop admitting (new `generate` calls raise `EngineDraining`) and wait up to
        `timeout` seconds for the requests in flight to finish. True when none is left;
        on False the caller decides: `close()` anyway, or `resume()`."""
        self._admitting = False
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        return self._pending == 0

    def resume(self) -> None:
        """Admit again after a `drain` whose caller decided not to close (e.g. an eviction
        that gave up at its deadline)."""
        if not self._closed:
            self._admitting = True

    def close(self) -> None:
        """End every open stream with `EngineClosed`, stop the thread and free the engine's
        memory. Blocks for up to one step: from an event loop, run it in a worker thread.
        Idempotent; requests posted after it fail at once instead of waiting forever."""
        with self._post_lock:
            if self._closed:
                return
            self._closed = True
            self._admitting = False
            self._commands.put(Close())
        if self._thread.is_alive():
            self._thread.join(JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                logger.error("the engine thread did not stop within %.0f s", JOIN_TIMEOUT_S)
                return
        # The thread never started or died: nobody else touches the engine now.
        self._close_on_this_thread()

    # -- caller side (event loop) -----------------------------------------------------------
    async def generate(
        self, prompt: PromptInput | ProcessedInput, params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        """Yields the request's outputs as they grow; the last one has `finished=True`.
        Closing the iterator early (client gone) aborts the request and frees its blocks."""

        async def prepare() -> ProcessedInput:
            if isinstance(prompt, ProcessedInput):
                return prompt
            return await self._prepare(prompt, params)

        def admit(processed: ProcessedInput) -> Callable[[LLMEngine], object]:
            return lambda engine: engine.add_request(request_id, processed, params)

        async with contextlib.aclosing(self._submit(request_id, prepare, admit)) as outputs:
            async for output in outputs:
                yield output

    async def score(
        self,
        prompt: PromptInput,
        continuations: list[list[int]],
        request_id: str,
        top_logprobs: int = 0,
    ) -> RequestOutput:
        """The teacher-forced log-probabilities of `continuations` (token id lists) after
        `prompt` (`LLMEngine.add_scoring_request`): one completion per continuation.
        Cancelling the caller aborts the request."""

        async def prepare() -> ProcessedInput:
            return await asyncio.to_thread(self.engine.process_input, prompt)

        def admit(processed: ProcessedInput) -> Callable[[LLMEngine], object]:
            return lambda engine: engine.add_scoring_request(
                request_id, processed, continuations, top_logprobs
            )

        final: RequestOutput | None = None
        async with contextlib.aclosing(self._submit(request_id, prepare, admit)) as outputs:
            async for output in outputs:
                final = output
        assert final is not None and final.finished
        return final

    async def _submit(
        self,
        request_id: str,
        prepare: Callable[[], Awaitable[ProcessedInput]],
        admit: Callable[[ProcessedInput], Callable[[LLMEngine], object]],
    ) -> AsyncGenerator[RequestOutput, None]:
        """Admission checks, input processing off the loop, then the request's outputs."""
        self._check_admission()
        self._pending += 1
        finished = False
        posted = False
        try:
            processed = await prepare()
            outputs: asyncio.Queue[BaseException | None] = asyncio.Queue()
            add = Add(request_id, admit(processed), asyncio.get_running_loop(), outputs)
            if not self._post(add):
                raise EngineClosed("the engine was closed before this request started")
            posted = True
            last: RequestOutput | None = None
            while not finished:
                item = await outputs.get()
                if item is not None:
                    finished = True
                    raise item
                add.signalled = False
                output = add.latest
                if output is None or output is last:  # read already, by an earlier wake-up
                    continue
                last = output
                finished = output.finished
                yield output
        finally:
            self._pending -= 1
            if posted and not finished:
                self._post(request_id)  # abort; refused (and moot) once closed

    @contextlib.contextmanager
    def reserve(self) -> Iterator[None]:
        """Hold one of the `max_waiting` places while the caller prepares a request (fetches
        and decodes its media), so that a flood is refused before any of that work: raises
        what `generate` would (EngineOverloaded, EngineDraining, ...). Leave the block right
        before calling `generate`, which takes a place of its own."""
        self._check_admission()
        self._reserved += 1
        try:
            yield
        finally:
            self._reserved -= 1

    def _check_admission(self) -> None:
        if self._closed:
            raise EngineClosed("the engine is closed")
        if self._death is not None:
            raise EngineDead(f"the engine loop stopped: {self._death!r}")
        if not self._admitting:
            raise EngineDraining("the engine is draining and admits no new requests; retry")
        if not self.alive:
            raise EngineDead("the engine loop is not running")
        in_flight = self._pending + self._reserved
        if in_flight >= self.max_waiting:
            raise EngineOverloaded(f"{in_flight} requests in flight; retry later")

    def _post(self, command: Add | str) -> bool:
        with self._post_lock:
            if self._closed or self._death is not None:
                return False
            if isinstance(command, Add) and not self._has_work():
                # An idle engine's clock starts when work arrives, not when it went idle.
                self._progress_at = time.monotonic()
            self._commands.put(command)
            return True

    async def _prepare(self, prompt: PromptInput, params: SamplingParams) -> ProcessedInput:
        # The grammar first, on its own bounded pool (a refused constraint costs no
        # tokenizing; a full pool raises GrammarCompilerBusy, an EngineOverloaded); then
        # tokens and media on the default pool.
        grammar = await asyncio.wrap_future(self.engine.guided.submit_compile(params))
        processed = await asyncio.to_thread(self.engine.process_input, prompt)
        processed.grammar = grammar
        return processed

    def stats(self) -> EngineStats:
        return EngineStats.of(self.engine, self.stalled_for())

    # -- engine thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the thread ends here either way: say why, once
            self._die(exc)

    def _loop(self) -> None:
        while True:
            block = not self.engine.has_unfinished()
            try:
                command: Command | None = self._commands.get(block=block, timeout=HEARTBEAT_S)
            except queue.Empty:
                command = None
            while command is not None:
                if isinstance(command, Close):
                    self._close_on_this_thread()
                    return
                self._handle(command)
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    command = None
            self._last_beat = time.monotonic()
            if self.engine.has_unfinished():
                self._step()
            else:
                self._progress_at = self._last_beat

    def _die(self, exc: BaseException) -> None:
        """The thread is stopping on an error: end every open stream and every queued add
        with `EngineDead`, and refuse what comes later (the engine is not freed here: the
        owner's `close()` does that)."""
        logger.critical("the engine loop stopped; failing its open requests", exc_info=exc)
        error = EngineDead(f"the engine loop stopped while this request was running: {exc!r}")
        with self._post_lock:
            self._death = exc
        self._fail_everything(error)

    def _close_on_this_thread(self) -> None:
        """Fail every open stream and every add still queued, then free the engine."""
        self._fail_everything(EngineClosed("the engine was closed while this request was running"))
        self.engine.close()

    def _fail_everything(self, error: Exception) -> None:
        """End every open stream and every add still queued with `error`."""
        for stream in self._streams.values():
            stream.post(error)
        self._streams.clear()
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if isinstance(command, Add):
                command.post(error)

    def _handle(self, command: Add | str) -> None:
        if isinstance(command, str):
            self.engine.abort(command)
            self._streams.pop(command, None)
            return
        try:
            command.admit(self.engine)
        except (InputError, ValueError) as exc:
            command.post(exc)
            return
        self._streams[command.request_id] = command

    def _step(self) -> None:
        batches = self.engine.num_batches
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
        if outputs or self.engine.num_batches != batches:
            self._progress_at = time.monotonic()
        deliver(outputs, self._streams, self.engine)
