"""Token bitmasks in llguidance's layout (int32 words, bit i of word w = token 32*w + i),
applying them to logits in plain torch (no torch.compile: its first call costs ~18 s), and
listing the tokens of a sparse one."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F


def allocate_bitmask(batch: int, vocab_size: int) -> torch.Tensor:
    """All-allowed masks for `batch` rows; rows not filled by a grammar stay unconstrained."""
    return torch.full((batch, (vocab_size + 31) // 32), -1, dtype=torch.int32)


@functools.cache
def _byte_penalties(device: torch.device) -> torch.Tensor:
    """[256, 8] float32: for each mask byte, 0 where its bit is set and -inf where not."""
    bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
    table = torch.zeros(256, 8).masked_fill_(bits == 0, float("-inf"))
    return table.to(device)


def apply_token_bitmask(
    logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int] | None = None
) -> None:
    """Set disallowed logits to -inf in place. `rows`: which logits rows have a grammar (and
    use the bitmask row of the same index); None means every row.

    Each mask byte is looked up in a 256-entry table of eight 0/-inf penalties that are
    added to the logits: one gather and one add per row, instead of unpacking the words
    into a boolean mask bit by bit and negating it (~12x faster at a 152k vocabulary on
    CPU, measured). Adding 0 leaves a logit exactly as it was."""
    if logits.dim() != 2 or bitmask.dim() != 2 or bitmask.dtype != torch.int32:
        raise ValueError("expected logits [B, V] and an int32 bitmask [B, W]")
    vocab = logits.shape[1]
    if bitmask.shape[1] * 32 < vocab:
        raise ValueError(f"bitmask covers {bitmask.shape[1] * 32} tokens, logits have {vocab}")
    index = None if rows is None else torch.tensor(rows, dtype=torch.long)
    words = bitmask if index is None else bitmask.index_select(0, index)
    if words.device != logits.device:
        words = words.to(logits.device, non_blocking=True)
    mask_bytes = words.contiguous().view(torch.uint8).long()  # [R, 4W], little-endian bytes
    table = _byte_penalties(logits.device).to(logits.dtype)
    penalties = F.embedding(mask_bytes, table).flatten(1)[:, :vocab]
    if index is None:
        logits.add_(penalties)
    else:
        target = index.to(logits.device)
        logits.index_add_(0, target, penalties)


def sparse_token_ids(words: torch.Tensor, max_words: int) -> np.ndarray | None:
    """The token ids one bitmask row (int32 [W], on the CPU) allows, ascending, when they lie
    in at most `max_words` nonzero words; None for a denser mask (listing it would cost
    more than applying it)."""
    mask = words.numpy()
    nonzero = np.flatnonzero(mask)
    if len(nonzero) > max_words:
        return None
    bits = np.unpackbits(mask[nonzero].view(np.uint8), bitorder="little").reshape(-1, 32)
    ids: np.ndarray = (nonzero[:, None] * 32 + np.arange(32))[bits.view(bool)]
    return ids
