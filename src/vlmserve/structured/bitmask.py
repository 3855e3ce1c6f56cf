"""Token bitmasks in llguidance's layout (int32 words, bit i of word w = token 32*w + i),
and applying them to logits in plain torch (no torch.compile: its first call costs ~18 s)."""

from __future__ import annotations

import torch

_BIT_SHIFTS = torch.arange(32, dtype=torch.int32)


def allocate_bitmask(batch: int, vocab_size: int) -> torch.Tensor:
    """All-allowed masks for `batch` rows; rows not filled by a grammar stay unconstrained."""
    return torch.full((batch, (vocab_size + 31) // 32), -1, dtype=torch.int32)


def apply_token_bitmask(
    logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int] | None = None
) -> None:
    """Set disallowed logits to -inf in place. `rows`: which logits rows have a grammar (and
    use the bitmask row of the same index); None means every row."""
    if logits.dim() != 2 or bitmask.dim() != 2 or bitmask.dtype != torch.int32:
        raise ValueError("expected logits [B, V] and an int32 bitmask [B, W]")
    vocab = logits.shape[1]
    if bitmask.shape[1] * 32 < vocab:
        raise ValueError(f"bitmask covers {bitmask.shape[1] * 32} tokens, logits have {vocab}")
    index = None if rows is None else torch.tensor(rows, dtype=torch.long)
    words = bitmask if index is None else bitmask.index_select(0, index)
    if words.device != logits.device:
        words = words.to(logits.device, non_blocking=True)
    # [R, W, 1] >> [32] -> [R, W, 32] bits, flattened to token order and cut to the vocab.
    shifts = _BIT_SHIFTS.to(words.device)
    allowed = ((words.unsqueeze(-1) >> shifts) & 1).flatten(1)[:, :vocab].bool()
    if index is None:
        logits.masked_fill_(~allowed, float("-inf"))
    else:
        target = index.to(logits.device)
        logits[target] = logits[target].masked_fill(~allowed, float("-inf"))
