"""Plain cross-layer data: what a caller asks for and what the engine hands back.

No torch, no pydantic: every layer may import this module. Names mirror vLLM's
(`SamplingParams`, `RequestOutput`, `CompletionOutput`) so users' code carries over.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 100  # OpenAI's range for logit_bias values: [-100, 100]


class FinishReason(enum.StrEnum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or the context ran out
    ABORT = "abort"  # cancelled by the caller (client disconnect, abort())
    ERROR = "error"  # the request failed inside the engine; other requests go on


@dataclass(frozen=True)
class ToolFunction:
    """A function the model may call: its name and the JSON schema of its arguments object.
    `strict`: OpenAI strict-mode rules apply to the schema (see docs/structured.md); the
    arguments are constrained to the schema either way."""

    name: str
    parameters: dict[str, Any]
    strict: bool = False


@dataclass(frozen=True)
class ToolCallsConstraint:
    """Tool calls in the Hermes format (`<tool_call>{"name": ..., "arguments": ...}</tool_call>`,
    as Qwen2/2.5 write them), each naming one of `functions` with valid arguments.

    `required`: the output is only calls (at least one); otherwise ("auto") it is text, and
    once the model opens a call the call is constrained. `parallel`: more than one call may
    follow. `text_schema`: in auto mode, the text is JSON valid against it (a response format).
    """

    functions: tuple[ToolFunction, ...]
    required: bool = False
    parallel: bool = True
    text_schema: dict[str, Any] | None = None
    text_strict: bool = False


@dataclass
class StructuredOutputsParams:
    """Exactly one constraint kind must be set (vLLM's `StructuredOutputsParams` names).

    `strict` only matters for `json`: True applies OpenAI strict-mode rules (see
    docs/structured.md), False constrains to the schema as written.
    """

    json: dict[str, Any] | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: dict[str, Any] | str | None = None
    tool_calls: ToolCallsConstraint | None = None
    strict: bool = True

    def kind(self) -> str:
        set_kinds = [
            name
            for name in (
                "json",
                "regex",
                "choice",
                "grammar",
                "json_object",
                "structural_tag",
                "tool_calls",
            )
            if getattr(self, name) not in (None, False)
        ]
        if len(set_kinds) != 1:
            raise ValueError(
                "structured_outputs needs exactly one of json, regex, choice, grammar, "
                f"json_object, structural_tag; got {set_kinds or 'none'}"
            )
        return set_kinds[0]


@dataclass
class SamplingParams:
    """How to sample one request. Validated on construction; errors name the field."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) disables
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int | None = 16  # None: up to the context length
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    logprobs: int | None = None  # number of top logprobs per generated token (0: sampled only)
    skip_special_tokens: bool = True
    structured_outputs: StructuredOutputsParams | None = None
    # Added to the logits of these token ids before sampling (OpenAI's logit_bias: -100 bans
    # a token, 100 all but forces it); a grammar's mask still applies after it.
    logit_bias: dict[int, float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)
        if self.top_k == -1:
            self.top_k = 0
        checks: list[tuple[bool, str]] = [
            (self.n >= 1, f"n must be at least 1, got {self.n}"),
            (self.temperature >= 0.0, f"temperature must be >= 0, got {self.temperature}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top_k must be -1, 0 (disabled) or positive, got {self.top_k}"),
            (0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}"),
            (
                -2.0 <= self.presence_penalty <= 2.0,
                f"presence_penalty must be in [-2, 2], got {self.presence_penalty}",
            ),
            (
                -2.0 <= self.frequency_penalty <= 2.0,
                f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}",
            ),
            (
                self.repetition_penalty > 0.0,
                f"repetition_penalty must be > 0, got {self.repetition_penalty}",
            ),
            (
                self.max_tokens is None or self.max_tokens >= 1,
                f"max_tokens must be at least 1, got {self.max_tokens}",
            ),
            (self.min_tokens >= 0, f"min_tokens must be >= 0, got {self.min_tokens}"),
            (
                self.max_tokens is None or self.min_tokens <= self.max_tokens,
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})",
            ),
            (
                self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS,
                f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs}",
            ),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty"),
            (all(t >= 0 for t in self.stop_token_ids), "stop_token_ids must be >= 0"),
            *_logit_bias_checks(self.logit_bias),
            (
                # The grammar decides where a structured output ends; blocking its stop
                # tokens could leave a step with no allowed token at all.
                self.min_tokens == 0 or self.structured_outputs is None,
                "min_tokens cannot be combined with structured_outputs (the grammar decides "
                "where the output ends)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.structured_outputs is not None:
            self.structured_outputs.kind()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _logit_bias_checks(bias: dict[int, float] | None) -> list[tuple[bool, str]]:
    if bias is None:
        return []
    checks = []
    for token, value in bias.items():
        is_id = isinstance(token, int) and not isinstance(token, bool) and token >= 0
        checks.append((is_id, f"logit_bias keys must be token ids (ints >= 0), got {token!r}"))
        in_range = isinstance(value, (int, float)) and -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS
        checks.append(
            (
                in_range,
                f"logit_bias[{token!r}] must be in [-{MAX_LOGIT_BIAS}, {MAX_LOGIT_BIAS}], "
                f"got {value!r}",
            )
        )
    return checks


@dataclass
class MediaInput:
    """One image or video of a prompt. Within a modality, items fill the prompt's vision
    placeholders in order."""

    modality: str  # "image" | "video"
    # An image: a PIL image. A video: its frames, a list of PIL images. None: the item is
    # named by `uuid` alone and served from the engine's media cache.
    data: Any = None
    uuid: str | None = None  # names the item in the media cache (instead of a content hash)
    fps: float | None = None  # a video's sampling rate (None: the engine's default, 2)
    # An image's pixel budget, below the model's own (None: the model's). The chat API's
    # `detail: "low"` sets it; the same image at another budget is another cache entry.
    max_pixels: int | None = None


@dataclass
class Prompt:
    """What the engine runs: exactly one of `text` and `token_ids`, plus media items.

    The serving layer hands the engine this, never a dict; vLLM's dict prompts are converted
    once, at the engine's entry (`vlmserve.engine.prompts.to_prompt`)."""

    text: str | None = None
    token_ids: list[int] | None = None
    media: list[MediaInput] = field(default_factory=list)
    # Requests share prefix-cache blocks only when their salts are equal (vLLM's name).
    cache_salt: str | None = None


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None  # 1-based rank in the distribution
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # the stop string or token id that ended it
    num_forced_tokens: int = 0  # tokens appended by grammar jump-ahead, not sampled

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics | None = None
    error: str | None = None  # set when finish_reason is "error"
    # Prompt tokens that carry vision embeddings, by modality ("image", "video").
    num_media_tokens: dict[str, int] = field(default_factory=dict)
