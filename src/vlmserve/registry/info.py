"""`ModelInfo`: the facts about a served model that the layers above the engine need
(name, limits, chat template, reserved tokens, the tokenizer's encode and decode), taken from the
engine once so that nobody above has to reach into it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vlmserve.config import EngineConfig
from vlmserve.models.hf_tokenizer import TokenizerBundle
from vlmserve.multimodal.policy import NO_OVERRIDES, MediaOverrides


class BuiltEngine(Protocol):
    """What the info is taken from: an `LLMEngine`, or a `ProcessEngine` (which holds the
    tokenizer and the engine's facts on the HTTP side)."""

    config: EngineConfig
    tokenizer: TokenizerBundle
    max_model_len: int


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what clients put in "model"
    root: str  # the hub id it came from, or `name` for a local folder (never a server path)
    created: int
    max_model_len: int
    chat_template: str | None
    reserved_tokens: frozenset[str]  # never allowed in user text
    media_limits: dict[str, int]  # most media items per request, by modality
    decode: Callable[[list[int]], str]  # token ids -> text, for logprob entries
    encode: Callable[[str], list[int]]  # text -> token ids, for continuations to score
    # What its registration narrows of the server's media policy (multimodal/policy.py); the
    # registry sets it from the registration, whichever host built the engine.
    media_policy: MediaOverrides = NO_OVERRIDES

    @classmethod
    def from_engine(
        cls, engine: BuiltEngine, name: str | None, chat_template: str | None = None
    ) -> ModelInfo:
        # Only the tokenizer is captured (by `decode`), never the engine: the info outlives
        # an unloaded model's memory.
        tokenizer = engine.tokenizer
        name = name or engine.config.model
        return cls(
            name=name,
            root=name if Path(engine.config.model).exists() else engine.config.model,
            created=int(time.time()),
            max_model_len=engine.max_model_len,
            chat_template=chat_template or engine.config.chat_template or tokenizer.chat_template,
            reserved_tokens=tokenizer.reserved_tokens,
            media_limits=engine.config.mm_limits,
            decode=lambda ids: tokenizer.tokenizer.decode(ids, skip_special_tokens=False),
            encode=tokenizer.encode,
        )
