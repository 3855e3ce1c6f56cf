"""The engine process: one model's `LLMEngine`, stepped by this process's main thread and fed
through the pipe to the HTTP process (`ProcessEngine` is the other end).

A reader thread only receives commands and queues them; the main thread handles them between
steps (adds, aborts, probes), so all engine state has one owner, as in `AsyncEngine`. A
request's grammar compiles on the engine's grammar pool before the request is admitted (its
`_Admit` comes back through the queue), so an abort that arrives meanwhile is honoured.
After each step one `StepOutputs` message carries the deltas of every request that moved,
the admission failures and the engine's counters; an idle loop still sends its counters every
`HEARTBEAT_S`, which is how the HTTP side tells a stuck step from an idle engine.

The process ends on `Close`, when the HTTP process goes away (the pipe closes), or when the
loop fails: the HTTP side sees the pipe close and fails every open request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from vlmserve.config import EngineConfig
from vlmserve.engine.engine import LLMEngine, build_engine
from vlmserve.engine.heap import freeze_long_lived
from vlmserve.engine.inputs import InputError, ProcessedInput
from vlmserve.engine.invariants import leaks
from vlmserve.engine.loading import set_cpu_threads
from vlmserve.engine.process.wire import (
    Abort,
    AddRequest,
    Close,
    Command,
    DeltaEncoder,
    EngineFacts,
    ErrorInfo,
    MediaNotCached,
    OutputDelta,
    PackedInput,
    Probe,
    ProbeAnswer,
    Ready,
    RequestFailed,
    ScoreRequest,
    StartFailed,
    StatsSnapshot,
    StepOutputs,
)
from vlmserve.engine.stats import EngineStats
from vlmserve.types import Prompt

logger = logging.getLogger("vlmserve.engine.process")

HEARTBEAT_S = 1.0
INPUT_WORKERS = 2  # prompts naming media by UUID alone are processed here


@dataclass
class _Admit:
    """A request whose preparation ended: `future` holds its grammar (`processed` given) or,
    for a prompt processed here, the processed input with its grammar."""

    command: AddRequest | ScoreRequest
    processed: ProcessedInput | None
    future: Future[Any]


@dataclass(frozen=True)
class ProcessSettings:
    """What the process owner decides for the engine's process (sent at spawn; both
    callables must pickle, i.e. be module-level functions or partials of them)."""

    cpu_threads: int | None = None
    setup: Callable[[], None] | None = None  # e.g. the server's logging configuration
    on_ready: Callable[[LLMEngine], None] | None = None  # sees the built engine


def run_engine_process(config: EngineConfig, conn: Connection, settings: ProcessSettings) -> None:
    """The process's entry point: build, report `Ready` (or `StartFailed`), serve, exit."""
    # Ctrl-C reaches the whole process group, and a service manager may send SIGTERM to
    # every process of the service: the HTTP process drains first and then closes us (and
    # if it dies, the pipe closes and we exit).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if settings.setup is not None:
        settings.setup()
    try:
        if settings.cpu_threads is not None:
            set_cpu_threads(settings.cpu_threads)
        engine = build_engine(config)
    except Exception as exc:
        # The server reports it (a start-up error is one line); the trace is for debugging.
        logger.debug("the engine process could not build the engine", exc_info=True)
        conn.send(StartFailed(ErrorInfo.of(exc)))
        return
    if settings.on_ready is not None:
        settings.on_ready(engine)
    freeze_long_lived()  # this process lives as long as its engine
    facts = EngineFacts(
        engine.max_model_len, engine.dtype, engine.num_kv_blocks, engine.memory_bytes(), os.getpid()
    )
    worker = EngineWorker(engine, conn)
    conn.send(Ready(facts))
    worker.run()


class EngineWorker:
    def __init__(self, engine: LLMEngine, conn: Connection) -> None:
        self.engine = engine
        self.conn = conn
        self._commands: queue.Queue[Command | _Admit] = queue.Queue()
        self._preparing: set[str] = set()  # ids whose grammar or input is being prepared
        self._encoder = DeltaEncoder()
        self._failures: list[RequestFailed] = []
        self._inputs = ThreadPoolExecutor(INPUT_WORKERS, "vlmserve-engine-inputs")
        self._last_beat = self._progress_at = self._last_sent = time.monotonic()

    def run(self) -> None:
        threading.Thread(target=self._read, name="vlmserve-engine-pipe", daemon=True).start()
        try:
            self._loop()
        except BaseException:
            logger.critical("the engine loop stopped; the engine process exits", exc_info=True)
            raise
        finally:
            self._inputs.shutdown(wait=False, cancel_futures=True)
            self.engine.close()

    # -- reader thread ------------------------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                command: Command = self.conn.recv()
            except (EOFError, OSError):
                # The HTTP process is gone: nobody can read what we compute.
                self._commands.put(Close())
                return
            self._commands.put(command)
            if isinstance(command, Close):
                return

    # -- main thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            busy = self.engine.has_unfinished()
            try:
                command: Command | _Admit | None = self._commands.get(
                    block=not busy, timeout=HEARTBEAT_S
                )
            except queue.Empty:
                command = None
            while command is not None:
                if isinstance(command, Close):
                    return
                self._handle(command)
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    command = None
            self._last_beat = time.monotonic()
            if self.engine.has_unfinished():
                if not busy:  # an idle engine's clock starts when work arrives
                    self._progress_at = self._last_beat
                self._step()
            else:
                self._progress_at = self._last_beat
                if self._failures or self._last_beat - self._last_sent >= HEARTBEAT_S:
                    self._send_outputs([])

    def _handle(self, command: Command | _Admit) -> None:
        if isinstance(command, _Admit):
            self._admit(command)
        elif isinstance(command, Abort):
            self._preparing.discard(command.request_id)
            self.engine.abort(command.request_id)
            self._encoder.forget(command.request_id)
        elif isinstance(command, Probe):
            self._send(ProbeAnswer(command.token, leaks(self.engine)))
        elif isinstance(command, (AddRequest, ScoreRequest)):
            self._prepare(command)

    def _prepare(self, command: AddRequest | ScoreRequest) -> None:
        """Start what must happen before admission, off this thread."""
        request_id = command.request_id
        prompt = command.prompt
        future: Future[Any]
        processed: ProcessedInput | None = None
        try:
            if isinstance(prompt, Prompt):
                if isinstance(command, AddRequest):
                    future = self._inputs.submit(self.engine.prepare, prompt, command.params)
                else:
                    future = self._inputs.submit(self.engine.process_input, prompt)
            else:
                processed = self._with_cached_media(prompt)
                if isinstance(command, AddRequest):
                    future = self.engine.guided.submit_compile(command.params)
                else:
                    future = Future()
                    future.set_result(None)
        except Exception as exc:  # a full grammar pool, a closed engine: this request only
            self._failures.append(RequestFailed(request_id, ErrorInfo.of(exc)))
            return
        self._preparing.add(request_id)
        admit = _Admit(command, processed, future)
        future.add_done_callback(lambda _: self._commands.put(admit))

    def _with_cached_media(self, packed: PackedInput) -> ProcessedInput:
        """The HTTP side cannot see the vision-embedding cache: items it sent by key alone
        (it sent their pixels before: media.py) and items it preprocessed that the cache
        holds (same key, same content) take the cached embeddings here."""
        processed = packed.unpack()
        for item in processed.mm_items:
            if item.embeddings is not None:
                continue
            cached = self.engine.mm_cache.get(item.key, item.digest)
            if cached is not None and cached.grid_thw == item.grid_thw:
                item.embeddings, item.pixel_values = cached.embeddings, None
            elif item.pixel_values is None:
                raise MediaNotCached(f"{item.modality} {item.key} is not cached any more")
        return processed

    def _admit(self, admit: _Admit) -> None:
        command = admit.command
        request_id = command.request_id
        if request_id not in self._preparing:
            return  # aborted while it was prepared
        self._preparing.discard(request_id)
        try:
            result = admit.future.result()
            if admit.processed is None:
                assert isinstance(result, ProcessedInput)
                processed = result
            else:
                processed = admit.processed
                processed.grammar = result
            if isinstance(command, AddRequest):
                self.engine.add_request(request_id, processed, command.params)
            else:
                self.engine.add_scoring_request(
                    request_id, processed, command.continuations, command.top_logprobs
                )
        except (InputError, ValueError, RuntimeError) as exc:
            self._failures.append(RequestFailed(request_id, ErrorInfo.of(exc)))

    def _step(self) -> None:
        engine = self.engine
        batches = engine.num_batches
        try:
            outputs = engine.step()
        except Exception as exc:
            logger.exception("engine step failed; failing the requests in flight")
            error = ErrorInfo("runtime", f"the engine failed while running this request: {exc}")
            for request_id in list(engine.requests):
                engine.abort(request_id)
                self._encoder.forget(request_id)
                self._failures.append(RequestFailed(request_id, error))
            outputs = []
        if outputs or engine.num_batches != batches:
            self._progress_at = time.monotonic()
        self._send_outputs([self._encoder.encode(output) for output in outputs])

    def _send_outputs(self, deltas: list[OutputDelta]) -> None:
        failures, self._failures = self._failures, []
        self._send(StepOutputs(deltas, failures, self._stats()))
        self._last_sent = time.monotonic()

    def _send(self, event: object) -> None:
        # OSError: the HTTP process is gone; the reader thread sees it too and queues Close.
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(event)

    def _stats(self) -> StatsSnapshot:
        e = self.engine
        return StatsSnapshot(
            counters=EngineStats.of(e, stalled_seconds=0.0),
            num_requests=len(e.requests),
            last_beat=self._last_beat,
            progress_at=self._progress_at,
        )
