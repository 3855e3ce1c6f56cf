"""What the runner needs from a vision-language model: the `VLModel` protocol.

Every native architecture (Qwen2-VL, Qwen2.5-VL) implements it, so the runner and the
engine never branch on the architecture.
"""

from __future__ import annotations

from typing import Protocol

import torch

from vlmserve.models.attention import AttentionMetadata
from vlmserve.models.config import ModelConfig


class VLModel(Protocol):
    config: ModelConfig

    def embed_multimodal(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
    ) -> list[torch.Tensor]:
        """Run the vision tower on the patches of N items (images or videos) concatenated in
        order; `grid_thw` is [N, 3]. Returns one [num_tokens_i, hidden_size] tensor per item,
        num_tokens_i = t * h * w / spatial_merge_size**2."""
        ...

    def forward(
        self,
        input_ids: torch.Tensor,  # [T] int64
        positions: torch.Tensor,  # [3, T] int64: M-RoPE (temporal, height, width) positions
        kv_caches: list[torch.Tensor],  # one per decoder layer, layout in attention.py
        attn_metadata: AttentionMetadata,
        mm_embeds: torch.Tensor | None = None,  # [M, hidden] rows replacing placeholder tokens
        mm_mask: torch.Tensor | None = None,  # [T] bool, True where a row of mm_embeds goes
    ) -> torch.Tensor:
        """Decoder forward over a flattened batch; returns final hidden states [T, hidden]."""
        ...

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab_size] float32 logits."""
        ...
