"""What travels between the HTTP process and its engine process: plain dataclasses sent
through one `multiprocessing` pipe (pickled by `ForkingPickler`, so the pixel tensors of a
request cross in shared memory, not as bytes).

Requests go in already processed (token ids, preprocessed media); outputs come back as one
message per engine step, holding for each request only what changed since the last one
(new token ids, new text, new logprob entries), which `OutputAccumulator` turns back into
the cumulative `RequestOutput`s the serving layer reads. Errors cross as `ErrorInfo` (an
exception's class does not survive pickling with its fields: `InputError.param` would be
lost) and are rebuilt on the other side.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vlmserve.engine.errors import EngineOverloaded
from vlmserve.engine.inputs import InputError, ProcessedInput
from vlmserve.engine.stats import EngineStats
from vlmserve.types import CompletionOutput, Prompt, RequestMetrics, RequestOutput, SamplingParams

# -- HTTP process -> engine process ----------------------------------------------------------


@dataclass
class PackedInput:
    """A `ProcessedInput` for the pipe. Its M-RoPE positions (a few KB) travel by value as a
    numpy array: cheaper than the shared-memory segment and descriptor hand-over a tensor
    costs. Pixel tensors stay tensors, handed over in shared memory."""

    processed: ProcessedInput
    positions: np.ndarray

    @classmethod
    def pack(cls, processed: ProcessedInput) -> PackedInput:
        positions = processed.mrope_positions.numpy()
        return cls(dataclasses.replace(processed, mrope_positions=torch.empty(0)), positions)

    def unpack(self) -> ProcessedInput:
        positions = torch.from_numpy(self.positions)
        return dataclasses.replace(self.processed, mrope_positions=positions)


@dataclass
class AddRequest:
    request_id: str
    # Processed on the HTTP side; a `Prompt` when it names media by UUID alone (only the
    # engine's media cache knows those), processed in the engine process then.
    prompt: PackedInput | Prompt
    params: SamplingParams


@dataclass
class ScoreRequest:
    request_id: str
    prompt: PackedInput | Prompt
    continuations: list[list[int]]
    top_logprobs: int


@dataclass
class Abort:
    request_id: str


@dataclass
class Probe:
    """Asks for `leaks()` of the engine once every earlier command was handled."""

    token: int


@dataclass
class Close:
    """Free the engine and exit."""


Command = AddRequest | ScoreRequest | Abort | Probe | Close

# -- engine process -> HTTP process ----------------------------------------------------------


@dataclass(frozen=True)
class EngineFacts:
    """What the HTTP side needs of the built engine."""

    max_model_len: int
    dtype: torch.dtype  # of its weights, and of the vision embeddings it caches
    num_kv_blocks: int
    memory_bytes: int
    pid: int


@dataclass
class Ready:
    facts: EngineFacts


class MediaNotCached(RuntimeError):
    """An item sent by key alone (see media.py) is no longer in the engine's cache."""


@dataclass
class ErrorInfo:
    kind: str  # "input" | "media" | "overloaded" | "value" | "os" | "runtime"
    message: str
    param: str | None = None
    status: int = 400

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        if isinstance(exc, InputError):
            return cls("input", str(exc), exc.param, exc.status)
        if isinstance(exc, MediaNotCached):
            return cls("media", str(exc))
        if isinstance(exc, EngineOverloaded):
            return cls("overloaded", str(exc))
        if isinstance(exc, ValueError):
            return cls("value", str(exc))
        if isinstance(exc, OSError):  # missing files, no network: start-up errors
            return cls("os", str(exc))
        return cls("runtime", f"{type(exc).__name__}: {exc}")

    def error(self) -> Exception:
        if self.kind == "input":
            return InputError(self.message, self.param, self.status)
        if self.kind == "overloaded":
            return EngineOverloaded(self.message)
        if self.kind == "media":
            return MediaNotCached(self.message)
        if self.kind == "value":
            return ValueError(self.message)
        if self.kind == "os":
            return OSError(self.message)
        return RuntimeError(self.message)


@dataclass
class StartFailed:
    error: ErrorInfo


@dataclass
class RequestFailed:
    request_id: str
    error: ErrorInfo


@dataclass(frozen=True)
class StatsSnapshot:
    """The engine's counters (`stalled_seconds` is left 0: the client computes it from the
    clocks), and its clocks (`time.monotonic()`, one clock for every process of the
    machine): the loop's last turn and its last progress."""

    counters: EngineStats
    num_requests: int  # admitted and not finished, plus those still compiling
    last_beat: float
    progress_at: float

    @classmethod
    def empty(cls) -> StatsSnapshot:
        return cls(EngineStats(0, 0, 0.0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0), 0, 0.0, 0.0)

    def engine_stats(self, stalled_seconds: float) -> EngineStats:
        return dataclasses.replace(self.counters, stalled_seconds=stalled_seconds)


@dataclass
class CompletionDelta:
    """One sample's change: `token_ids[token_from:]`, `text[text_from:]` and
    `logprobs[logprobs_from:]` are replaced by the pieces (normally appended: the offsets
    are the lengths already sent), and the scalars are the newest."""

    index: int
    token_from: int
    token_ids: list[int]
    text_from: int
    text: str
    logprobs_from: int
    logprobs: list[Any] | None
    cumulative_logprob: float | None
    finish_reason: str | None
    stop_reason: int | str | None
    num_forced_tokens: int


@dataclass
class OutputDelta:
    request_id: str
    completions: list[CompletionDelta]
    finished: bool
    error: str | None
    metrics: RequestMetrics | None  # sent with the first and the last delta
    # With the first delta only (then None): they never change.
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    num_media_tokens: dict[str, int] | None = None


@dataclass
class StepOutputs:
    deltas: list[OutputDelta]
    failures: list[RequestFailed]
    stats: StatsSnapshot


@dataclass
class ProbeAnswer:
    token: int
    leaks: list[str]


Event = Ready | StartFailed | StepOutputs | ProbeAnswer

# -- deltas ----------------------------------------------------------------------------------


@dataclass
class _Sent:
    tokens: int = 0
    text: str = ""
    logprobs: int = 0


@dataclass
class DeltaEncoder:
    """Engine side: cumulative outputs -> what changed since the last one sent."""

    _sent: dict[str, list[_Sent]] = field(default_factory=dict)

    def encode(self, output: RequestOutput) -> OutputDelta:
        first = output.request_id not in self._sent
        sent = self._sent.setdefault(output.request_id, [])
        completions = []
        for position, completion in enumerate(output.outputs):
            if position == len(sent):
                sent.append(_Sent())
            mark = sent[position]
            text_from = _common_prefix(mark.text, completion.text)
            logprobs = completion.logprobs
            completions.append(
                CompletionDelta(
                    index=completion.index,
                    token_from=mark.tokens,
                    token_ids=completion.token_ids[mark.tokens :],
                    text_from=text_from,
                    text=completion.text[text_from:],
                    logprobs_from=mark.logprobs,
                    logprobs=None if logprobs is None else logprobs[mark.logprobs :],
                    cumulative_logprob=completion.cumulative_logprob,
                    finish_reason=completion.finish_reason,
                    stop_reason=completion.stop_reason,
                    num_forced_tokens=completion.num_forced_tokens,
                )
            )
            mark.tokens = len(completion.token_ids)
            mark.text = completion.text
            mark.logprobs = 0 if logprobs is None else len(logprobs)
        if output.finished:
            del self._sent[output.request_id]
        return OutputDelta(
            request_id=output.request_id,
            completions=completions,
            finished=output.finished,
            error=output.error,
            metrics=output.metrics if first or output.finished else None,
            prompt=output.prompt if first else None,
            prompt_token_ids=output.prompt_token_ids if first else None,
            num_media_tokens=output.num_media_tokens if first else None,
        )

    def forget(self, request_id: str) -> None:
        self._sent.pop(request_id, None)


def _common_prefix(old: str, new: str) -> int:
    """Where `new` departs from `old`: normally `len(old)` (text only grows)."""
    if new.startswith(old):
        return len(old)
    n = 0
    for a, b in zip(old, new):
        if a != b:
            break
        n += 1
    return n


class OutputAccumulator:
    """HTTP side: one request's deltas -> its cumulative `RequestOutput`, built when read."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.prompt: str | None = None
        self.prompt_token_ids: list[int] = []
        self.num_media_tokens: dict[str, int] = {}
        self.metrics: RequestMetrics | None = None
        self.completions: dict[int, CompletionOutput] = {}
        self.finished = False
        self.error: str | None = None

    def apply(self, delta: OutputDelta) -> None:
        if delta.prompt_token_ids is not None:
            self.prompt, self.prompt_token_ids = delta.prompt, delta.prompt_token_ids
            self.num_media_tokens = delta.num_media_tokens or {}
        if delta.metrics is not None:
            self.metrics = delta.metrics
        for change in delta.completions:
            out = self.completions.get(change.index)
            if out is None:
                out = CompletionOutput(change.index, "", [], None, None)
                self.completions[change.index] = out
            del out.token_ids[change.token_from :]
            out.token_ids.extend(change.token_ids)
            out.text = out.text[: change.text_from] + change.text
            if change.logprobs is None:
                out.logprobs = None
            else:
                if out.logprobs is None:
                    out.logprobs = []
                del out.logprobs[change.logprobs_from :]
                out.logprobs.extend(change.logprobs)
            out.cumulative_logprob = change.cumulative_logprob
            out.finish_reason = change.finish_reason
            out.stop_reason = change.stop_reason
            out.num_forced_tokens = change.num_forced_tokens
        self.finished, self.error = delta.finished, delta.error

    def output(self) -> RequestOutput:
        """A snapshot: later deltas do not change what an earlier reader holds."""
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=[
                dataclasses.replace(
                    out,
                    token_ids=list(out.token_ids),
                    logprobs=None if out.logprobs is None else list(out.logprobs),
                )
                for _, out in sorted(self.completions.items())
            ],
            finished=self.finished,
            metrics=self.metrics,
            error=self.error,
            num_media_tokens=self.num_media_tokens,
        )
