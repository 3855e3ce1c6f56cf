"""Requests and sequences as the engine sees them.

A `Request` is what `add_request` accepted: prompt tokens, multimodal items, M-RoPE positions
and sampling parameters. It owns `n` `Sequence`s (one per sample) that the scheduler moves
between the waiting and running queues.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from vlmserve.types import FinishReason, Logprob, RequestMetrics, SamplingParams

if TYPE_CHECKING:
    from vlmserve.engine.detokenizer import IncrementalDetokenizer
    from vlmserve.engine.scoring import ScoringState


@dataclass(eq=False)
class MultiModalItem:
    """One image or video in a prompt, occupying `length` placeholder tokens at `offset`."""

    modality: str  # "image" | "video"
    key: str  # the caller's UUID, or a content hash: names the item in caches
    offset: int
    length: int
    grid_thw: tuple[int, int, int]
    pixel_values: torch.Tensor | None  # dropped once embeddings exist
    embeddings: torch.Tensor | None = None  # [length, hidden] once the vision tower ran
    # Seconds between a video's temporal patches (Qwen2.5-VL spaces their M-RoPE positions
    # by it); 1.0 for images, which have one temporal patch.
    seconds_per_grid: float = 1.0
    # What the item is, whatever it is called: the content hash. Prefix-cache blocks are
    # named by it, so two images sent under one UUID never share KV.
    digest: str | None = None

    def overlaps(self, start: int, end: int) -> bool:
        return self.offset < end and start < self.offset + self.length


@dataclass
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    mm_items: list[MultiModalItem]
    mrope_positions: torch.Tensor  # [3, num_prompt_tokens]
    mrope_delta: int  # decode position = token index + delta
    params: SamplingParams
    max_output_tokens: int  # max_tokens clipped to the context left after the prompt
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(time.time()))
    sequences: list[Sequence] = field(default_factory=list)
    error: str | None = None
    # Requests share prefix-cache blocks only when their salts are equal (vLLM's name).
    cache_salt: str | None = None
    scoring: ScoringState | None = None  # a scoring request (engine/scoring.py): nothing sampled

    @property
    def finished(self) -> bool:
        return all(seq.finish_reason is not None for seq in self.sequences)


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    seq_id: int
    request: Request
    index: int  # sample index within the request (0..n-1)
    token_ids: list[int]
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None = None
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose keys and values are in the cache
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # digests of full blocks
    num_cached_tokens: int = 0  # prompt tokens that came from the prefix cache
    num_forced_tokens: int = 0
    output_logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    cumulative_logprob: float = 0.0
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    # Scoring: the logits of every position from this one on are kept (none are sampled).
    logits_from: int | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def first_logit_position(self) -> int:
        """The first position whose logits are needed: it must be computed, never taken from
        the prefix cache (the last token when sampling; the first scored one when scoring)."""
        last = self.num_tokens - 1
        return last if self.logits_from is None else min(last, self.logits_from)

    def positions(self, start: int, end: int) -> torch.Tensor:
        """M-RoPE positions [3, end - start] of tokens start..end-1."""
        prompt_len = self.num_prompt_tokens
        parts = []
        if start < prompt_len:
            parts.append(self.request.mrope_positions[:, start : min(end, prompt_len)])
        if end > prompt_len:
            first = max(start, prompt_len) + self.request.mrope_delta
            last = end + self.request.mrope_delta
            parts.append(torch.arange(first, last).unsqueeze(0).expand(3, -1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def reset_for_recompute(self) -> None:
        """Preempted: the KV cache is gone, every token is computed again when rescheduled."""
        self.num_computed_tokens = 0
        self.block_table = []
        self.status = SequenceStatus.WAITING
