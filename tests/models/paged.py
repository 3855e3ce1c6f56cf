"""A minimal paged-KV driver for model tests: block tables, slot mapping and
`AttentionMetadata` for a few sequences, the way the engine's runner builds them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmserve.models.attention import AttentionMetadata, kv_cache_shape
from vlmserve.models.base import VLModel


class PagedKV:
    def __init__(self, model: VLModel, num_blocks: int, block_size: int, dtype: torch.dtype):
        c = model.config
        shape = kv_cache_shape(num_blocks, block_size, c.num_key_value_heads, c.head_dim)
        self.caches = [torch.zeros(shape, dtype=dtype) for _ in range(c.num_hidden_layers)]
        self.block_size = block_size
        self.next_block = 1  # block 0 is reserved, as in the block manager

    def allocate(self, num_tokens: int) -> list[int]:
        count = -(-num_tokens // self.block_size)
        blocks = list(range(self.next_block, self.next_block + count))
        self.next_block += count
        return blocks


@dataclass
class Chunk:
    token_ids: list[int]
    positions: torch.Tensor  # [3, len(token_ids)]
    start: int  # tokens of this sequence already in the cache
    block_table: list[int]
    mm_embeds: torch.Tensor | None = None  # rows for this chunk's placeholder tokens


def run(model: VLModel, kv: PagedKV, chunks: list[Chunk]) -> torch.Tensor:
    """One forward step over `chunks`; float32 logits of every new token."""
    bs = kv.block_size
    slots = [
        c.block_table[p // bs] * bs + p % bs
        for c in chunks
        for p in range(c.start, c.start + len(c.token_ids))
    ]
    tables = torch.zeros(len(chunks), max(len(c.block_table) for c in chunks), dtype=torch.long)
    for i, c in enumerate(chunks):
        tables[i, : len(c.block_table)] = torch.tensor(c.block_table)
    meta = AttentionMetadata(
        query_lens=[len(c.token_ids) for c in chunks],
        context_lens=[c.start + len(c.token_ids) for c in chunks],
        slot_mapping=torch.tensor(slots, dtype=torch.long),
        block_tables=tables,
        block_size=bs,
    )
    ids = torch.tensor([t for c in chunks for t in c.token_ids], dtype=torch.long)
    placeholders = torch.tensor([model.config.image_token_id, model.config.video_token_id])
    rows = [c.mm_embeds for c in chunks if c.mm_embeds is not None]
    mm_embeds = torch.cat(rows) if rows else None
    mm_mask = torch.isin(ids, placeholders) if rows else None
    positions = torch.cat([c.positions for c in chunks], dim=1)
    with torch.inference_mode():
        hidden = model.forward(ids, positions, kv.caches, meta, mm_embeds, mm_mask)
        return model.compute_logits(hidden)
