"""Token bitmasks in llguidance's layout (int32 words, bit i of word w = token 32*w + i),
and applying them to logits in plain torch (no torch.compile: its first call costs ~18 s)."""

from __future__ import annotations

import torch

# For every byte value, which of its 8 tokens are disallowed (bit clear). Unpacking a mask
# byte by byte through this table writes the bool mask directly, instead of a 32-wide int32
# intermediate per word (4x the memory traffic at a 152k vocabulary).
_BYTE_BLOCKED = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1) == 0


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
    # Little-endian int32 words viewed as bytes are already in token order (byte k of word w
    # holds tokens 32w + 8k .. 32w + 8k + 7); torch's CPU and CUDA targets are little-endian.
    data = words.contiguous().view(torch.uint8).reshape(words.shape[0], -1)
    blocked = _BYTE_BLOCKED.to(words.device)[data.long()].flatten(1)[:, :vocab]
    if index is None:
        logits.masked_fill_(blocked, float("-inf"))
    else:
        target = index.to(logits.device)
        logits[target] = logits[target].masked_fill(blocked, float("-inf"))
