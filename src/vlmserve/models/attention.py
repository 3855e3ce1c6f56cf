"""Paged attention: the contract between the model runner and the decoder layers.

The runner flattens a batch of sequences into T new tokens and describes it with
`AttentionMetadata`; each decoder layer calls `paged_attention`, which writes the new keys
and values into the layer's paged cache and attends over each sequence's whole context.

Cache layout per layer: `[2, num_kv_heads, num_blocks, block_size, head_dim]` (0 = K, 1 = V;
`kv_cache_shape`). KV heads come first so that gathering a batch's blocks yields
`[heads, batch, tokens, head_dim]`, which the attention matmuls read as it is: one copy of
each context per layer, no re-layout. Block 0 is never handed to a sequence (the block
manager reserves it), so padded block-table entries can point at it harmlessly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlmserve.models import native
from vlmserve.models.buckets import bucket


def kv_cache_shape(
    num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int
) -> tuple[int, ...]:
    """One layer's paged KV cache."""
    return (2, num_kv_heads, num_blocks, block_size, head_dim)


@dataclass
class AttentionMetadata:
    """A flattened batch: sequence i contributes `query_lens[i]` new tokens, which are the
    last tokens of its `context_lens[i]`-token context."""

    query_lens: list[int]
    context_lens: list[int]
    slot_mapping: torch.Tensor  # [T] int64: block_id * block_size + offset of each new token
    block_tables: torch.Tensor  # [B, max_blocks] int64, padded with 0
    block_size: int

    @property
    def all_decode(self) -> bool:
        return all(q == 1 for q in self.query_lens)

    @functools.cached_property
    def token_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per new token: its sequence (row of `block_tables`) and how many tokens it sees
        (its position + 1), as int64 tensors. Computed once per step, shared by all layers."""
        device = self.slot_mapping.device
        if self.all_decode:
            rows = torch.arange(len(self.query_lens), device=device)
            return rows, torch.tensor(self.context_lens, device=device)
        counts = torch.tensor(self.query_lens, device=device)
        rows = torch.repeat_interleave(torch.arange(len(self.query_lens), device=device), counts)
        # Token j (from 0) of a row with q new tokens and c in all sees c - q + j + 1.
        starts = torch.cumsum(counts, 0) - counts
        within = torch.arange(int(counts.sum()), device=device) - starts[rows]
        ends = torch.tensor(self.context_lens, device=device) - counts
        return rows, ends[rows] + within + 1


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
    """k, v: [T, Hkv, D] into the slots (block * block_size + offset) of the paged cache."""
    flat = kv_cache.view(2, kv_cache.shape[1], -1, kv_cache.shape[-1])  # [2, Hkv, slots, D]
    flat[0].index_copy_(1, slots, k.to(kv_cache.dtype).transpose(0, 1))
    flat[1].index_copy_(1, slots, v.to(kv_cache.dtype).transpose(0, 1))


def _gather_context(
    kv_cache: torch.Tensor, block_table: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of one sequence's first `length` tokens: [length, Hkv, D] each (views)."""
    block_size = kv_cache.shape[3]
    num_blocks = (length + block_size - 1) // block_size
    flat = kv_cache.view(2 * kv_cache.shape[1], kv_cache.shape[2], -1)  # [2 * Hkv, N, bs * D]
    blocks = flat.index_select(1, block_table[:num_blocks])
    blocks = blocks.view(2, kv_cache.shape[1], -1, kv_cache.shape[4])[:, :, :length]
    return blocks[0].transpose(0, 1), blocks[1].transpose(0, 1)


# Rows with at most this many new tokens (decodes, tokens a grammar forced) attend in one
# batched call, one query row per token; longer ones (prompt chunks) one by one, where
# gathering their context once per token would cost more than the separate call.
MAX_BATCHED_QUERY_TOKENS = 16


def paged_attention(
    q: torch.Tensor,  # [T, Hq, D]
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Causal attention of the new tokens over their sequences' cached context: [T, Hq, D].

    Every new token of a short row (a decode, or the few tokens a grammar forced) is a query
    row of its own over its sequence's context up to itself, and all of them attend in one
    batched call; prompt chunks attend one by one. Under jump-ahead most steps mix the two
    kinds, so they are split rather than falling back to one by one."""
    write_kv(kv_cache, k, v, meta.slot_mapping)
    if q.device.type == "cpu":
        # Our kernel (models/native.py): every token over its context, read in place, the
        # same arithmetic whichever step or chunk the token came in. The torch paths below
        # stay for other devices and machines where it cannot be built.
        rows, lens = meta.token_rows
        out = native.paged_attention(q, kv_cache, meta.block_tables, rows, lens, scale)
        if out is not None:
            return out
    if meta.all_decode:
        return _decode_attention(q, kv_cache, meta.context_lens, meta.block_tables, scale)
    out = torch.empty_like(q)
    batched_tokens: list[int] = []
    batched_rows: list[int] = []
    batched_lens: list[int] = []
    start = 0
    for i, (q_len, ctx_len) in enumerate(zip(meta.query_lens, meta.context_lens, strict=True)):
        span = slice(start, start + q_len)
        if q_len <= MAX_BATCHED_QUERY_TOKENS and (q_len < ctx_len or q_len == 1):
            # Token j of the row sees the context up to itself.
            batched_tokens.extend(range(start, start + q_len))
            batched_rows.extend([i] * q_len)
            batched_lens.extend(range(ctx_len - q_len + 1, ctx_len + 1))
        elif q_len == ctx_len:
            # Whole prompt in this step: the new keys are the context, no gather needed.
            out[span] = dense_attention(q[span], k[span], v[span], scale, causal=True)
        else:
            ki, vi = _gather_context(kv_cache, meta.block_tables[i], ctx_len)
            out[span] = dense_attention(q[span], ki.to(q.dtype), vi.to(q.dtype), scale, True)
        start += q_len
    if batched_tokens:
        index = torch.tensor(batched_tokens, device=q.device)
        out[index] = _decode_attention(
            q[index],
            kv_cache,
            batched_lens,
            meta.block_tables[torch.tensor(batched_rows, device=q.device)],
            scale,
        )
    return out


# Above this many attention scores per call, the written-out path's [H, Lq, Lk] score matrix
# costs more memory than SDPA's blocked kernels save; below it, it is faster on CPU.
MATMUL_ATTENTION_MAX_SCORES = 1 << 22


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool
) -> torch.Tensor:
    """q: [Lq, Hq, D]; k, v: [Lk, Hkv, D]. With `causal`, the queries are the last Lq
    positions of the Lk-long context. Returns [Lq, Hq, D].

    On CPU, short sequences (vision items, prompt chunks) run as two grouped matmuls: CPU
    SDPA took 1.3-2.8x longer on these shapes (measured, fp32 and bf16), and the matmuls never
    materialise repeated KV heads."""
    q_len, num_heads, head_dim = q.shape
    k_len, num_kv_heads = k.shape[0], k.shape[1]
    qt, kt, vt = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    if q.device.type != "cpu" or num_heads * q_len * k_len > MATMUL_ATTENTION_MAX_SCORES:
        return _sdpa(qt, kt, vt, scale, causal).transpose(0, 1)
    group = num_heads // num_kv_heads
    # Query head h reads KV head h // group, as transformers' repeat_kv lays them out.
    grouped = qt.reshape(num_kv_heads, group * q_len, head_dim)
    scores = torch.matmul(grouped, kt.transpose(1, 2)).float() * scale
    if causal:
        # Query row r sits at context position k_len - q_len + r and sees keys up to it.
        future = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).triu(k_len - q_len + 1)
        scores.view(num_kv_heads, group, q_len, k_len).masked_fill_(future, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    out = torch.matmul(probs, vt).view(num_heads, q_len, head_dim)
    return out.transpose(0, 1)


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool
) -> torch.Tensor:
    q_len, k_len = q.shape[1], k.shape[1]
    if not causal or q_len == k_len:
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=scale, enable_gqa=True
        )
    rows = torch.arange(q_len, device=q.device).unsqueeze(1) + (k_len - q_len)
    mask = torch.arange(k_len, device=q.device).unsqueeze(0) <= rows
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)


def _decode_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    context_lens: list[int],
    block_tables: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query per row over that row's first `context_lens[i]` cached tokens: [B, Hq, D].

    The rows' blocks are gathered once into [Hkv, B, L, D] (the cache layout makes that the
    matmuls' layout: no further copy), padded to the longest context and masked. Written out
    rather than through SDPA: with a padding mask and grouped KV heads, CPU SDPA takes a slow
    path (16x slower in bf16 at batch 16, measured); the grouped matmuls also never
    materialise repeated KV heads."""
    rows, num_heads, head_dim = q.shape
    num_kv_heads, block_size = kv_cache.shape[1], kv_cache.shape[3]
    num_blocks = (max(context_lens) + block_size - 1) // block_size
    batch = rows
    if q.device.type == "cpu":
        # Few distinct batch sizes and lengths, so oneDNN reuses its compiled kernels
        # (models/buckets.py): the extra blocks are block 0, masked like any other padding;
        # the extra rows are zero queries over one token of block 0, dropped at the end.
        batch, num_blocks = bucket(rows), bucket(num_blocks)
        missing_blocks = max(0, num_blocks - block_tables.shape[1])
        if missing_blocks or batch > rows:
            block_tables = F.pad(block_tables, (0, missing_blocks, 0, batch - rows))
        if batch > rows:
            q = F.pad(q, (0, 0, 0, 0, 0, batch - rows))
            context_lens = [*context_lens, *[1] * (batch - rows)]
    # Whole blocks, not cut at the longest context: K and V stay contiguous, which CPU bmm
    # needs to run without copying them again (2-4x faster on tiny shapes, measured); the
    # tail past each row's length is masked like any other padding.
    padded = num_blocks * block_size
    blocks = block_tables[:, :num_blocks].flatten()  # [B * nb]
    # [2 * Hkv, N, bs * D] -> [2 * Hkv, B * nb, bs * D] -> K, V as [Hkv * B, L, D].
    # index_select, not advanced indexing: the same copy, 2.7x faster on CPU (measured).
    ctx = kv_cache.view(2 * num_kv_heads, kv_cache.shape[2], -1).index_select(1, blocks)
    ctx = ctx.view(2, num_kv_heads * batch, padded, head_dim)
    keys, values = ctx[0].to(q.dtype), ctx[1].to(q.dtype)
    # Query head h reads KV head h // group, as transformers' repeat_kv lays them out.
    group = num_heads // num_kv_heads
    grouped = q.view(batch, num_kv_heads, group, head_dim).transpose(0, 1)
    grouped = grouped.reshape(num_kv_heads * batch, group, head_dim)
    scores = torch.bmm(grouped, keys.transpose(1, 2)).float() * scale  # [Hkv * B, G, L]
    lens = torch.tensor(context_lens, device=q.device)
    padding = torch.arange(padded, device=q.device).unsqueeze(0) >= lens.unsqueeze(1)
    scores.view(num_kv_heads, batch, group, padded).masked_fill_(
        padding[None, :, None, :], float("-inf")
    )
    probs = torch.softmax(scores, dim=-1).to(values.dtype)
    out = torch.bmm(probs, values).view(num_kv_heads, batch, group, head_dim)
    return out.transpose(0, 1).reshape(batch, num_heads, head_dim)[:rows]
