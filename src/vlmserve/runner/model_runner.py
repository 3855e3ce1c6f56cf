"""Runs the model on one scheduled step: owns the weights' device, the paged KV cache, and the
flattening of per-sequence chunks into the tensors the model takes.

The runner knows nothing of requests or scheduling: the engine hands it `SeqChunk`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vlmserve.models import native
from vlmserve.models.attention import AttentionMetadata, kv_cache_shape
from vlmserve.models.base import VLModel
from vlmserve.models.decoder import fuse_projections
from vlmserve.models.layers import prepack_linears
from vlmserve.models.quantize import check_quantization, quantize_linears
from vlmserve.models.rows import align_linear_rows


@dataclass
class MMSlice:
    """Rows [row_start, row_end) of an item's embeddings, placed from chunk token `at` on."""

    embeddings: torch.Tensor
    row_start: int
    row_end: int
    at: int


@dataclass
class SeqChunk:
    token_ids: list[int]  # the new tokens computed this step
    positions: torch.Tensor  # [3, len(token_ids)]
    start: int  # tokens already in the cache before this chunk
    block_table: list[int]
    needs_logits: bool  # the chunk ends at the sequence's last token
    mm: list[MMSlice] = field(default_factory=list)
    # Scoring: the logits of every position of the chunk from this absolute one on (one row
    # each), instead of the last token's.
    logits_from: int | None = None


def kv_block_bytes(model: VLModel, block_size: int, dtype: torch.dtype) -> int:
    c = model.config
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim
    return per_token * block_size * torch.tensor([], dtype=dtype).element_size()


class ModelRunner:
    def __init__(
        self,
        model: VLModel,
        device: torch.device,
        dtype: torch.dtype,
        num_blocks: int,
        block_size: int,
        quantization: str = "none",
    ) -> None:
        check_quantization(quantization, device)
        if isinstance(model, torch.nn.Module):
            fuse_projections(model)
            # After fusing (q/k/v and gate/up become one int8 GEMM each), before packing
            # what stays in bf16.
            quantize_linears(model, quantization)
            if device.type == "cpu" and dtype == torch.bfloat16:
                prepack_linears(model)
            align_linear_rows(model)  # float32 on CPU: batch-invariant rows (models/rows.py)
        if device.type == "cpu":
            native.load()  # built now (or found cached), not in the first request's step
        self.model = model
        self.device = device
        self.dtype = dtype
        self.block_size = block_size
        c = model.config
        shape = kv_cache_shape(num_blocks, block_size, c.num_key_value_heads, c.head_dim)
        self.kv_caches = [
            native.allocate_huge(shape, dtype)
            if device.type == "cpu"
            else torch.zeros(shape, dtype=dtype, device=device)
            for _ in range(c.num_hidden_layers)
        ]

    @torch.inference_mode()
    def encode(
        self, pixel_values: list[torch.Tensor], grids: list[tuple[int, int, int]]
    ) -> list[torch.Tensor]:
        """Vision tower over several items at once; one embedding tensor per item (on CPU
        memory stays where the model is: the caches hold device tensors)."""
        pixels = torch.cat(pixel_values).to(self.device, self.dtype)
        grid = torch.tensor(grids, dtype=torch.long, device=self.device)
        return self.model.embed_multimodal(pixels, grid)

    @torch.inference_mode()
    def execute(self, chunks: list[SeqChunk]) -> torch.Tensor:
        """Forward one step; returns float32 logits in chunk order: one row for a chunk with
        `needs_logits` (its last token), one per position from `logits_from` on for a scoring
        chunk."""
        ids: list[int] = []
        slots: list[int] = []
        mm_rows: list[torch.Tensor] = []
        mm_index: list[int] = []
        logit_index: list[int] = []
        bs = self.block_size
        for chunk in chunks:
            base = len(ids)
            ids.extend(chunk.token_ids)
            table = chunk.block_table
            slots.extend(
                table[p // bs] * bs + p % bs
                for p in range(chunk.start, chunk.start + len(chunk.token_ids))
            )
            for piece in chunk.mm:
                mm_rows.append(piece.embeddings[piece.row_start : piece.row_end])
                mm_index.extend(
                    range(base + piece.at, base + piece.at + piece.row_end - piece.row_start)
                )
            if chunk.logits_from is not None:
                first = max(chunk.start, chunk.logits_from) - chunk.start
                logit_index.extend(range(base + first, len(ids)))
            elif chunk.needs_logits:
                logit_index.append(len(ids) - 1)
        max_blocks = max(len(c.block_table) for c in chunks)
        tables = torch.zeros((len(chunks), max_blocks), dtype=torch.long)
        for i, chunk in enumerate(chunks):
            tables[i, : len(chunk.block_table)] = torch.tensor(chunk.block_table)
        meta = AttentionMetadata(
            query_lens=[len(c.token_ids) for c in chunks],
            context_lens=[c.start + len(c.token_ids) for c in chunks],
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=self.device),
            block_tables=tables.to(self.device),
            block_size=bs,
        )
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        positions = torch.cat([c.positions for c in chunks], dim=1).to(self.device)
        mm_embeds = mm_mask = None
        if mm_rows:
            mm_embeds = torch.cat(mm_rows).to(self.device, self.dtype)
            mm_mask = torch.zeros(len(ids), dtype=torch.bool, device=self.device)
            mm_mask[torch.tensor(mm_index, device=self.device)] = True
        hidden = self.model.forward(input_ids, positions, self.kv_caches, meta, mm_embeds, mm_mask)
        if not logit_index:
            return torch.empty((0, self.model.config.vocab_size))
        selected = hidden[torch.tensor(logit_index, device=self.device)]
        return self.model.compute_logits(selected).float()
