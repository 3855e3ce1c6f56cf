"""`ModelSpec`: one registered model as durable metadata (what the admin API accepts and the
store keeps), its checks, and the `EngineConfig` it loads with.

Field names are the admin API's (the serverless payload's `alias`, `model_name`,
`max_model_len`, `gpu_memory_utilization`, then ours), so an error names the field as the
client wrote it. Settings left `None` take the server's defaults (its `serve` flags) when the
model loads; per-model facts (tokenizer, chat template, context length) never come from
another model. `media` narrows the server's media policy for this model's requests (it can
never widen it: multimodal/policy.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from vlmserve.config import MODALITIES, QUANTIZATIONS, EngineConfig
from vlmserve.multimodal.policy import NO_OVERRIDES, MediaOverrides
from vlmserve.registry.errors import SpecError

NEVER = -1.0  # keep_alive: never unload for idleness
DTYPES = ("auto", "float32", "bfloat16", "float16")
MAX_ALIAS_CHARS = 256
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

# Settings that travel to EngineConfig under the same name when given.
ENGINE_SETTINGS = (
    "max_model_len",
    "max_num_seqs",
    "dtype",
    "quantization",
    "device",
    "kv_cache_memory_bytes",
    "gpu_memory_utilization",
    "limit_mm_per_prompt",
    "chat_template",
    "tokenizer",
)


def parse_keep_alive(value: object, field_name: str = "keep_alive") -> float:
    """Seconds (a number, or a string of one), a duration such as "500ms", "30s", "5m",
    "1h30m", or -1 for never. Returns seconds (`NEVER` for -1)."""
    seconds: float | None = None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if parts and "".join(n + u for n, u in parts) == text:
                seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds is None or not math.isfinite(seconds) or (seconds < 0 and seconds != NEVER):
        raise SpecError(
            field_name,
            f"{value!r} is not a keep-alive: give seconds (>= 0), a duration such as '30s', "
            "'5m' or '1h30m', or -1 to never unload",
        )
    return seconds


@dataclass(frozen=True)
class ModelSpec:
    alias: str  # what clients put in "model"
    model_name: str  # local folder or hub id
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    dtype: str | None = None
    quantization: str | None = None
    device: str | None = None
    kv_cache_memory_bytes: int | None = None
    gpu_memory_utilization: float | None = None
    limit_mm_per_prompt: dict[str, int] | None = None
    chat_template: str | None = None
    tokenizer: str | None = None
    max_waiting: int | None = None  # requests in flight or waiting for its load
    keep_alive: float | None = None  # seconds idle before unloading; NEVER; None: default
    pinned: bool = False  # loaded at start-up, never unloaded for idleness or evicted
    media: MediaOverrides = NO_OVERRIDES  # what it narrows of the server's media policy

    def __post_init__(self) -> None:
        _check(self)

    def same_engine(self, other: ModelSpec) -> bool:
        """Whether an engine loaded for `other` serves this spec as it is: they differ only
        in what the registry applies around the engine (media policy, keep-alive, pinning)."""
        around = dataclasses.replace(
            other, media=self.media, keep_alive=self.keep_alive, pinned=self.pinned
        )
        return around == self

    def engine_config(self, defaults: EngineConfig) -> EngineConfig:
        """The config this model loads with: the server's defaults, this model's source and
        per-model facts, and whatever settings the registration gave."""
        given = {name: getattr(self, name) for name in ENGINE_SETTINGS}
        per_model = ("max_model_len", "chat_template", "tokenizer")
        values = {k: v for k, v in given.items() if v is not None or k in per_model}
        known = {f.name for f in dataclasses.fields(EngineConfig)}
        unknown = sorted(set(values) - known)
        if unknown:  # a setting this build's engine has no field for
            raise SpecError(unknown[0], "is not supported by this server's engine")
        return dataclasses.replace(defaults, model=self.model_name, **values)

    def settings(self) -> dict[str, Any]:
        """The engine settings that were given (what the store keeps as JSON)."""
        return {n: getattr(self, n) for n in ENGINE_SETTINGS if getattr(self, n) is not None}

    def describe(self) -> dict[str, Any]:
        """Every field, as the admin API shows a registration."""
        return {**dataclasses.asdict(self), "media": self.media.to_dict()}


def _positive_int(spec: ModelSpec, name: str) -> None:
    value = getattr(spec, name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise SpecError(name, f"must be a whole number >= 1, got {value!r}")


def _check(spec: ModelSpec) -> None:
    alias = spec.alias
    if not isinstance(alias, str) or not 0 < len(alias) <= MAX_ALIAS_CHARS:
        raise SpecError("alias", f"must be 1 to {MAX_ALIAS_CHARS} characters")
    if not alias.isprintable() or alias != alias.strip():
        raise SpecError(
            "alias", f"{alias!r} may not contain control characters or start or end with spaces"
        )
    if not isinstance(spec.model_name, str) or not spec.model_name.strip():
        raise SpecError("model_name", "must name a model folder or hub id")
    if not spec.model_name.isprintable():
        raise SpecError("model_name", "may not contain control characters")
    if spec.tokenizer is not None and not spec.tokenizer.strip():
        raise SpecError("tokenizer", "must name a tokenizer folder or hub id (or be left out)")
    for name in ("max_model_len", "max_num_seqs", "kv_cache_memory_bytes", "max_waiting"):
        _positive_int(spec, name)
    if spec.dtype is not None and spec.dtype not in DTYPES:
        raise SpecError("dtype", f"must be one of {', '.join(DTYPES)}, got {spec.dtype!r}")
    if spec.quantization is not None and spec.quantization not in QUANTIZATIONS:
        raise SpecError(
            "quantization",
            f"must be one of {', '.join(QUANTIZATIONS)}, got {spec.quantization!r}",
        )
    if spec.device is not None and not _DEVICE.match(str(spec.device)):
        raise SpecError("device", f"must be auto, cpu, cuda or cuda:N, got {spec.device!r}")
    if spec.quantization not in (None, "none") and str(spec.device).startswith("cuda"):
        raise SpecError("quantization", f"{spec.quantization!r} runs on CPU only, not on cuda")
    utilization = spec.gpu_memory_utilization
    if utilization is not None and not (
        isinstance(utilization, int | float) and 0 < utilization <= 1
    ):
        raise SpecError("gpu_memory_utilization", f"must be in (0, 1], got {utilization!r}")
    for modality, limit in (spec.limit_mm_per_prompt or {}).items():
        if modality not in MODALITIES:
            raise SpecError(
                f"limit_mm_per_prompt.{modality}",
                f"is not a modality; known: {', '.join(MODALITIES)}",
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise SpecError(f"limit_mm_per_prompt.{modality}", f"must be >= 0, got {limit!r}")
    if spec.keep_alive is not None:
        parse_keep_alive(spec.keep_alive)
    if not isinstance(spec.media, MediaOverrides):
        raise SpecError("media", f"must be media policy overrides, got {spec.media!r}")
