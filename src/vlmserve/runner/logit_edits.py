"""Per-row logit edits that come before a grammar mask: repetition, presence and frequency
penalties, logit_bias, and min_tokens' blocked stop tokens. Each edit works on a copy of
its row: the runner's logits are read in place by every other row."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from vlmserve.runner.sampler import SamplingRow


def edits(row: SamplingRow) -> bool:
    """Whether the row's logits need `edited` before they are picked from."""
    p = row.params
    return bool(
        row.blocked_token_ids
        or p.logit_bias
        or p.repetition_penalty != 1.0
        or ((p.presence_penalty or p.frequency_penalty) and row.output_token_ids)
    )


def edited(logits: torch.Tensor, row: SamplingRow) -> torch.Tensor:
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


def _apply_logit_bias(logits: torch.Tensor, bias: dict[int, float]) -> None:
    # Token ids were checked against the vocabulary when the request was accepted.
    ids = torch.tensor(list(bias), dtype=torch.long, device=logits.device)
    values = torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device)
    logits.index_add_(0, ids, values)
