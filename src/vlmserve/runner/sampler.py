"""Turns a batch of logits into next tokens (and logprobs) under each row's parameters.

Order of operations, per row: raw logprobs are taken first (what the model said, as vLLM
reports them); then penalties and logit_bias apply, min_tokens blocks the stop tokens, the
grammar mask applies (last, so no bias can let a masked token through), and finally greedy
argmax or temperature / top-k / top-p / min-p sampling with the row's own generator (so a
seeded request is reproducible whatever it is batched with).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmserve.structured import apply_token_bitmask
from vlmserve.types import SamplingParams


@dataclass
class SamplingRow:
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    generator: torch.Generator | None
    blocked_token_ids: list[int]  # stop tokens while min_tokens is not reached


@dataclass
class SamplerOutput:
    token_ids: list[int]
    # Raw logprob and 1-based rank of each sampled token; filled only when some row of the
    # batch asked for logprobs (0 otherwise).
    logprobs: list[float]
    ranks: list[int]
    top_ids: list[list[int]]  # top-`logprobs` token ids per row (empty when not asked)
    top_logprobs: list[list[float]]
    raw_logprobs: torch.Tensor | None  # [B, V] when logprobs were asked for

    def logprob_of(self, row: int, token: int) -> tuple[float, int]:
        """Raw logprob and 1-based rank of any token of `row` (logprobs were asked for)."""
        assert self.raw_logprobs is not None
        values = self.raw_logprobs[row]
        value = values[token]
        return float(value), int((values > value).sum()) + 1


def sample(
    logits: torch.Tensor,
    rows: list[SamplingRow],
    bitmask: torch.Tensor | None = None,
    constrained: list[int] | None = None,
) -> SamplerOutput:
    """`bitmask` [B, W] int32 (llguidance layout) holds the grammar masks of the rows listed in
    `constrained`; the other rows are unconstrained."""
    logits = logits.to(torch.float32, copy=True)  # penalties and masks write in place
    # Logprobs cost a full-vocabulary pass per row: only when some row asked for them.
    want_logprobs = any(row.params.logprobs is not None for row in rows)
    raw_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
    for i, row in enumerate(rows):
        _apply_penalties(logits[i], row)
        if row.params.logit_bias:
            _apply_logit_bias(logits[i], row.params.logit_bias)
        if row.blocked_token_ids:
            logits[i, row.blocked_token_ids] = float("-inf")
    if bitmask is not None and constrained:
        apply_token_bitmask(logits, bitmask, constrained)
    token_ids = _choose(logits, rows)
    top_ids: list[list[int]] = [[] for _ in rows]
    top_lps: list[list[float]] = [[] for _ in rows]
    if raw_logprobs is None:
        return SamplerOutput(token_ids, [0.0] * len(rows), [0] * len(rows), top_ids, top_lps, None)
    chosen = torch.tensor(token_ids, dtype=torch.long, device=logits.device).unsqueeze(1)
    chosen_lp = raw_logprobs.gather(1, chosen)
    ranks = (raw_logprobs > chosen_lp).sum(dim=1) + 1
    max_k = max((row.params.logprobs or 0 for row in rows), default=0)
    if max_k > 0:
        values, indices = raw_logprobs.topk(max_k, dim=-1)
        values_l, indices_l = values.tolist(), indices.tolist()
        for i, row in enumerate(rows):
            k = row.params.logprobs or 0
            top_ids[i], top_lps[i] = indices_l[i][:k], values_l[i][:k]
    return SamplerOutput(
        token_ids, chosen_lp.squeeze(1).tolist(), ranks.tolist(), top_ids, top_lps, raw_logprobs
    )


def _apply_penalties(logits: torch.Tensor, row: SamplingRow) -> None:
    p = row.params
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(
            sorted(set(row.prompt_token_ids) | set(row.output_token_ids)), device=logits.device
        )
        seen = seen[seen < logits.shape[0]]
        values = logits[seen]
        logits[seen] = torch.where(
            values > 0, values / p.repetition_penalty, values * p.repetition_penalty
        )
    if (p.presence_penalty or p.frequency_penalty) and row.output_token_ids:
        counts = torch.bincount(torch.tensor(row.output_token_ids), minlength=logits.shape[0])[
            : logits.shape[0]
        ].to(logits.dtype)
        logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)


def _apply_logit_bias(logits: torch.Tensor, bias: dict[int, float]) -> None:
    # Token ids were checked against the vocabulary when the request was accepted.
    ids = torch.tensor(list(bias), dtype=torch.long, device=logits.device)
    values = torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device)
    logits.index_add_(0, ids, values)


def _choose(logits: torch.Tensor, rows: list[SamplingRow]) -> list[int]:
    greedy = logits.argmax(dim=-1).tolist()
    out = []
    for i, row in enumerate(rows):
        if row.params.greedy:
            out.append(greedy[i])
        else:
            # Per-request generators live on the CPU, so a sampled row is drawn there: the
            # same seed gives the same tokens on every device.
            out.append(_sample_row(logits[i].cpu(), row.params, row.generator))
    return out


def _sample_row(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> int:
    logits = logits / p.temperature
    if p.top_k > 0 and p.top_k < logits.shape[0]:
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        cumulative = sorted_probs.cumsum(0)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop_sorted = (cumulative - sorted_probs) >= p.top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
    if p.min_p > 0.0:
        probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
    if not torch.isfinite(probs).all() or probs.sum() <= 0:
        # Everything masked out (cannot happen with a sound grammar); fall back to argmax.
        return int(logits.argmax())
    # Exponential-race sampling: argmax(p / E) with E ~ Exp(1) draws from p exactly and lets
    # each row use its own generator.
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return int((probs / noise).argmax())
