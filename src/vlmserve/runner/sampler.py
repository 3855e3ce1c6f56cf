"""Turns a batch of logits into next tokens (and logprobs) under each row's parameters.

Order of operations, per row: raw logprobs are taken first (what the model said, as vLLM
reports them); then penalties and logit_bias apply, min_tokens blocks the stop tokens, the
grammar mask applies (last, so no bias can let a masked token through), and finally greedy
argmax or temperature / top-k / top-p / min-p sampling with the row's own generator (so a
seeded request is reproducible whatever it is batched with).

Grammar masks are applied only where they change the pick. A greedy row picks its argmax
and a temperature-only row its exponential race (argmax of p / E) on the unmasked logits
first; when the grammar allows that token (checked in microseconds, `GrammarMasks`), the
pick stands: the unmasked winner is then also the winner among the allowed tokens, so the
masked pick would be the same token — for the race, with the same draw E. Only the rows
whose pick fails, and the top-k / top-p / min-p rows (their filters depend on the masked
distribution), get their masks filled (in parallel) and applied, and pick again; a race
picks again with the same E, so it draws exactly as if masked first (and a seeded request
gives the same tokens). Logits are read in place: only rows that penalties, min_tokens or a
mask change are copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

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


class RowMasks(Protocol):
    """Grammar masks by logits row (`vlmserve.structured.batch.GrammarMasks`)."""

    @property
    def rows(self) -> list[int]: ...

    def surely_allows(self, row: int, token_id: int) -> bool: ...

    def fill(self, rows: list[int]) -> torch.Tensor: ...


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


@dataclass
class _Race:
    """A temperature-only row's first pick: its draw E, and the generator state before it
    (a masked pick that finds nothing to draw from must leave the generator untouched)."""

    noise: torch.Tensor
    state: torch.Tensor


def sample(
    logits: torch.Tensor, rows: list[SamplingRow], masks: RowMasks | None = None
) -> SamplerOutput:
    """`masks`: the grammar masks of the constrained rows; the other rows are unconstrained."""
    scores = logits.float()  # no copy when the runner's logits are float32 already
    # Logprobs cost a full-vocabulary pass per row: only when some row asked for them.
    want_logprobs = any(row.params.logprobs is not None for row in rows)
    raw_logprobs = torch.log_softmax(scores, dim=-1) if want_logprobs else None
    edited = {i: _edited(scores[i], row) for i, row in enumerate(rows) if _edits(row)}
    constrained = masks.rows if masks is not None else []
    # Rows whose pick must come from masked logits: only greedy and temperature-only picks
    # can be checked after the fact.
    mask_first = [i for i in constrained if not _checkable(rows[i])]
    token_ids = [0] * len(rows)
    races: dict[int, _Race] = {}
    first = set(range(len(rows))) - set(mask_first)
    greedy = _argmax(scores).tolist() if first else []
    for i in sorted(first):
        row_scores = edited.get(i)
        if rows[i].params.greedy:
            token_ids[i] = greedy[i] if row_scores is None else int(_argmax(row_scores))
            continue
        row_scores = scores[i] if row_scores is None else row_scores
        generator = rows[i].generator
        state = generator.get_state() if i in constrained and generator is not None else None
        token_ids[i], noise = _sample_row(row_scores.cpu(), rows[i].params, generator)
        if state is not None and noise is not None:
            races[i] = _Race(noise, state)
    missed = mask_first + [
        i
        for i in constrained
        if i in first and not (masks is not None and masks.surely_allows(i, token_ids[i]))
    ]
    if missed and masks is not None:
        _pick_masked(scores, edited, rows, masks, sorted(missed), races, token_ids)
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


def _pick_masked(
    scores: torch.Tensor,
    edited: dict[int, torch.Tensor],
    rows: list[SamplingRow],
    masks: RowMasks,
    missed: list[int],
    races: dict[int, _Race],
    token_ids: list[int],
) -> None:
    """Fill and apply the masks of `missed` rows (copies of their logits) and pick again."""
    index = torch.tensor(missed, device=scores.device)
    masked = scores.index_select(0, index)
    for k, i in enumerate(missed):
        if i in edited:
            masked[k] = edited[i]
    apply_token_bitmask(masked, masks.fill(missed))
    greedy = _argmax(masked).tolist()
    for k, i in enumerate(missed):
        p = rows[i].params
        if p.greedy:
            token_ids[i] = greedy[k]
            continue
        race = races.get(i)
        generator = rows[i].generator
        token, noise = _sample_row(
            masked[k].cpu(), p, generator, None if race is None else race.noise
        )
        if noise is None and race is not None and generator is not None:
            generator.set_state(race.state)  # nothing to draw from: as if never drawn
        token_ids[i] = token


def _argmax(values: torch.Tensor) -> torch.Tensor:
    """Index of the first maximum along the last dimension, as `argmax`: torch's `max`
    reduction computes the same index ~5x faster than `argmax` on CPU (measured, fp32,
    152k columns)."""
    return values.max(dim=-1).indices


def _checkable(row: SamplingRow) -> bool:
    p = row.params
    temperature_only = p.top_k <= 0 and p.top_p >= 1.0 and p.min_p <= 0.0
    return p.greedy or (temperature_only and row.generator is not None)


def _edits(row: SamplingRow) -> bool:
    p = row.params
    return bool(
        row.blocked_token_ids
        or p.logit_bias
        or p.repetition_penalty != 1.0
        or ((p.presence_penalty or p.frequency_penalty) and row.output_token_ids)
    )


def _edited(logits: torch.Tensor, row: SamplingRow) -> torch.Tensor:
    """A copy of one row's logits with penalties, logit_bias and min_tokens blocking applied."""
    logits = logits.clone()
    _apply_penalties(logits, row)
    if row.params.logit_bias:
        _apply_logit_bias(logits, row.params.logit_bias)
    if row.blocked_token_ids:
        logits[row.blocked_token_ids] = float("-inf")
    return logits


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


def _sample_row(
    logits: torch.Tensor,
    p: SamplingParams,
    generator: torch.Generator | None,
    noise: torch.Tensor | None = None,
) -> tuple[int, torch.Tensor | None]:
    """One sampled token (per-request generators live on the CPU, so a sampled row is drawn
    there: the same seed gives the same tokens on every device), and the draw it used (None
    when nothing was drawn). `noise`: reuse an earlier draw instead of drawing."""
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
        return int(_argmax(logits)), None
    # Exponential-race sampling: argmax(p / E) with E ~ Exp(1) draws from p exactly and lets
    # each row use its own generator.
    if noise is None:
        noise = torch.empty_like(probs).exponential_(generator=generator)
    return int(_argmax(probs / noise)), noise


def _apply_logit_bias(logits: torch.Tensor, bias: dict[int, float]) -> None:
    # Token ids were checked against the vocabulary when the request was accepted.
    ids = torch.tensor(list(bias), dtype=torch.long, device=logits.device)
    values = torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device)
    logits.index_add_(0, ids, values)
