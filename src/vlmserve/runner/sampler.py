"""Turns a batch of logits into next tokens (and logprobs) under each row's parameters.

Order of operations, per row: raw logprobs are taken first (what the model said, as vLLM
reports them); then penalties and logit_bias apply, min_tokens blocks the stop tokens, the
grammar mask applies (last, so no bias can let a masked token through), and finally greedy
argmax or temperature / top-k / top-p / min-p sampling with the row's own generator (so a
seeded request is reproducible whatever it is batched with).

Picks run where the logits are (CPU or CUDA), batched: one argmax for the greedy rows, one
set of tensor ops for the sampled rows (each row with its own temperature, top-k, top-p,
min-p), the token ids coming back to the host once per pass. Sampling is an exponential
race, argmax(p / E) with E ~ Exp(1), and every row's E comes from its own generator on the
CPU, so a seed draws the same E on every device.

Grammar masks are applied only where they change the pick. A greedy row picks its argmax
and a temperature-only row its race on the unmasked logits first; when the grammar allows
that token (checked in microseconds, `GrammarMasks`), the pick stands: the unmasked winner
is then also the winner among the allowed tokens, so the masked pick would be the same
token — for the race, with the same draw E. Only the rows whose pick fails, and the
top-k / top-p / min-p rows (their filters depend on the masked distribution), get their
masks filled (in parallel) and applied, and pick again; a race picks again with the same E,
so it draws exactly as if masked first (and a seeded request gives the same tokens).
Logits are read in place: only rows that penalties, min_tokens or a mask change are copied.

A greedy row whose pick fails first walks down its logits (`_walk`): the winner is set
aside when the grammar surely forbids it and the next argmax is checked, a few times; the
first token the grammar surely allows is the masked argmax exactly (everything above it, or
equal with a lower id, was forbidden), with no mask filled. Rows the walk cannot settle
(a token it cannot tell about, or too many forbidden) are masked as above; a greedy one
whose mask allows few tokens picks among those alone (`_sparse_argmax`), the same token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from vlmserve.runner import logit_edits
from vlmserve.structured import apply_token_bitmask
from vlmserve.structured.bitmask import sparse_token_ids
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

    def worth_walking(self, row: int) -> bool: ...

    def surely_forbids(self, row: int, token_id: int) -> bool: ...

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
class _Draws:
    """The exponential draws E of a batch of sampled rows (None: the row drew nothing), and
    each generator's state before them (a pick that must not have drawn rewinds to it)."""

    noise: list[torch.Tensor | None]
    states: list[torch.Tensor | None]


def sample(
    logits: torch.Tensor, rows: list[SamplingRow], masks: RowMasks | None = None
) -> SamplerOutput:
    """`masks`: the grammar masks of the constrained rows; the other rows are unconstrained.
    Works where the logits are: greedy and sampled rows are picked in batched tensor ops
    (on CUDA too), the token ids come back to the host once per pass."""
    scores = logits.float()  # no copy when the runner's logits are float32 already
    # Logprobs cost a full-vocabulary pass per row: only when some row asked for them.
    want_logprobs = any(row.params.logprobs is not None for row in rows)
    raw_logprobs = torch.log_softmax(scores, dim=-1) if want_logprobs else None
    edited = {
        i: logit_edits.edited(scores[i], row)
        for i, row in enumerate(rows)
        if logit_edits.edits(row)
    }
    constrained = masks.rows if masks is not None else []
    # Rows whose pick must come from masked logits: only greedy and temperature-only picks
    # can be checked after the fact.
    mask_first = {i for i in constrained if not _checkable(rows[i])}
    first = [i for i in range(len(rows)) if i not in mask_first]
    token_ids = [0] * len(rows)
    draws = _Draws([None] * len(rows), [None] * len(rows))
    if first:
        checked = set(constrained)
        picks, first_draws = _pick(scores, first, edited, rows, None, keep_draws=checked)
        for k, i in enumerate(first):
            token_ids[i] = picks[k]
            draws.noise[i], draws.states[i] = first_draws.noise[k], first_draws.states[k]
    missed = sorted(
        mask_first
        | {
            i
            for i in constrained
            if i not in mask_first
            and not (masks is not None and masks.surely_allows(i, token_ids[i]))
        }
    )
    if missed and masks is not None:
        walked = _walk(scores, edited, [i for i in missed if rows[i].params.greedy], masks)
        for i, token in walked.items():
            token_ids[i] = token
        missed = [i for i in missed if i not in walked]
    if missed and masks is not None:
        _pick_masked(scores, edited, rows, missed, masks.fill(missed), draws, token_ids)
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
    missed: list[int],
    bitmask: torch.Tensor,
    draws: _Draws,
    token_ids: list[int],
) -> None:
    """Pick rows `missed` again under their masks (row k of `bitmask` for `missed[k]`) into
    `token_ids`, which holds their unmasked picks. Greedy rows with a sparse mask take the
    best of their allowed tokens; the others are masked whole (copies), a race picking
    again with the draw it made."""
    left, masks_left = [], []
    for k, i in enumerate(missed):
        values = edited.get(i, scores[i])
        token = _sparse_argmax(values, bitmask[k], token_ids[i]) if rows[i].params.greedy else None
        if token is not None:
            token_ids[i] = token
        else:
            left.append(i)
            masks_left.append(k)
    if not left:
        return
    masked = scores.index_select(0, torch.tensor(left, device=scores.device))
    for k, i in enumerate(left):
        if i in edited:
            masked[k] = edited[i]
    apply_token_bitmask(masked, bitmask[masks_left])
    reuse = _Draws([draws.noise[i] for i in left], [draws.states[i] for i in left])
    picks, _ = _pick(masked, list(range(len(left))), {}, [rows[i] for i in left], reuse)
    for k, i in enumerate(left):
        token_ids[i] = picks[k]


def _pick(
    scores: torch.Tensor,
    which: list[int],
    edited: dict[int, torch.Tensor],
    rows: list[SamplingRow],
    reuse: _Draws | None,
    keep_draws: set[int] | None = None,
) -> tuple[list[int], _Draws]:
    """Tokens for rows `which` of `scores` (`edited[i]` instead of row i where given):
    greedy rows from one batched argmax, sampled ones from one batched race, returned to
    the host together. `reuse`: earlier draws to use instead of drawing (by position in
    `which`); `keep_draws`: rows whose draws (and generator states before them) to return
    for a second pick."""
    picks = _argmax(scores)[torch.tensor(which, device=scores.device)]
    for k, i in enumerate(which):
        if rows[i].params.greedy and i in edited:
            picks[k] = _argmax(edited[i])
    draws = _Draws([None] * len(which), [None] * len(which))
    sampled = [k for k, i in enumerate(which) if not rows[i].params.greedy]
    if sampled:
        values = torch.stack([edited.get(which[k], scores[which[k]]) for k in sampled])
        generators = [rows[which[k]].generator for k in sampled]
        given = [None if reuse is None else reuse.noise[k] for k in sampled]
        keep = [keep_draws is not None and which[k] in keep_draws for k in sampled]
        tokens, noise, states = _race(
            values, [rows[which[k]].params for k in sampled], generators, given, keep
        )
        picks[torch.tensor(sampled, device=scores.device)] = tokens
        for j, k in enumerate(sampled):
            if keep[j]:
                draws.noise[k], draws.states[k] = noise[j], states[j]
            state = None if reuse is None else reuse.states[k]
            generator = generators[j]
            if noise[j] is None and state is not None and generator is not None:
                generator.set_state(state)  # nothing to draw from: as if never drawn
    return picks.tolist(), draws


# Argmaxes a greedy row may take walking past forbidden winners before it fills its mask
# instead (an argmax at 152k columns costs about what applying a mask does; filling one
# costs several times that).
WALK_STEPS = 4


def _walk(
    scores: torch.Tensor, edited: dict[int, torch.Tensor], which: list[int], masks: RowMasks
) -> dict[int, int]:
    """Masked greedy picks of rows `which` found without filling masks, where the walk
    settles them: {row: token}. Each row's logits are set aside token by token (-inf, then
    restored), so argmax's first-maximum rule decides ties exactly as over masked logits."""
    found: dict[int, int] = {}
    # The runner's logits are inference tensors: edited in place only in inference mode.
    with torch.inference_mode():
        for i in which:
            if not masks.worth_walking(i):
                continue  # the walk would end at its mask, or the mask costs a copy
            token = _walk_row(edited[i] if i in edited else scores[i], i, masks)
            if token is not None:
                found[i] = token
    return found


def _walk_row(values: torch.Tensor, row: int, masks: RowMasks) -> int | None:
    hidden: list[tuple[int, float]] = []
    token = int(_argmax(values))
    found = None
    for _ in range(WALK_STEPS):
        if masks.surely_allows(row, token):
            found = token
            break
        if not masks.surely_forbids(row, token):
            break  # cannot tell without the mask
        hidden.append((token, float(values[token])))
        values[token] = float("-inf")
        token = int(_argmax(values))
    for token_id, value in hidden:
        values[token_id] = value
    return found


def _race(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    given: list[torch.Tensor | None],
    keep_state: list[bool],
) -> tuple[torch.Tensor, list[torch.Tensor | None], list[torch.Tensor | None]]:
    """Sampled tokens [R] (on the logits' device) for R rows: temperature, then top-k, top-p
    and min-p, each row with its own parameters, batched. Exponential race: argmax(p / E)
    with E ~ Exp(1) draws from p exactly, and each row's E comes from its own generator on
    the CPU (so the same seed gives the same draw on every device), moved to the device in
    one copy. `given`: a row's E from an earlier pick, reused instead of drawing. Returns
    the tokens, each row's E (None where nothing was left to draw from: argmax stands in,
    and nothing is drawn) and, where `keep_state`, its generator's state before drawing."""
    device, vocab = logits.device, logits.shape[1]
    scaled = logits / torch.tensor([p.temperature for p in params], device=device).unsqueeze(1)
    top_k = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
    if any(top_k):
        # The k-th largest logit of each row (rows without top-k keep everything).
        kth = scaled.topk(max(top_k), dim=-1).values
        index = torch.tensor([max(k, 1) - 1 for k in top_k], device=device).unsqueeze(1)
        threshold = kth.gather(1, index).squeeze(1)
        threshold[torch.tensor([k == 0 for k in top_k], device=device)] = float("-inf")
        scaled = scaled.masked_fill(scaled < threshold.unsqueeze(1), float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    top_p = [p.top_p for p in params]
    if any(p < 1.0 for p in top_p):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        cumulative = sorted_probs.cumsum(-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        limit = torch.tensor(top_p, device=device).unsqueeze(1)
        drop_sorted = ((cumulative - sorted_probs) >= limit) & (limit < 1.0)
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
    min_p = [p.min_p for p in params]
    if any(p > 0.0 for p in min_p):
        floor = torch.tensor(min_p, device=device).unsqueeze(1)
        probs = probs.masked_fill(probs < floor * probs.max(dim=-1, keepdim=True).values, 0.0)
    # Everything masked out (cannot happen with a sound grammar): argmax stands in.
    empty = (~torch.isfinite(probs).all(dim=-1) | (probs.sum(dim=-1) <= 0)).tolist()
    noise: list[torch.Tensor | None] = []
    states: list[torch.Tensor | None] = []
    for row, generator in enumerate(generators):
        keep = keep_state[row] and generator is not None
        states.append(generator.get_state() if keep and generator is not None else None)
        if empty[row]:
            noise.append(None)
        elif given[row] is not None:
            noise.append(given[row])
        else:
            noise.append(torch.empty(vocab).exponential_(generator=generator))
    drawn = torch.stack([e if e is not None else torch.ones(vocab) for e in noise])
    race = probs / drawn.to(device, non_blocking=True)
    fallback = torch.tensor(empty, device=device)
    return torch.where(fallback, _argmax(scaled), _argmax(race)), noise, states


# Nonzero mask words up to which a greedy row's masked pick gathers its allowed tokens instead
# of masking the whole row: past JSON strings and near a string's maxLength a 152k-token mask
# allows a few tokens (a few words), and gathering them costs ~12 us where masking a row
# costs ~120 us (measured); with thousands of scattered tokens both cost about the same.
SPARSE_MASK_WORDS = 64


def _sparse_argmax(values: torch.Tensor, words: torch.Tensor, first: int) -> int | None:
    """The masked greedy pick of a row (`values`, fp32) whose mask (`words`) allows few
    tokens, found among those tokens alone; None where the whole masked row is needed: a
    dense mask, logits off the CPU, and where masking is more than -inf on the forbidden
    tokens (NaN or +inf in the row: `first`, the unmasked argmax, then holds one) or where
    no allowed token beats -inf (the masked argmax is then token 0)."""
    if values.device.type != "cpu" or not math.isfinite(float(values[first])):
        return None
    ids = sparse_token_ids(words, SPARSE_MASK_WORDS)
    if ids is None:
        return None
    ids = ids[ids < values.shape[0]]  # ascending: the first maximum wins ties, as in argmax
    allowed = values.numpy()[ids]
    if allowed.size == 0 or allowed.max() == float("-inf"):
        return None
    return int(ids[np.argmax(allowed)])


def _argmax(values: torch.Tensor) -> torch.Tensor:
    """Index of the first maximum along the last dimension, as `argmax` (also for NaN: the
    first NaN). On the CPU numpy's vectorised argmax finds it ~2x faster than torch's `max`
    reduction over a batch and ~15x faster over one cached row (`argmax` is slower still;
    measured, fp32, 152k columns, 1 thread)."""
    if values.device.type != "cpu":
        return values.max(dim=-1).indices
    return torch.as_tensor(np.argmax(values.numpy(), axis=-1))


def _checkable(row: SamplingRow) -> bool:
    p = row.params
    temperature_only = p.top_k <= 0 and p.top_p >= 1.0 and p.min_p <= 0.0
    return p.greedy or (temperature_only and row.generator is not None)
