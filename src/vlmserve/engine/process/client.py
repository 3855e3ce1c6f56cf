"""`ProcessEngine`: one model's engine in a process of its own, with `AsyncEngine`'s request
side (an `EngineClient`), so the registry and the serving layer drive it unchanged.

Why: in one process, HTTP (the event loop, pydantic, media decoding, tokenizing) and the
engine loop take turns on one GIL. Here the engine process steps the model and nothing
else; this process tokenizes and preprocesses media (requests cross the pipe processed,
pixel tensors in shared memory) and rebuilds each request's cumulative output from the
per-step deltas the engine sends (wire.py).

Failure is loud and bounded: when the engine process dies (killed, crashed), its pipe
closes, every open request ends with `EngineDead` naming the exit, `alive` turns False (the
registry retires the model: /ready 503) and later requests are refused at once. `close()`
asks the process to free everything and exit, and kills it if it does not within
`JOIN_TIMEOUT_S`: an unload always gives the memory back.

Lifecycle: `ProcessEngine(config)` -> `start()` (blocking: spawns the process and waits
until the engine is built) -> serve -> `drain(timeout)` -> `close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator

import torch.multiprocessing  # noqa: F401  (tensors then cross pipes in shared memory)

from vlmserve.config import EngineConfig
from vlmserve.engine.errors import EngineClosed, EngineDead, EngineDraining, EngineOverloaded
from vlmserve.engine.inputs import InputError, InputProcessor
from vlmserve.engine.mm_cache import MultiModalCache
from vlmserve.engine.process.media import SentMedia
from vlmserve.engine.process.spawn import EngineProcess
from vlmserve.engine.process.streams import Stream, StreamTable
from vlmserve.engine.process.wire import (
    Abort,
    AddRequest,
    Close,
    Command,
    EngineFacts,
    MediaNotCached,
    OutputAccumulator,
    PackedInput,
    Probe,
    ProbeAnswer,
    ScoreRequest,
    StatsSnapshot,
    StepOutputs,
)
from vlmserve.engine.process.worker import ProcessSettings
from vlmserve.engine.prompts import PromptInput, to_prompt
from vlmserve.engine.stats import EngineStats
from vlmserve.models.config import load_model_config
from vlmserve.models.hf_tokenizer import load_tokenizer
from vlmserve.models.loader import resolve_model_folder
from vlmserve.multimodal.processor import load_image_processor_config
from vlmserve.types import Prompt, RequestOutput, SamplingParams

logger = logging.getLogger("vlmserve.engine.process")

DRAIN_POLL_S = 0.01
READER_JOIN_S = 5.0  # the process has ended: its pipe is closed, the reader ends


class ProcessEngine:
    def __init__(
        self,
        config: EngineConfig,
        max_waiting: int = 1024,
        settings: ProcessSettings | None = None,
        start_timeout: float = 900.0,
    ) -> None:
        self.config = config
        self.max_waiting = max_waiting
        self.settings = settings or ProcessSettings()
        self.start_timeout = start_timeout
        self.facts: EngineFacts | None = None
        self._child: EngineProcess | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()  # closed and death, with the streams they fail
        self._streams = StreamTable()
        self._closed = False
        self._death: str | None = None
        self._admitting = True
        self._pending = 0  # accepted by generate() but not finished
        self._reserved = 0
        self._stats: StatsSnapshot | None = None
        self._work_at = time.monotonic()  # when work last arrived at an idle engine
        self._probe_ids = itertools.count()
        self._probes: dict[int, tuple[threading.Event, list[list[str]]]] = {}

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> ProcessEngine:
        """Spawn the engine process and wait until its engine is built (blocking: run it off
        the event loop). Raises what the build raised, or RuntimeError if the process died."""
        if self._closed:
            raise EngineClosed("the engine is closed")
        child = self._child = EngineProcess(self.config, self.settings)
        try:
            # While the engine process loads the weights: what this process needs to
            # process inputs (tokenizer, model and image-processor configs).
            folder = resolve_model_folder(self.config.model, weights=False)
            self.model_config = load_model_config(folder)
            self.tokenizer = load_tokenizer(self.config.tokenizer or folder)
            image_config = load_image_processor_config(folder)
            self.facts = child.wait_ready(self.start_timeout)
        except BaseException:
            child.stop()
            raise
        self.max_model_len = self.facts.max_model_len
        # The engine process has the vision cache; this side knows what it sent (media.py).
        self.media = SentMedia(
            self.config.mm_cache_bytes, self.model_config.hidden_size, self.facts.dtype
        )
        self.inputs, self._inputs_in_full = (
            InputProcessor(
                self.tokenizer,
                self.model_config,
                image_config,
                cache,
                self.config.mm_limits,
                self.max_model_len,
            )
            for cache in (self.media.cache, MultiModalCache(0))
        )
        self._reader = threading.Thread(
            target=self._read, name="vlmserve-engine-client", daemon=True
        )
        self._reader.start()
        return self

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def alive(self) -> bool:
        child = self._child
        return (
            child is not None
            and not self._closed
            and self._death is None
            and child.process.is_alive()
        )

    @property
    def num_in_flight(self) -> int:
        return self._pending

    @property
    def last_progress(self) -> float:
        """The engine loop's last turn (`time.monotonic()`, as reported by the process)."""
        stats = self._stats
        return stats.last_beat if stats is not None else self._work_at

    def memory_bytes(self) -> int:
        return self.facts.memory_bytes if self.facts is not None and not self._closed else 0

    def stalled_for(self) -> float:
        stats = self._stats
        if not self._streams and (stats is None or stats.num_requests == 0):
            return 0.0
        progress = max(stats.progress_at if stats is not None else 0.0, self._work_at)
        return max(0.0, time.monotonic() - progress)

    async def drain(self, timeout: float) -> bool:
        self._admitting = False
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        return self._pending == 0

    def resume(self) -> None:
        if not self._closed:
            self._admitting = True

    def close(self) -> None:
        """End every open stream with `EngineClosed`, stop the engine process (its memory goes
        with it). Blocks up to `JOIN_TIMEOUT_S`: run it off the event loop. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._admitting = False
        if self._child is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._send(Close())
        self._child.stop()
        if self._reader is not None:
            self._reader.join(READER_JOIN_S)
        self._streams.fail_all(EngineClosed("the engine was closed while this request was running"))

    # -- requests (event loop) ----------------------------------------------------------------
    async def generate(
        self, prompt: PromptInput, params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        """Yields the request's outputs as they grow; the last has `finished=True`. Closing
        the iterator early aborts the request in the engine process."""

        def command(known_media: bool) -> Command:
            return AddRequest(request_id, self._pack(prompt, known_media), params)

        async with contextlib.aclosing(self._submit(request_id, command)) as outputs:
            async for output in outputs:
                yield output

    async def score(
        self,
        prompt: PromptInput,
        continuations: list[list[int]],
        request_id: str,
        top_logprobs: int = 0,
    ) -> RequestOutput:
        def command(known_media: bool) -> Command:
            packed = self._pack(prompt, known_media)
            return ScoreRequest(request_id, packed, continuations, top_logprobs)

        final: RequestOutput | None = None
        async with contextlib.aclosing(self._submit(request_id, command)) as outputs:
            async for output in outputs:
                final = output
        assert final is not None and final.finished
        return final

    @contextlib.contextmanager
    def reserve(self) -> Iterator[None]:
        self._check_admission()
        self._reserved += 1
        try:
            yield
        finally:
            self._reserved -= 1

    def stats(self) -> EngineStats:
        stats = self._stats or StatsSnapshot.empty()
        return stats.engine_stats(self.stalled_for())

    def leaks(self, timeout: float = 10.0) -> list[str]:
        """What the engine holds once every command sent so far was handled (see
        engine/invariants.py); blocking: tests call it once their requests ended."""
        token = next(self._probe_ids)
        answer: list[list[str]] = []
        done = threading.Event()
        self._probes[token] = (done, answer)
        try:
            self._send(Probe(token))
            if not done.wait(timeout):
                raise TimeoutError(f"the engine process did not answer within {timeout} s")
        finally:
            self._probes.pop(token, None)
        return answer[0]

    def _pack(self, prompt: PromptInput, known_media: bool) -> PackedInput | Prompt:
        """Tokenize and preprocess here (a worker thread), off the engine's process. Media
        sent before crosses by key alone, unless `known_media` is False (the engine process
        missed such an item: everything is sent again)."""
        typed = to_prompt(prompt)
        if any(item.data is None for item in typed.media):
            return typed  # named by UUID: only the engine process's media cache knows it
        if known_media:
            processed = self.inputs.process(typed)
        else:
            self.media.forget_all()
            processed = self._inputs_in_full.process(typed)
        # Remembered before it is sent: a request that races it by key alone may miss in the
        # engine process, and is then sent again in full.
        self.media.remember(self.media.strip(processed))
        return PackedInput.pack(processed)

    async def _submit(
        self, request_id: str, command: Callable[[bool], Command]
    ) -> AsyncGenerator[RequestOutput, None]:
        self._check_admission()
        self._pending += 1
        loop = asyncio.get_running_loop()
        stream = Stream(request_id, loop, OutputAccumulator(request_id))
        post = loop.run_in_executor(None, self._post, stream, command, True)
        finished = False
        try:
            # Shielded: once the thread sends the request, only an abort sent after it
            # can take it back (see `finally`).
            await asyncio.shield(post)
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, MediaNotCached):  # before any output: send it again
                    stream = Stream(request_id, loop, OutputAccumulator(request_id))
                    post = loop.run_in_executor(None, self._post, stream, command, False)
                    await asyncio.shield(post)
                    continue
                if item is not None:
                    finished = True
                    raise item
                stream.signalled = False
                output = stream.outputs.output()
                finished = output.finished
                yield output
        finally:
            self._pending -= 1
            if not post.done():
                post.add_done_callback(lambda f: self._abort_if_sent(f, stream))
            elif not finished and post.exception() is None:
                self._abort(stream)

    def _post(self, stream: Stream, command: Callable[[bool], Command], known_media: bool) -> None:
        """On a worker thread: process the input, register the stream, send the request."""
        message = command(known_media)
        with self._lock:  # atomic with close() and death, which fail every stream after
            self._check_open()
            if not self._streams:
                self._work_at = time.monotonic()
            if not self._streams.add(stream):
                raise InputError(
                    f"request id {stream.request_id!r} is already in use", "request_id"
                )
        try:
            self._send(message)
        except (OSError, ValueError):
            self._streams.discard(stream)
            raise EngineDead(f"the engine process is gone ({self._exit()})") from None

    def _abort_if_sent(self, post: asyncio.Future[None], stream: Stream) -> None:
        if post.exception() is None:
            self._abort(stream)

    def _abort(self, stream: Stream) -> None:
        self._streams.discard(stream)
        with contextlib.suppress(OSError, ValueError):
            self._send(Abort(stream.request_id))

    def _send(self, message: object) -> None:
        assert self._child is not None, "start() first"
        with self._send_lock:
            self._child.conn.send(message)

    def _check_admission(self) -> None:
        self._check_open()
        if not self._admitting:
            raise EngineDraining("the engine is draining and admits no new requests; retry")
        in_flight = self._pending + self._reserved
        if in_flight >= self.max_waiting:
            raise EngineOverloaded(f"{in_flight} requests in flight; retry later")

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed("the engine is closed")
        if self._death is not None:
            raise EngineDead(self._death)
        if self._child is None or self._reader is None:
            raise EngineDead("the engine process is not running (start() first)")

    # -- pipe thread --------------------------------------------------------------------------
    def _read(self) -> None:
        child = self._child
        assert child is not None
        try:
            while True:
                try:
                    event = child.conn.recv()
                except (EOFError, OSError):
                    break
                if isinstance(event, StepOutputs):
                    self._stats = event.stats
                    self._streams.deliver(event)
                elif isinstance(event, ProbeAnswer):
                    probe = self._probes.get(event.token)
                    if probe is not None:
                        probe[1].append(event.leaks)
                        probe[0].set()
        except Exception:
            # Nothing from the engine can be read any more: it must not run on unseen.
            logger.exception("reading from the engine process failed; stopping it")
            child.process.kill()
        self._pipe_closed()

    def _pipe_closed(self) -> None:
        death = f"the engine process stopped ({self._exit()})"
        with self._lock:
            closed = self._closed
            if not closed:
                self._death = death
        if closed:
            return
        logger.critical("%s; failing its open requests", self._death)
        self._streams.fail_all(EngineDead(f"{self._death} while this request was running"))

    def _exit(self) -> str:
        return self._child.describe_exit() if self._child is not None else "never started"
